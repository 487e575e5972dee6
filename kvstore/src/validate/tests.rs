use bytes::Bytes;

use super::*;
use crate::request::{DeleteRangeRequest, PutRequest};

fn put(k: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    })
}

fn del(k: &str, end: &str) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
        prev_kv: false,
    })
}

fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success,
        failure,
    }
}

#[test]
fn too_many_ops() {
    let ops = (0..=MAX_TXN_OPS).map(|i| put(&format!("k{i}"))).collect();
    assert_eq!(super::txn(&txn(ops, vec![])), Err(Error::TooManyOps));
    let ops = (0..MAX_TXN_OPS).map(|i| put(&format!("k{i}"))).collect();
    assert_eq!(super::txn(&txn(ops, vec![])), Ok(()));
}

#[test]
fn duplicate_keys() {
    assert_eq!(
        super::txn(&txn(vec![put("a"), put("a")], vec![])),
        Err(Error::DuplicateKey)
    );
    assert_eq!(
        super::txn(&txn(vec![del("a", "c"), put("b")], vec![])),
        Err(Error::DuplicateKey)
    );
    // Different branches never both run.
    assert_eq!(super::txn(&txn(vec![put("a")], vec![put("a")])), Ok(()));
    // A nested txn's two branches may write the same key, but not one the parent writes.
    let nested = RequestOp::Txn(txn(vec![put("n")], vec![put("n")]));
    assert_eq!(super::txn(&txn(vec![nested.clone()], vec![])), Ok(()));
    assert_eq!(
        super::txn(&txn(vec![nested, put("n")], vec![])),
        Err(Error::DuplicateKey)
    );
    // Overlapping deletes are fine.
    assert_eq!(
        super::txn(&txn(vec![del("a", "c"), del("b", "d")], vec![])),
        Ok(())
    );
}

#[test]
fn empty_keys_and_ignore_flags() {
    assert_eq!(
        super::txn(&txn(vec![put("")], vec![])),
        Err(Error::EmptyKey)
    );
    let p = PutRequest {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(super::put(&p), Err(Error::ValueProvided));
}
