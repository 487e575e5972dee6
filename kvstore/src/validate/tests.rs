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
        super::txn_keys(&txn(vec![put("a"), put("a")], vec![])),
        Err(Error::DuplicateKey)
    );
    assert_eq!(
        super::txn_keys(&txn(vec![del("a", "c"), put("b")], vec![])),
        Err(Error::DuplicateKey)
    );
    // Different branches never both run.
    assert_eq!(
        super::txn_keys(&txn(vec![put("a")], vec![put("a")])),
        Ok(())
    );
    // A nested txn's two branches may write the same key, but not one the parent writes.
    let nested = RequestOp::Txn(txn(vec![put("n")], vec![put("n")]));
    assert_eq!(super::txn_keys(&txn(vec![nested.clone()], vec![])), Ok(()));
    assert_eq!(
        super::txn_keys(&txn(vec![nested, put("n")], vec![])),
        Err(Error::DuplicateKey)
    );
    // Overlapping deletes are fine.
    assert_eq!(
        super::txn_keys(&txn(vec![del("a", "c"), del("b", "d")], vec![])),
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

/// `levels` nested txns of `width` ops each, the innermost holding `leaf` puts.
fn nested(levels: usize, width: usize, leaf: usize) -> TxnRequest {
    if levels == 0 {
        return txn((0..leaf).map(|i| put(&format!("k{i}"))).collect(), vec![]);
    }
    let inner = RequestOp::Txn(nested(levels - 1, width, leaf));
    txn(vec![inner; width], vec![])
}

#[test]
fn nested_txns_share_the_op_budget() {
    // 128 txns of 128 txns of 6 puts: etcd refuses it, since a nested txn gets what its
    // parent level leaves (128 - 128 = 0).
    assert_eq!(super::txn(&nested(2, 128, 6)), Err(Error::TooManyOps));
    // 64 + 64 fits; 64 + 65 does not.
    assert_eq!(super::txn(&nested(1, 64, 64)), Ok(()));
    assert_eq!(super::txn(&nested(1, 64, 65)), Err(Error::TooManyOps));
    // The compare list counts toward the level's largest list too.
    let mut t = nested(1, 1, 64);
    let compare = |i: usize| crate::request::Compare {
        key: Bytes::from(format!("c{i}")),
        range_end: Bytes::new(),
        result: crate::request::CompareResult::Equal,
        target: crate::request::CompareTarget::Version(0),
    };
    t.compare = (0..64).map(compare).collect();
    assert_eq!(super::txn(&t), Ok(()));
    t.compare.push(compare(64));
    assert_eq!(super::txn(&t), Err(Error::TooManyOps));
}

#[test]
fn deletes_merge_into_disjoint_intervals() {
    let mut d = Deletes::default();
    d.insert(b"b", b"d");
    d.insert(b"x", b"");
    d.insert(b"c", b"f");
    d.insert(b"q", b"p"); // empty range: nothing
    for (k, inside) in [
        (&b"a"[..], false),
        (b"b", true),
        (b"e", true),
        (b"f", false),
        (b"p", false),
        (b"q", false),
        (b"x", true),
        (b"x\0", false),
        (b"y", false),
    ] {
        assert_eq!(d.contains(k), inside, "{:?}", String::from_utf8_lossy(k));
    }
    assert_eq!(d.by_start.len(), 2, "b..f merged");
    d.insert(b"a", b"\0");
    assert!(d.contains(b"zzz") && d.contains(b"a"));
    assert_eq!(d.by_start.len(), 1, "everything from a merged");
}
