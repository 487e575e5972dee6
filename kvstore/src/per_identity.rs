//! What one certificate identity may hold at once — leases, watch streams and watchers — and
//! how much and how fast it may write.
//!
//! The store-wide bounds (`--max-leases`, `--max-watchers-per-stream`) protect the member
//! from the sum of its callers; these protect callers from each other. Without them one agent
//! (or one stolen agent certificate) could take every lease, so no other agent could register
//! its WireGuard key after a restart, or open watch streams without end, each one woken and
//! scanned on every write. Only the limited roles — agents and remote clusters — are
//! counted; admins and members are trusted with the store-wide bounds alone.
//!
//! Writes are bounded too: every version a write makes is kept in memory until compaction,
//! so an agent rewriting its node key in a loop, or with megabyte values, would grow every
//! member at once. A limited identity's value is at most `--max-value-bytes-per-identity`
//! (an agent's node key record is about 100 bytes) and its writes (puts, deletes, writing
//! txns) at most `--max-writes-per-second-per-identity`, with a burst of
//! [`BURST_SECONDS`] seconds' worth.
//!
//! Errors are etcd's where etcd has the case: a grant past the bound fails with
//! `etcdserver: too many leases` (`ResourceExhausted`), a watch create past it is answered
//! with a canceled create, as a create past `--max-watchers-per-stream` is, a value past it
//! with `etcdserver: request is too large` and a write past the rate with `etcdserver: too
//! many requests` (`ResourceExhausted`). etcd has no bound on streams; ours fails the stream
//! with `ResourceExhausted`, which clients retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Seconds of writes at the full rate an identity may make at once.
pub const BURST_SECONDS: f64 = 10.0;

/// The bounds, per identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityLimits {
    /// `--max-leases-per-identity`: live leases one identity has granted.
    pub leases: usize,
    /// `--max-watch-streams-per-identity`: watch streams open at once.
    pub watch_streams: usize,
    /// `--max-watchers-per-identity`: watchers over all its streams.
    pub watchers: usize,
    /// `--max-value-bytes-per-identity`: the largest value one put may carry.
    pub value_bytes: usize,
    /// `--max-writes-per-second-per-identity`: sustained writes per second.
    pub writes_per_second: u32,
}

impl Default for IdentityLimits {
    /// An agent holds one lease (a few while a restarted one's old lease expires), two
    /// streams and two watchers; a remote's mirror one or two of each.
    fn default() -> Self {
        Self {
            leases: 32,
            watch_streams: 32,
            watchers: 256,
            value_bytes: 1 << 10,
            writes_per_second: 10,
        }
    }
}

/// Watch streams and watchers held now, and write allowances, by identity.
#[derive(Debug, Default)]
pub struct Usage {
    held: Mutex<HashMap<String, Held>>,
    writes: Mutex<HashMap<String, TokenBucket>>,
}

