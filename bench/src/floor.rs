//! The physical floor of a write on this machine, measured next to every `mesh-bench kv` run
//! so its figures can be judged against the disk and the loopback they ran on: a replicated
//! put made one at a time cannot finish faster than one `fdatasync` of a small append (a
//! majority's flush) plus one loopback round trip (the leader asking a follower).

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::stats::{Percentiles, Samples};

/// Flushes measured: appends of a Raft entry's size (a 256-byte value and its framing).
const FLUSHES: usize = 1_000;
const APPEND_BYTES: usize = 320;
/// Round trips measured.
const ROUND_TRIPS: usize = 2_000;

/// What one flush and one round trip take here.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Where the flushes were made (the data dirs' file system).
    pub dir: String,
    /// `fdatasync` after a small append.
    pub fdatasync: Percentiles,
    /// A 64-byte request and its 64-byte answer over loopback TCP (no delay).
    pub round_trip: Percentiles,
}

impl Floor {
    /// One flush and one round trip at the median, in milliseconds.
    pub fn put_ms(&self) -> f64 {
        self.fdatasync.p50_ms + self.round_trip.p50_ms
    }

    /// The sequential puts a second that floor allows.
    pub fn puts_per_sec(&self) -> f64 {
        1000.0 / self.put_ms().max(1e-6)
    }
}

impl fmt::Display for Floor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fdatasync of a {APPEND_BYTES}-byte append p50 {:.3} ms, p99 {:.3} ms ({}); loopback \
             TCP round trip p50 {:.3} ms, p99 {:.3} ms; one flush and one round trip: {:.3} ms, \
             at most {:.0} sequential puts/s",
            self.fdatasync.p50_ms,
            self.fdatasync.p99_ms,
            self.dir,
            self.round_trip.p50_ms,
            self.round_trip.p99_ms,
            self.put_ms(),
            self.puts_per_sec()
        )
    }
}

/// Measures both, the flushes in `dir`.
pub fn measure(dir: &Path) -> Result<Floor> {
    Ok(Floor {
        dir: dir.display().to_string(),
        fdatasync: fdatasync(dir)?,
        round_trip: round_trip()?,
    })
}

fn fdatasync(dir: &Path) -> Result<Percentiles> {
    let file =
        tempfile::tempfile_in(dir).with_context(|| format!("a file in {}", dir.display()))?;
    let block = vec![b'x'; APPEND_BYTES];
    let mut samples = Samples::with_capacity(FLUSHES);
    for i in 0..FLUSHES {
        file.write_all_at(&block, (i * APPEND_BYTES) as u64)?;
        let begun = Instant::now();
        file.sync_data()?;
        samples.record(begun.elapsed());
    }
    samples.summary().context("no flush measured")
}

fn round_trip() -> Result<Percentiles> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while conn.read_exact(&mut buf).is_ok() {
            conn.write_all(&buf)?;
        }
        Ok(())
    });
    let mut conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    let mut samples = Samples::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let begun = Instant::now();
        conn.write_all(&buf)?;
        conn.read_exact(&mut buf)?;
        samples.record(begun.elapsed());
    }
    drop(conn);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    samples.summary().context("no round trip measured")
}
