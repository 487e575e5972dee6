//! What one certificate identity may hold at once: leases, watch streams and watchers.
//!
//! The store-wide bounds (`--max-leases`, `--max-watchers-per-stream`) protect the member
//! from the sum of its callers; these protect callers from each other. Without them one agent
//! (or one stolen agent certificate) could take every lease, so no other agent could register
//! its WireGuard key after a restart, or open watch streams without end, each one woken and
//! scanned on every write. Only the limited roles — agents and remote clusters — are
//! counted; admins and members are trusted with the store-wide bounds alone.
//!
//! Errors are etcd's where etcd has the case: a grant past the bound fails with
//! `etcdserver: too many leases` (`ResourceExhausted`), a watch create past it is answered
//! with a canceled create, as a create past `--max-watchers-per-stream` is. etcd has no bound
//! on streams; ours fails the stream with `ResourceExhausted`, which clients retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The bounds, per identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityLimits {
    /// `--max-leases-per-identity`: live leases one identity has granted.
    pub leases: usize,
    /// `--max-watch-streams-per-identity`: watch streams open at once.
    pub watch_streams: usize,
    /// `--max-watchers-per-identity`: watchers over all its streams.
    pub watchers: usize,
}

impl Default for IdentityLimits {
    /// An agent holds one lease (a few while a restarted one's old lease expires), two
    /// streams and two watchers; a remote's mirror one or two of each.
    fn default() -> Self {
        Self {
            leases: 32,
            watch_streams: 32,
            watchers: 256,
        }
    }
}

/// Watch streams and watchers held now, by identity.
#[derive(Debug, Default)]
pub struct Usage {
    held: Mutex<HashMap<String, Held>>,
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
    use super::*;

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
