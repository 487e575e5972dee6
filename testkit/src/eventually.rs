//! Waiting for a condition: the one `eventually` of the tests, blocking ([`eventually`],
//! [`eventually_every`]) or async ([`eventually_async`]).

use std::time::{Duration, Instant};

/// How often [`eventually`] tries.
pub const POLL: Duration = Duration::from_millis(200);

/// Waits until `f` returns `Some`, trying every [`POLL`], for at most `patience`.
///
/// # Panics
/// When `patience` runs out, with `what`.
pub fn eventually<T>(what: &str, patience: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually_every(what, patience, POLL, f)
}

/// [`eventually`], trying every `poll`.
///
/// # Panics
/// When `patience` runs out, with `what`.
pub fn eventually_every<T>(
    what: &str,
    patience: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(poll);
    }
}

/// Runs `attempt` until it returns `Ok`, every `poll`, each try and the whole wait bounded by
/// `patience`.
///
/// # Panics
/// When `patience` runs out, with `what` and the last error.
pub async fn eventually_async<T>(
    what: &str,
    patience: Duration,
    poll: Duration,
    mut attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last = anyhow::anyhow!("no attempt finished");
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => last = e,
            Err(_) => last = last.context("the last attempt was still running at the deadline"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: still failing after {patience:?}; last error: {last:#}");
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests;
