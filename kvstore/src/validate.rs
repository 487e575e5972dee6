//! Checks a request before it is proposed, so bad input is refused with etcd's error and
//! never reaches the log. The order of checks follows etcd's `v3rpc/key.go`.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::request::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// Most compares, or operations in one branch, of a txn (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// Largest request, encoded (etcd's `--max-request-bytes` default, 1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// A range needs a key.
pub fn range(req: &RangeRequest) -> Result<()> {
    non_empty(&req.key)
}

/// A put needs a key, and cannot both ignore and set the value or the lease.
pub fn put(req: &PutRequest) -> Result<()> {
    non_empty(&req.key)?;
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// A delete needs a key.
pub fn delete_range(req: &DeleteRangeRequest) -> Result<()> {
    non_empty(&req.key)
}

/// A txn's shape: op counts (nested txns share the budget, as in etcd) and non-empty keys.
/// Cheap and bounded by the budget, so it runs before authorization; [`txn_keys`] runs after.
pub fn txn(req: &TxnRequest) -> Result<()> {
    txn_ops(req, MAX_TXN_OPS)
}

/// etcd's `checkTxnRequest`: a level may have `max` compares and `max` ops in each branch,
/// and a txn nested in it gets what the level's largest list leaves (`max - opc`), so nesting
/// cannot multiply the budget.
fn txn_ops(req: &TxnRequest, max: usize) -> Result<()> {
    let opc = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if opc > max {
        return Err(Error::TooManyOps);
    }
    for c in &req.compare {
        non_empty(&c.key)?;
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => range(r)?,
            RequestOp::Put(p) => put(p)?,
            RequestOp::DeleteRange(d) => delete_range(d)?,
            RequestOp::Txn(t) => txn_ops(t, max - opc)?,
        }
    }
    Ok(())
}

/// A txn's writes: within one branch a key is put at most once and never both put and
/// deleted (etcd's `checkIntervals`), in O(n log n).
pub fn txn_keys(req: &TxnRequest) -> Result<()> {
    intervals(&req.success)?;
    intervals(&req.failure)?;
    Ok(())
}

fn non_empty(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        Err(Error::EmptyKey)
    } else {
        Ok(())
    }
}

/// Deleted key ranges, merged into disjoint intervals `[start, end)` (`None`: no end), so
/// whether a key is deleted is one ordered-map lookup.
#[derive(Debug, Default)]
struct Deletes {
    by_start: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Deletes {
    /// Adds the range a DeleteRange with `key` and `range_end` covers.
    fn insert(&mut self, key: &[u8], range_end: &[u8]) {
        let (start, end) = match range_end {
            // One key: [key, key + "\0").
            [] => (key.to_vec(), Some([key, &[0u8]].concat())),
            [0] => (key.to_vec(), None),
            end if end <= key => return,
            end => (key.to_vec(), Some(end.to_vec())),
        };
        self.insert_interval(start, end);
    }

    fn insert_interval(&mut self, mut start: Vec<u8>, mut end: Option<Vec<u8>>) {
        // An interval starting at or before `start` that reaches it absorbs it.
        if let Some((s, e)) = self.by_start.range(..=start.clone()).next_back()
            && e.as_ref().is_none_or(|e| *e >= start)
        {
            start = s.clone();
            end = max_end(end, e.clone());
        }
        // Intervals starting inside the new one merge into it.
        let inside: Vec<Vec<u8>> = self
            .by_start
            .range(start.clone()..)
            .take_while(|(s, _)| end.as_ref().is_none_or(|e| *s <= e))
            .map(|(s, _)| s.clone())
            .collect();
        for s in inside {
            let e = self.by_start.remove(&s).expect("listed above");
            end = max_end(end, e);
        }
        self.by_start.insert(start, end);
    }

    fn union(&mut self, other: Deletes) {
        for (s, e) in other.by_start {
            self.insert_interval(s, e);
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.by_start
            .range(..=key.to_vec())
            .next_back()
            .is_some_and(|(_, e)| e.as_deref().is_none_or(|e| key < e))
    }
}

/// The later of two exclusive ends (`None` is no end).
fn max_end(a: Option<Vec<u8>>, b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// The keys a branch puts and the ranges it deletes, nested txns included.
#[derive(Debug, Default)]
struct Writes {
    puts: BTreeSet<bytes::Bytes>,
    dels: Deletes,
}

/// etcd's `checkIntervals`: within one branch a key may be put once and never both put and
/// deleted; the two branches of a nested txn exclude each other, so they may overlap.
fn intervals(ops: &[RequestOp]) -> Result<Writes> {
    let mut w = Writes::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            w.dels.insert(&d.key, &d.range_end);
        }
    }
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let then = intervals(&t.success)?;
        let els = intervals(&t.failure)?;
        for k in &then.puts {
            if w.puts.contains(k) || w.dels.contains(k) {
                return Err(Error::DuplicateKey);
            }
        }
        for k in &els.puts {
            if (w.puts.contains(k) && !then.puts.contains(k)) || w.dels.contains(k) {
                return Err(Error::DuplicateKey);
            }
        }
        w.puts.extend(then.puts);
        w.puts.extend(els.puts);
        w.dels.union(then.dels);
        w.dels.union(els.dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if w.puts.contains(&p.key) || w.dels.contains(&p.key) {
            return Err(Error::DuplicateKey);
        }
        w.puts.insert(p.key.clone());
    }
    Ok(w)
}

#[cfg(test)]
mod tests;
