//! Test-only faults, compiled only with the `fault-injection` feature (never in a release
//! build: nothing in the workspace enables it; `scripts/test` builds a separate
//! `mesh-apiserver` with it for the suite's must-fail chaos test).
//!
//! `RAFTMESH_TEST_FAULT=lose-acked-put:<prefix>:<n>` makes this member acknowledge the `n`-th
//! put it receives under `<prefix>` without writing it: the put's own key is left alone, and the
//! client gets the revision of a write made elsewhere (under `raftmesh-test-fault/`), as a
//! store that lost the entry after answering would. The chaos checkers must report it.
//!
//! [`HOLD_FLUSH_FILE`], [`HOLD_ACK_FILE`] and [`LOSE_UNSYNCED_FILE`] (files a test creates in a
//! member's Raft log directory) hold the log's flushes back, hold back what follows a flush, and
//! lose what was not flushed at a restart: the safety tests of the leader's flush running
//! beside replication (`log_store`). [`LOSE_ANSWER_FILE`] loses the answer to a forwarded write
//! (the write sessions of `session.rs`). [`HOLD_APPLY_FILE`], in the snapshot directory, holds
//! the state machine's applies back.

use std::sync::Mutex;
use std::sync::OnceLock;

/// The environment variable that arms a fault.
pub const ENV: &str = "RAFTMESH_TEST_FAULT";

/// The key the lost put's revision is spent on.
pub const DECOY_KEY: &[u8] = b"raftmesh-test-fault/lost-put";

struct LosePut {
    prefix: Vec<u8>,
    /// Puts under the prefix still to go before the one that is lost; `None` once lost.
    left: Mutex<Option<u64>>,
}

fn armed() -> Option<&'static LosePut> {
    static FAULT: OnceLock<Option<LosePut>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let rest = spec.strip_prefix("lose-acked-put:")?;
            let (prefix, n) = rest.rsplit_once(':')?;
            let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
            tracing::warn!(fault = %spec, "test fault armed: one acknowledged put will be lost");
            Some(LosePut {
                prefix: prefix.as_bytes().to_vec(),
                left: Mutex::new(Some(n - 1)),
            })
        })
        .as_ref()
}

/// Whether the put of `key` is the one to lose (true once at most).
pub fn lose_put(key: &[u8]) -> bool {
    let Some(f) = armed() else {
        return false;
    };
    if !key.starts_with(&f.prefix) {
        return false;
    }
    let mut left = f.left.lock().expect("fault lock poisoned");
    match *left {
        Some(0) => {
            *left = None;
            true
        }
        Some(n) => {
            *left = Some(n - 1);
            false
        }
        None => false,
    }
}

/// While a file of this name exists in a member's Raft log directory (`<data dir>/raft/`), its
/// log holds every flush (`fdatasync`) back, after the entries are written: the window
/// between a write and its flush, held open for as long as a test wants.
pub const HOLD_FLUSH_FILE: &str = "fault-hold-flush";

/// While a file of this name exists in a member's Raft log directory, its log holds back the
/// completion of each flush, after the `fdatasync`: the entries are durable, but openraft is not
/// told, so the member does not acknowledge them (the window between flush and acknowledgement).
pub const HOLD_ACK_FILE: &str = "fault-hold-ack";

/// A file of this name in a member's Raft log directory makes the log lose its unflushed tail
/// the next time it is opened, as a power loss would (a process killed with SIGKILL otherwise
/// keeps what it wrote: the page cache survives it). Every flush records how far the log is
/// durable (`durable-end`, beside it); opening the log cuts it back to that point and removes
/// this file.
pub const LOSE_UNSYNCED_FILE: &str = "fault-lose-unsynced";

/// While a file of this name exists in a member's Raft log directory, the next write another
/// member forwards to it is served (proposed, committed, applied) but its answer is replaced by
/// a failure, as if the connection broke on the way back; the file is then removed. The
/// forwarding member cannot tell whether the write went through (`session.rs`).
pub const LOSE_ANSWER_FILE: &str = "fault-lose-answer";

/// Whether to lose the answer to the forwarded write just served (once: the file is removed).
pub fn lose_answer(log_dir: &std::path::Path) -> bool {
    let lost = std::fs::remove_file(log_dir.join(LOSE_ANSWER_FILE)).is_ok();
    if lost {
        tracing::warn!("test fault: the answer to a forwarded write is lost");
    }
    lost
}

/// While a file of this name exists in a member's snapshot directory (`<data dir>/snap/`), its
/// state machine applies nothing: entries commit and the member acknowledges them, but its
/// state lags behind its log, as a member's just elected may.
pub const HOLD_APPLY_FILE: &str = "fault-hold-apply";

/// Waits while the hold-apply file exists in `snap_dir`.
pub async fn hold_apply(snap_dir: &std::path::Path) {
    let file = snap_dir.join(HOLD_APPLY_FILE);
    let mut logged = false;
    while file.exists() {
        if !logged {
            tracing::warn!(file = %file.display(), "test fault: holding the state machine's applies");
            logged = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Blocks while the hold file exists in `log_dir` (a test releases the flush by removing it).
pub fn hold_flush(log_dir: &std::path::Path) {
    hold_while(
        &log_dir.join(HOLD_FLUSH_FILE),
        "holding the Raft log's flush",
    );
}

/// Blocks while the hold-acknowledgement file exists in `log_dir`.
pub fn hold_ack(log_dir: &std::path::Path) {
    hold_while(
        &log_dir.join(HOLD_ACK_FILE),
        "holding back a flushed append's acknowledgement",
    );
}

/// Blocks while `file` exists, saying once what is held.
fn hold_while(file: &std::path::Path, what: &str) {
    let mut logged = false;
    while file.exists() {
        if !logged {
            tracing::warn!(file = %file.display(), "test fault: {what}");
            logged = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether the log in `log_dir` is to lose its unflushed tail now (once: the file is removed).
pub fn lose_unsynced(log_dir: &std::path::Path) -> bool {
    std::fs::remove_file(log_dir.join(LOSE_UNSYNCED_FILE)).is_ok()
}