/// A token bucket: `capacity` tokens at most, refilled at `rate` a second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, capacity: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    /// Takes `amount` tokens if there are that many at `now` (a request larger than the
    /// capacity is taken from a full bucket, leaving it in debt, so it is never refused
    /// forever).
    pub fn take(&mut self, amount: f64, now: Instant) -> bool {
        self.refill(now);
        let needed = amount.min(self.capacity);
        if self.tokens >= needed {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (nothing taken for a while).
    pub fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// Seconds until `amount` tokens are there.
    pub fn wait_for(&self, amount: f64) -> f64 {
        let short = amount.min(self.capacity) - self.tokens;
        if short <= 0.0 || self.rate <= 0.0 {
            0.0
        } else {
            short / self.rate
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at = self.at.max(now);
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    streams: usize,
    watchers: usize,
}

impl Usage {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Held>) -> T) -> T {
        f(&mut self.held.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Opens a watch stream for `identity` if it holds fewer than `limit`; the stream holds
    /// the returned guard while it lives.
    pub fn open_stream(self: &Arc<Self>, identity: &str, limit: usize) -> Option<StreamGuard> {
        self.with(|held| {
            let h = held.entry(identity.to_owned()).or_default();
            if h.streams >= limit {
                return None;
            }
            h.streams += 1;
            Some(StreamGuard {
                usage: Arc::clone(self),
                identity: identity.to_owned(),
                watchers: 0,
            })
        })
    }

    /// Takes one write from `identity`'s allowance of `per_second` (a burst of
    /// [`BURST_SECONDS`] of them); `false` when none is left.
    pub fn charge_write(&self, identity: &str, per_second: u32, now: Instant) -> bool {
        let rate = f64::from(per_second);
        let capacity = rate * BURST_SECONDS;
        let mut writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        // Buckets full again are forgotten, so the map holds only the identities writing now.
        if writes.len() > 10_000 {
            writes.retain(|_, b| !b.full(now));
        }
        writes
            .entry(identity.to_owned())
            .or_insert_with(|| TokenBucket::new(rate, capacity, now))
            .take(1.0, now)
    }

    /// Streams and watchers `identity` holds.
    pub fn held(&self, identity: &str) -> (usize, usize) {
        self.with(|held| {
            held.get(identity)
                .map_or((0, 0), |h| (h.streams, h.watchers))
        })
    }
}

/// One open watch stream of a limited identity; its watchers are counted through it, and
/// everything it holds is given back when it is dropped.
#[derive(Debug)]
pub struct StreamGuard {
    usage: Arc<Usage>,
    identity: String,
    watchers: usize,
}

impl StreamGuard {
    /// Adds a watcher if the identity holds fewer than `limit` over all its streams.
    pub fn add_watcher(&mut self, limit: usize) -> bool {
        let added = self.usage.with(|held| {
            let h = held.entry(self.identity.clone()).or_default();
            if h.watchers >= limit {
                return false;
            }
            h.watchers += 1;
            true
        });
        self.watchers += usize::from(added);
        added
    }

    /// Gives back one watcher.
    pub fn remove_watcher(&mut self) {
        if self.watchers == 0 {
            return;
        }
        self.watchers -= 1;
        self.usage.with(|held| {
            if let Some(h) = held.get_mut(&self.identity) {
                h.watchers = h.watchers.saturating_sub(1);
            }
        });
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let watchers = self.watchers;
        self.usage.with(|held| {
            if let Some(h) = held.get_mut(&self.identity) {
                h.streams = h.streams.saturating_sub(1);
                h.watchers = h.watchers.saturating_sub(watchers);
                if h.streams == 0 && h.watchers == 0 {
                    held.remove(&self.identity);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn writes_are_rate_bounded_per_identity_with_a_burst() {
        let usage = Usage::default();
        let t0 = Instant::now();
        // 2 a second: a burst of 20, then nothing until time passes.
        for i in 0..20 {
            assert!(usage.charge_write("agent-1", 2, t0), "write {i}");
        }
        assert!(!usage.charge_write("agent-1", 2, t0));
        assert!(
            usage.charge_write("agent-2", 2, t0),
            "others are not affected"
        );
        // A second and a half at 2 a second: three more.
        let later = t0 + Duration::from_millis(1500);
        for i in 0..3 {
            assert!(usage.charge_write("agent-1", 2, later), "write {i}");
        }
        assert!(!usage.charge_write("agent-1", 2, later));
    }

    #[test]
    fn streams_and_watchers_are_bounded_per_identity_and_given_back() {
        let usage = Arc::new(Usage::default());
        let mut a = usage.open_stream("agent-1", 2).unwrap();
        let b = usage.open_stream("agent-1", 2).unwrap();
        assert!(usage.open_stream("agent-1", 2).is_none());
        assert!(
            usage.open_stream("agent-2", 2).is_some(),
            "others are not affected"
        );
        assert!(a.add_watcher(2) && a.add_watcher(2));
        assert!(!a.add_watcher(2));
        a.remove_watcher();
        assert_eq!(usage.held("agent-1"), (2, 1));
        drop(a);
        assert_eq!(usage.held("agent-1"), (1, 0));
        drop(b);
        assert_eq!(usage.held("agent-1"), (0, 0));
        assert!(usage.held.lock().unwrap().get("agent-1").is_none());
    }
}
