//! Progress lines on stderr, so a long run shows where it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How often a running measurement reports its count.
const TICK: Duration = Duration::from_secs(2);

/// Prefixes every line with the server and workload being measured.
#[derive(Debug, Clone)]
pub struct Progress {
    prefix: String,
}

impl Progress {
    pub fn new(server: &str) -> Progress {
        Progress {
            prefix: format!("[{server}]"),
        }
    }

    /// The same server, now measuring `workload`.
    pub fn workload(&self, workload: &str) -> Progress {
        Progress {
            prefix: format!("{} {workload}", self.prefix),
        }
    }

    pub fn say(&self, message: impl std::fmt::Display) {
        eprintln!("{} {message}", self.prefix);
    }

    /// Prints `done/total` (only `done` when `total` is 0) every couple of seconds until the
    /// returned ticker is finished.
    pub fn track(&self, total: u64, done: Arc<AtomicU64>) -> Ticker {
        let prefix = self.prefix.clone();
        let started = Instant::now();
        let handle = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.tick().await;
            loop {
                interval.tick().await;
                let n = done.load(Ordering::Relaxed);
                let rate = n as f64 / started.elapsed().as_secs_f64();
                if total == 0 {
                    eprintln!("{prefix} {n} ({rate:.0}/s)");
                } else {
                    eprintln!("{prefix} {n}/{total} ({rate:.0}/s)");
                }
            }
        });
        Ticker { handle }
    }
}

/// A running progress printer; stops when finished or dropped.
#[derive(Debug)]
pub struct Ticker {
    handle: JoinHandle<()>,
}

impl Ticker {
    pub fn finish(self) {}
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
