//! Connections admitted to a port that must stay open to strangers: when too many are in
//! progress, in all or from one source address, the oldest is closed to make room, so
//! connections that never speak cannot lock real clients out. The client port's TLS
//! handshakes ([`crate::tls::incoming`]) and the mesh API server's agent bootstrap use it.
//!
//! Closing the oldest rather than refusing the newest means an attacker must keep opening
//! connections faster than a real client completes its exchange to keep it out; the
//! per-source cap makes one address pay that alone (while clients behind one NAT address
//! still share it).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use tokio::sync::oneshot;

/// Connections in progress, oldest first.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    max_per_source: usize,
    /// By arrival (ids increase), with their source and the signal that ends them.
    by_age: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
    per_source: HashMap<IpAddr, usize>,
    next: u64,
}

/// An admitted connection: its id (to [`Admission::close`] when it ends), the signal that it
/// was closed to make room, and how many older ones were closed for it.
#[derive(Debug)]
pub struct Admitted {
    /// Pass to [`Admission::close`] when the connection ends.
    pub id: u64,
    /// Fires when the connection is closed to make room for newer ones.
    pub evicted: oneshot::Receiver<()>,
    /// Older connections closed to admit this one.
    pub closed: usize,
}

impl Admission {
    /// At most `max` connections in progress, `max_per_source` from one address (both ≥ 1).
    pub fn new(max: usize, max_per_source: usize) -> Admission {
        Admission {
            max: max.max(1),
            max_per_source: max_per_source.max(1),
            by_age: BTreeMap::new(),
            per_source: HashMap::new(),
            next: 0,
        }
    }

    /// Registers a connection from `source`, closing the oldest ones over the limits first.
    pub fn admit(&mut self, source: IpAddr) -> Admitted {
        let mut closed = 0;
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            let oldest = self
                .by_age
                .iter()
                .find(|(_, (ip, _))| *ip == source)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.close(id);
                closed += 1;
            }
        }
        if self.by_age.len() >= self.max
            && let Some(&id) = self.by_age.keys().next()
        {
            self.close(id);
            closed += 1;
        }
        let id = self.next;
        self.next += 1;
        let (tx, evicted) = oneshot::channel();
        self.by_age.insert(id, (source, tx));
        *self.per_source.entry(source).or_default() += 1;
        Admitted {
            id,
            evicted,
            closed,
        }
    }

    /// Ends connection `id` (its task sees the signal, or has finished already).
    pub fn close(&mut self, id: u64) {
        if let Some((source, tx)) = self.by_age.remove(&id) {
            let _ = tx.send(());
            if let Some(n) = self.per_source.get_mut(&source) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&source);
                }
            }
        }
    }

    /// Connections in progress.
    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    /// None in progress.
    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_oldest_goes_first_in_all_and_per_source() {
        let mut a = Admission::new(3, 2);
        let mut first = a.admit(ip("10.0.0.1"));
        let mut second = a.admit(ip("10.0.0.1"));
        // A third from the same source closes that source's oldest.
        let third = a.admit(ip("10.0.0.1"));
        assert_eq!(third.closed, 1);
        assert!(first.evicted.try_recv().is_ok());
        assert!(second.evicted.try_recv().is_err());
        // Full in all: a new source closes the oldest of any.
        let fourth = a.admit(ip("10.0.0.2"));
        assert_eq!(fourth.closed, 0);
        assert_eq!(a.len(), 3);
        let fifth = a.admit(ip("10.0.0.3"));
        assert_eq!(fifth.closed, 1);
        assert!(second.evicted.try_recv().is_ok());
        // Closing is idempotent and frees the source's count.
        a.close(third.id);
        a.close(third.id);
        assert_eq!(a.len(), 2);
        assert_eq!(a.admit(ip("10.0.0.1")).closed, 0);
    }
}
