//! No acknowledged write lost: the store's final state, read once every fault has ended, holds
//! for each key the last acknowledged write or something written after it.
//!
//! "After" is by revision: a key's value at the final read carries its modification revision,
//! which must not be below the revision the store acknowledged for the key's last write. A
//! value written later must itself be explained, by an acknowledged write at that revision or
//! by an unanswered write of that value.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{MaybeWrite, Write};

/// A key as the final read saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its value.
    pub value: String,
    /// Its modification revision.
    pub mod_revision: i64,
}

/// A write the final state does not keep, or a value it should not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Violation {
    /// The last acknowledged write of a key is gone, and nothing later replaced it.
    Lost {
        /// The key.
        key: String,
        /// The acknowledged write's revision.
        revision: i64,
        /// Its value (`None`: a delete, yet the key is there with an older value).
        value: Option<String>,
        /// What the final read found.
        found: Option<(String, i64)>,
    },
    /// A value no write explains.
    Unexplained {
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// Its modification revision.
        mod_revision: i64,
    },
}

/// Checks the final read of `prefix` (`found`, every key under it) against the writes made
/// under it.
pub fn check(
    prefix: &str,
    found: &BTreeMap<String, Found>,
    writes: &[Write],
    maybe: &[MaybeWrite],
) -> Vec<Violation> {
    let mut last: BTreeMap<&str, &Write> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.key.starts_with(prefix)) {
        let slot = last.entry(&w.key).or_insert(w);
        if w.revision > slot.revision {
            *slot = w;
        }
    }
    let acked_at = |key: &str, revision: i64, value: &str| {
        writes
            .iter()
            .any(|w| w.key == key && w.revision == revision && w.value.as_deref() == Some(value))
    };
    let maybe_wrote = |key: &str, value: Option<&str>| {
        maybe
            .iter()
            .any(|m| m.key == key && m.value.as_deref() == value)
    };
    let mut out = Vec::new();
    for (key, w) in &last {
        let f = found.get(*key);
        let kept = match (f, &w.value) {
            // Deleted last: absent, or written again since by an unanswered write (checked
            // below as any found value is).
            (None, None) => true,
            (Some(f), None) => f.mod_revision > w.revision,
            // Absent: only an unanswered delete may have removed it.
            (None, Some(_)) => maybe_wrote(key, None),
            (Some(f), Some(v)) => {
                f.mod_revision > w.revision || (f.mod_revision == w.revision && f.value == *v)
            }
        };
        if !kept {
            out.push(Violation::Lost {
                key: (*key).to_owned(),
                revision: w.revision,
                value: w.value.clone(),
                found: f.map(|f| (f.value.clone(), f.mod_revision)),
            });
        }
    }
    for (key, f) in found.iter().filter(|(k, _)| k.starts_with(prefix)) {
        if !acked_at(key, f.mod_revision, &f.value) && !maybe_wrote(key, Some(&f.value)) {
            out.push(Violation::Unexplained {
                key: key.clone(),
                value: f.value.clone(),
                mod_revision: f.mod_revision,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
