//! Test-only faults, compiled only with the `fault-injection` feature (never in a release
//! build: nothing in the workspace enables it; `scripts/test` builds a separate
//! `mesh-apiserver` with it for the suite's must-fail chaos test).
//!
//! `RAFTMESH_TEST_FAULT=lose-acked-put:<prefix>:<n>` makes this member acknowledge the `n`-th
//! put it receives under `<prefix>` without writing it: the put's own key is left alone, and the
//! client gets the revision of a write made elsewhere (under `raftmesh-test-fault/`), as a
//! store that lost the entry after answering would. The chaos checkers must report it.

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
