//! Lease deadlines, kept by the leader.
//!
//! When a lease expires is not replicated state: it is the leader's clock. The leader keeps
//! a deadline per lease, renews it on keep-alive, and revokes expired leases through the
//! log, so every member deletes the keys at the same revision. A member that becomes leader
//! starts every lease afresh with its full TTL (etcd's re-extension on leader change): a
//! lease may outlive its TTL across a failover, but never expires early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::peer::LeaseTtl;
use crate::state_machine::Shared;

/// How often the leader looks for expired leases.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Deadlines of the leases this member knows, valid while it leads in `term`.
#[derive(Debug, Default)]
pub struct Lessor {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The term the deadlines belong to; 0 while not leader.
    term: u64,
    deadlines: HashMap<i64, Instant>,
}

impl Lessor {
    fn with_state<T>(&self, term: u64, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().expect("lessor lock poisoned");
        if s.term != term {
            // New leadership (or none): every lease starts afresh.
            s.term = term;
            s.deadlines.clear();
        }
        f(&mut s)
    }

    /// Forgets every deadline (this member no longer leads).
    pub fn step_down(&self) {
        self.with_state(0, |_| ());
    }

    /// Renews `id` for its full TTL; returns the TTL.
    pub fn keep_alive(&self, term: u64, shared: &Shared, id: i64) -> Result<i64, Error> {
        let ttl = shared.read().mvcc.lease(id).map(|l| l.ttl);
        let ttl = ttl.ok_or(Error::LeaseNotFound)?;
        self.with_state(term, |s| {
            s.deadlines.insert(id, deadline(ttl));
        });
        Ok(ttl)
    }

    /// Time left of `id`, `None` when it does not exist.
    pub fn time_to_live(&self, term: u64, shared: &Shared, id: i64) -> Option<LeaseTtl> {
        let (granted, keys) = {
            let data = shared.read();
            let lease = data.mvcc.lease(id)?;
            (lease.ttl, lease.keys.iter().cloned().collect())
        };
        let at = self.with_state(term, |s| {
            *s.deadlines.entry(id).or_insert_with(|| deadline(granted))
        });
        let remaining = at.saturating_duration_since(Instant::now()).as_secs() as i64;
        Some(LeaseTtl {
            remaining,
            granted,
            keys,
        })
    }

    /// Leases whose deadline passed; leases seen for the first time get their full TTL.
    pub fn expired(&self, term: u64, shared: &Shared) -> Vec<i64> {
        let leases: Vec<(i64, i64)> = shared
            .read()
            .mvcc
            .leases()
            .map(|(id, l)| (id, l.ttl))
            .collect();
        let now = Instant::now();
        self.with_state(term, |s| {
            let live: std::collections::HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
            s.deadlines.retain(|id, _| live.contains(id));
            leases
                .iter()
                .filter(|(id, ttl)| {
                    *s.deadlines.entry(*id).or_insert_with(|| deadline(*ttl)) <= now
                })
                .map(|(id, _)| *id)
                .collect()
        })
    }
}

fn deadline(ttl: i64) -> Instant {
    Instant::now() + Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}
