//! Checks a request before it is proposed, so bad input is refused with etcd's error and
//! never reaches the log. The order of checks follows etcd's `v3rpc/key.go`.

use crate::error::{Error, Result};
use crate::request::{
    DeleteRangeRequest, KeyRange, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

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

/// A txn: op counts, every nested op, and no key written twice by one branch.
pub fn txn(req: &TxnRequest) -> Result<()> {
    txn_ops(req)?;
    intervals(&req.success)?;
    intervals(&req.failure)?;
    Ok(())
}

fn txn_ops(req: &TxnRequest) -> Result<()> {
    if req.compare.len() > MAX_TXN_OPS
        || req.success.len() > MAX_TXN_OPS
        || req.failure.len() > MAX_TXN_OPS
    {
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
            RequestOp::Txn(t) => txn_ops(t)?,
        }
    }
    Ok(())
}

fn non_empty(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        Err(Error::EmptyKey)
    } else {
        Ok(())
    }
}

/// The keys a branch puts and the ranges it deletes, nested txns included.
#[derive(Debug, Default)]
struct Writes {
    puts: Vec<bytes::Bytes>,
    dels: Vec<KeyRange>,
}

impl Writes {
    fn deletes(&self, key: &[u8]) -> bool {
        self.dels.iter().any(|d| d.contains(key))
    }

    fn puts(&self, key: &[u8]) -> bool {
        self.puts.iter().any(|p| p.as_ref() == key)
    }
}

/// etcd's `checkIntervals`: within one branch a key may be put once and never both put and
/// deleted; the two branches of a nested txn exclude each other, so they may overlap.
fn intervals(ops: &[RequestOp]) -> Result<Writes> {
    let mut w = Writes::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            w.dels
                .push(KeyRange::new(d.key.clone(), d.range_end.clone()));
        }
    }
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let then = intervals(&t.success)?;
        let els = intervals(&t.failure)?;
        for k in &then.puts {
            if w.puts(k) || w.deletes(k) {
                return Err(Error::DuplicateKey);
            }
        }
        for k in &els.puts {
            if (w.puts(k) && !then.puts(k)) || w.deletes(k) {
                return Err(Error::DuplicateKey);
            }
        }
        w.puts.extend(then.puts.iter().chain(&els.puts).cloned());
        w.dels.extend(then.dels.into_iter().chain(els.dels));
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if w.puts(&p.key) || w.deletes(&p.key) {
            return Err(Error::DuplicateKey);
        }
        w.puts.push(p.key.clone());
    }
    Ok(w)
}

#[cfg(test)]
mod tests;
