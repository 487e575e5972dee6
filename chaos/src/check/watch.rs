//! Watch guarantees, as etcd states them: a watcher gets events in revision order, never the
//! same event twice, never an event no write made, and none missing between where it started
//! and the last revision it vouches for, also across reconnects (a watcher that resumes from
//! the revision after the last event it got must not notice the seam).
//!
//! The reference is the writes: every acknowledged write with its revision, and the unanswered
//! writes that may explain an event. Writes to one key at one revision are unique in etcd's
//! model, so (key, revision) names an event.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Event, MaybeWrite, Write};

/// What a watcher covered.
#[derive(Debug, Clone)]
pub struct Watched<'a> {
    /// Its name in reports.
    pub name: &'a str,
    /// The key prefix it watched.
    pub prefix: &'a str,
    /// The revision it started from (events from here on are due).
    pub start: i64,
    /// The last revision it vouches for: every event up to here is due (the revision of its
    /// last progress notification, or of a read made after its last event).
    pub through: i64,
    /// The events, as received (across reconnects).
    pub events: &'a [Event],
}

/// A broken guarantee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Violation {
    /// An event came after one with a higher revision.
    OutOfOrder {
        /// The watcher.
        watcher: String,
        /// The revision of the event before.
        after: i64,
        /// The event's key and revision.
        key: String,
        /// Its revision.
        revision: i64,
    },
    /// The same event came twice.
    Duplicate {
        /// The watcher.
        watcher: String,
        /// The key.
        key: String,
        /// The revision.
        revision: i64,
    },
    /// An event no write explains (wrong value, wrong revision, or no write at all).
    Phantom {
        /// The watcher.
        watcher: String,
        /// The key.
        key: String,
        /// The revision.
        revision: i64,
        /// The value the event carried.
        value: Option<String>,
    },
    /// An acknowledged write in range the watcher never got.
    Missing {
        /// The watcher.
        watcher: String,
        /// The key.
        key: String,
        /// The write's revision.
        revision: i64,
    },
    /// Two acknowledged writes to one key at one revision (the store reused a revision).
    RevisionReused {
        /// The key.
        key: String,
        /// The revision.
        revision: i64,
    },
}

/// Checks one watcher against the writes.
pub fn check(watched: &Watched<'_>, writes: &[Write], maybe: &[MaybeWrite]) -> Vec<Violation> {
    let mut out = Vec::new();
    let name = watched.name.to_owned();
    let mut acked: BTreeMap<(&str, i64), &Write> = BTreeMap::new();
    for w in writes {
        if acked
            .insert((&w.key, w.revision), w)
            .is_some_and(|old| old.value != w.value)
        {
            out.push(Violation::RevisionReused {
                key: w.key.clone(),
                revision: w.revision,
            });
        }
    }
    let unanswered: BTreeSet<(&str, Option<&str>)> = maybe
        .iter()
        .map(|m| (m.key.as_str(), m.value.as_deref()))
        .collect();

    let mut got: BTreeSet<(&str, i64)> = BTreeSet::new();
    // Events that carried what the write at their revision wrote: a wrong value does not
    // deliver the write.
    let mut delivered: BTreeSet<(&str, i64)> = BTreeSet::new();
    let mut last = i64::MIN;
    for e in watched.events {
        if e.revision < last {
            out.push(Violation::OutOfOrder {
                watcher: name.clone(),
                after: last,
                key: e.key.clone(),
                revision: e.revision,
            });
        }
        last = last.max(e.revision);
        if !got.insert((&e.key, e.revision)) {
            out.push(Violation::Duplicate {
                watcher: name.clone(),
                key: e.key.clone(),
                revision: e.revision,
            });
            continue;
        }
        let explained = match acked.get(&(e.key.as_str(), e.revision)) {
            Some(w) => w.value == e.value,
            // Not acknowledged: an unanswered write of that value may have made it.
            None => unanswered.contains(&(e.key.as_str(), e.value.as_deref())),
        };
        let in_range = e.key.starts_with(watched.prefix) && e.revision >= watched.start;
        if explained && in_range {
            delivered.insert((&e.key, e.revision));
        } else {
            out.push(Violation::Phantom {
                watcher: name.clone(),
                key: e.key.clone(),
                revision: e.revision,
                value: e.value.clone(),
            });
        }
    }
    let due = acked.keys().filter(|(key, revision)| {
        key.starts_with(watched.prefix) && (watched.start..=watched.through).contains(revision)
    });
    for &(key, revision) in due {
        if !delivered.contains(&(key, revision)) {
            out.push(Violation::Missing {
                watcher: name.clone(),
                key: key.to_owned(),
                revision,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
