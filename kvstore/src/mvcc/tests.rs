use bytes::Bytes;

use super::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(m: &mut Mvcc, k: &str, v: &str) -> PutResponse {
    m.put(&PutRequest {
        key: b(k),
        value: b(v),
        prev_kv: true,
        ..Default::default()
    })
    .unwrap()
}

fn get(m: &Mvcc, k: &str, rev: i64) -> Option<KeyValue> {
    m.range(&RangeRequest {
        key: b(k),
        revision: rev,
        ..Default::default()
    })
    .unwrap()
    .kvs
    .pop()
}

fn prefix(m: &Mvcc, p: &str) -> RangeRequest {
    let _ = m;
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest {
        key: b(p),
        range_end: Bytes::from(end),
        ..Default::default()
    }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

#[test]
fn revisions_versions_and_create_revision() {
    let mut m = Mvcc::new();
    assert_eq!(m.revision(), 1);
    assert_eq!(put(&mut m, "a", "1").prev_kv, None);
    let prev = put(&mut m, "a", "2").prev_kv.unwrap();
    assert_eq!(
        (prev.value, prev.mod_revision, prev.version),
        (b("1"), 2, 1)
    );
    let kv = get(&m, "a", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // Deleting then re-creating resets create_revision and version.
    let del = m
        .delete_range(&DeleteRangeRequest {
            key: b("a"),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(del.deleted, 1);
    assert_eq!(m.revision(), 4);
    put(&mut m, "a", "3");
    let kv = get(&m, "a", 0).unwrap();
    assert_eq!((kv.create_revision, kv.version), (5, 1));
    // History: the value at each revision.
    assert_eq!(get(&m, "a", 2).unwrap().value, b("1"));
    assert_eq!(get(&m, "a", 3).unwrap().value, b("2"));
    assert_eq!(get(&m, "a", 4), None);
}

#[test]
fn delete_of_nothing_does_not_bump_revision() {
    let mut m = Mvcc::new();
    let r = m
        .delete_range(&DeleteRangeRequest {
            key: b("missing"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.deleted, 0);
    assert_eq!(m.revision(), 1);
}

#[test]
fn future_and_compacted_revisions() {
    let mut m = Mvcc::new();
    for i in 0..5 {
        put(&mut m, "k", &i.to_string());
    }
    assert_eq!(
        m.range(&RangeRequest {
            key: b("k"),
            revision: 7,
            ..Default::default()
        }),
        Err(Error::FutureRev)
    );
    m.compact(4).unwrap();
    assert_eq!(
        m.range(&RangeRequest {
            key: b("k"),
            revision: 3,
            ..Default::default()
        }),
        Err(Error::Compacted)
    );
    // The compacted revision itself is still readable.
    assert_eq!(get(&m, "k", 4).unwrap().value, b("2"));
    assert_eq!(m.compact(4), Err(Error::Compacted));
    assert_eq!(m.compact(9), Err(Error::FutureRev));
}

#[test]
fn compaction_drops_old_tombstones_and_history() {
    let mut m = Mvcc::new();
    put(&mut m, "gone", "x"); // 2
    m.delete_range(&DeleteRangeRequest {
        key: b("gone"),
        ..Default::default()
    })
    .unwrap(); // 3
    put(&mut m, "kept", "1"); // 4
    put(&mut m, "kept", "2"); // 5
    m.compact(5).unwrap();
    assert!(!m.keys.contains_key(b("gone").as_ref()));
    assert_eq!(m.keys[b("kept").as_ref()].len(), 1);
    assert_eq!(m.changes.keys().copied().collect::<Vec<_>>(), vec![5]);
}

#[test]
fn range_limit_count_sort_and_filters() {
    let mut m = Mvcc::new();
    put(&mut m, "p/c", "1"); // 2
    put(&mut m, "p/a", "3"); // 3
    put(&mut m, "p/b", "2"); // 4
    put(&mut m, "p/a", "4"); // 5
    put(&mut m, "q", "x"); // 6

    let mut req = prefix(&m, "p/");
    req.limit = 2;
    let r = m.range(&req).unwrap();
    assert_eq!(keys(&r), ["p/a", "p/b"]);
    assert!(r.more);
    assert_eq!(r.count, 3);

    req.limit = 0;
    req.sort_target = SortTarget::Create;
    req.sort_order = SortOrder::Descend;
    assert_eq!(keys(&m.range(&req).unwrap()), ["p/b", "p/a", "p/c"]);

    req.sort_target = SortTarget::Value;
    req.sort_order = SortOrder::None; // another target without an order: ascending
    assert_eq!(keys(&m.range(&req).unwrap()), ["p/c", "p/b", "p/a"]);

    req.sort_target = SortTarget::Key;
    req.min_mod_revision = 4;
    let r = m.range(&req).unwrap();
    assert_eq!(keys(&r), ["p/a", "p/b"]);
    assert_eq!(r.count, 3, "count is taken before filters");

    let all = RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        count_only: true,
        ..Default::default()
    };
    let r = m.range(&all).unwrap();
    assert_eq!((r.count, r.kvs.len()), (4, 0));

    let from_key = RangeRequest {
        key: b("p/b"),
        range_end: b("\0"),
        keys_only: true,
        ..Default::default()
    };
    let r = m.range(&from_key).unwrap();
    assert_eq!(keys(&r), ["p/b", "p/c", "q"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
}

fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        key: b(k),
        range_end: Bytes::new(),
        result,
        target,
    }
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    })
}

#[test]
fn txn_is_one_revision_and_reads_its_own_writes() {
    let mut m = Mvcc::new();
    let txn = TxnRequest {
        compare: vec![cmp("lock", CompareResult::Equal, CompareTarget::Create(0))],
        success: vec![
            put_op("lock", "me"),
            put_op("other", "x"),
            RequestOp::Range(RangeRequest {
                key: b("lock"),
                ..Default::default()
            }),
        ],
        failure: vec![RequestOp::Range(RangeRequest {
            key: b("lock"),
            ..Default::default()
        })],
    };
    let r = m.txn(&txn).unwrap();
    assert!(r.succeeded);
    assert_eq!(m.revision(), 2);
    let ResponseOp::Range(read) = &r.responses[2] else {
        panic!("expected a range response, got {:?}", r.responses[2]);
    };
    assert_eq!(read.kvs[0].value, b("me"));
    assert_eq!(read.kvs[0].mod_revision, 2);

    let r = m.txn(&txn).unwrap();
    assert!(!r.succeeded);
    assert_eq!(
        m.revision(),
        2,
        "a txn that writes nothing keeps the revision"
    );
}

#[test]
fn compares_on_every_target_and_missing_keys() {
    let mut m = Mvcc::new();
    put(&mut m, "k", "b"); // 2
    put(&mut m, "k", "b"); // 3
    let holds = |m: &Mvcc, c: Compare| m.compare(&c);
    use CompareResult::*;
    assert!(holds(&m, cmp("k", Equal, CompareTarget::Version(2))));
    assert!(holds(&m, cmp("k", Equal, CompareTarget::Create(2))));
    assert!(holds(&m, cmp("k", Greater, CompareTarget::Mod(2))));
    assert!(holds(&m, cmp("k", Less, CompareTarget::Value(b("c")))));
    assert!(holds(&m, cmp("k", NotEqual, CompareTarget::Value(b("a")))));
    assert!(holds(&m, cmp("k", Equal, CompareTarget::Lease(0))));
    // A missing key compares as zero, except its value, which never matches.
    assert!(holds(&m, cmp("none", Equal, CompareTarget::Version(0))));
    assert!(!holds(
        &m,
        cmp("none", NotEqual, CompareTarget::Value(b("x")))
    ));
    // A ranged compare needs every key in the range to hold.
    put(&mut m, "l", "z"); // 4
    let mut c = cmp("k", Equal, CompareTarget::Value(b("b")));
    c.range_end = b("m");
    assert!(!holds(&m, c.clone()));
    c.target = CompareTarget::Mod(1);
    c.result = Greater;
    assert!(holds(&m, c));
}

#[test]
fn failed_check_in_a_txn_changes_nothing() {
    let mut m = Mvcc::new();
    let txn = TxnRequest {
        success: vec![
            put_op("a", "1"),
            RequestOp::Put(PutRequest {
                key: b("b"),
                lease: 42,
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(m.txn(&txn), Err(Error::LeaseNotFound));
    assert_eq!(m.revision(), 1);
    assert_eq!(get(&m, "a", 0), None);
}

#[test]
fn ignore_value_and_lease_need_the_key() {
    let mut m = Mvcc::new();
    let req = PutRequest {
        key: b("k"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(m.put(&req), Err(Error::KeyNotFound));
    put(&mut m, "k", "v");
    m.put(&req).unwrap();
    assert_eq!(get(&m, "k", 0).unwrap().value, b("v"));
    assert_eq!(get(&m, "k", 0).unwrap().version, 2);
}

#[test]
fn lease_revoke_deletes_attached_keys_in_one_revision() {
    let mut m = Mvcc::new();
    m.lease_grant(7, 60, None).unwrap();
    assert_eq!(m.lease_grant(7, 60, None), Err(Error::LeaseExist));
    assert_eq!(
        m.lease_grant(8, MAX_LEASE_TTL + 1, None),
        Err(Error::LeaseTtlTooLarge)
    );
    for k in ["a", "b"] {
        m.put(&PutRequest {
            key: b(k),
            value: b("v"),
            lease: 7,
            ..Default::default()
        })
        .unwrap();
    }
    put(&mut m, "b", "detached"); // re-put without lease detaches b
    assert_eq!(m.lease(7).unwrap().keys.len(), 1);
    let rev = m.revision();
    m.lease_revoke(7).unwrap();
    assert_eq!(m.revision(), rev + 1);
    assert_eq!(get(&m, "a", 0), None);
    assert_eq!(get(&m, "b", 0).unwrap().value, b("detached"));
    assert_eq!(m.lease_revoke(7), Err(Error::LeaseNotFound));
}

#[test]
fn events_replay_history_with_prev_kv() {
    let mut m = Mvcc::new();
    put(&mut m, "w/a", "1"); // 2
    put(&mut m, "x", "ignored"); // 3
    put(&mut m, "w/a", "2"); // 4
    m.delete_range(&DeleteRangeRequest {
        key: b("w/a"),
        ..Default::default()
    })
    .unwrap(); // 5
    let range = KeyRange::new(b("w/"), b("w0"));
    let ev = m.events(&range, 2, m.revision(), true).unwrap();
    let summary: Vec<_> = ev
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.mod_revision,
                e.kv.value.clone(),
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, 2, b("1"), None),
            (EventKind::Put, 4, b("2"), Some(b("1"))),
            (EventKind::Delete, 5, Bytes::new(), Some(b("2"))),
        ]
    );
    m.compact(4).unwrap();
    assert_eq!(m.events(&range, 3, 5, false), Err(Error::Compacted));
    assert_eq!(m.events(&range, 4, 5, false).unwrap().len(), 2);
}

#[test]
fn snapshot_roundtrip_is_exact() {
    let mut m = Mvcc::new();
    put(&mut m, "a", "1");
    m.lease_grant(3, 10, None).unwrap();
    put(&mut m, "a", "2");
    let bytes = bincode::serialize(&m).unwrap();
    let mut back: Mvcc = bincode::deserialize(&bytes).unwrap();
    back.recount();
    assert_eq!(back, m);
}

#[test]
fn bytes_count_every_stored_version_until_compaction() {
    let mut m = Mvcc::new();
    let each = |k: &str, v: &str| (k.len() + v.len()) as u64 + VERSION_OVERHEAD;
    put(&mut m, "a", "1");
    put(&mut m, "a", "22");
    put(&mut m, "b", "333");
    assert_eq!(
        m.bytes(),
        each("a", "1") + each("a", "22") + each("b", "333")
    );
    m.delete_range(&DeleteRangeRequest {
        key: Bytes::from_static(b"b"),
        ..Default::default()
    })
    .unwrap();
    let tombstone = each("b", "");
    assert_eq!(
        m.bytes(),
        each("a", "1") + each("a", "22") + each("b", "333") + tombstone
    );
    // A txn stores one version per key it writes.
    m.txn(&TxnRequest {
        success: vec![put_op("c", "x"), put_op("d", "yy")],
        ..Default::default()
    })
    .unwrap();
    let live = each("a", "22") + each("c", "x") + each("d", "yy");
    m.compact(m.revision()).unwrap();
    assert_eq!(
        m.bytes(),
        live,
        "compaction frees overwritten and deleted versions"
    );
    let mut copy = m.clone();
    copy.recount();
    assert_eq!(copy.bytes(), m.bytes());
}
