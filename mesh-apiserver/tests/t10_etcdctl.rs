//! Acceptance: `etcdctl` 3.4 against a 3-member cluster prints exactly what it prints against
//! etcd 3.4.23.
//!
//! Runs against our `mesh-apiserver` by default. `RAFTMESH_TEST_SERVER=etcd` runs the very same
//! checks against the real etcd; every expected value below was taken from (and passes against)
//! etcd 3.4.23 with etcdctl 3.4.23.
//!
//! Each test starts its own fresh cluster, so revisions are exact: a new cluster is at revision 1
//! and every mutating request adds one.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::localcluster::{Cluster, Flavor, Spec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::time::Instant;

/// Bound on one etcdctl run (etcdctl's own dial + command timeouts are 2 s + 5 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on waiting for an eventual condition (watch events, lease expiry, reconfiguration).
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// put / get

#[tokio::test]
async fn put_and_get_prefix_rev_limit_keys_only_from_key() {
    let c = cluster().await;
    sort_fixture(&c).await;

    assert_eq!(
        ok(&c, &["get", "k/", "--prefix"]).await,
        "k/a\nv0\nk/b\nv4\nk/c\nv1\n"
    );
    assert_eq!(ok(&c, &["get", "k/a"]).await, "k/a\nv0\n");
    assert_eq!(ok(&c, &["get", "missing"]).await, "");
    // A range [key, range_end).
    assert_eq!(ok(&c, &["get", "k/a", "k/c"]).await, "k/a\nv0\nk/b\nv4\n");

    // Historical reads.
    assert_eq!(ok(&c, &["get", "k/b", "--rev", "2"]).await, "k/b\nv2\n");
    assert_eq!(ok(&c, &["get", "k/b", "--rev", "6"]).await, "k/b\nv9\n");
    assert_eq!(ok(&c, &["get", "k/c", "--rev", "3"]).await, "");
    assert_eq!(
        ok(&c, &["get", "k/", "--prefix", "--rev", "4"]).await,
        "k/a\nv3\nk/b\nv2\nk/c\nv1\n"
    );

    assert_eq!(
        ok(&c, &["get", "k/", "--prefix", "--limit", "2"]).await,
        "k/a\nv0\nk/b\nv4\n"
    );
    assert_eq!(
        ok(&c, &["get", "k/", "--prefix", "--keys-only"]).await,
        "k/a\n\nk/b\n\nk/c\n\n"
    );
    assert_eq!(
        ok(&c, &["get", "k/", "--prefix", "--print-value-only"]).await,
        "v0\nv4\nv1\n"
    );
    assert_eq!(
        ok(&c, &["get", "--from-key", "k/b"]).await,
        "k/b\nv4\nk/c\nv1\nother\nx\n"
    );
    assert_eq!(
        ok(&c, &["get", "--from-key", "k/b", "--keys-only"]).await,
        "k/b\n\nk/c\n\nother\n\n"
    );

    // `count` is the number of matches, `more` says the limit cut them, `kvs` is limited.
    let got = json(&c, &["get", "k/", "--prefix", "--limit", "2"]).await;
    assert_header(&got, 8);
    assert_eq!(
        without_header(got),
        json!({
            "kvs": [kv("k/a", "v0", 3, 5, 2), kv("k/b", "v4", 2, 7, 3)],
            "more": true,
            "count": 3,
        })
    );
    // No limit: no `more` field at all (false is omitted), and every kv.
    let got = json(&c, &["get", "k/", "--prefix"]).await;
    assert_eq!(
        without_header(got),
        json!({
            "kvs": [kv("k/a", "v0", 3, 5, 2), kv("k/b", "v4", 2, 7, 3), kv("k/c", "v1", 4, 4, 1)],
            "count": 3,
        })
    );
    // --keys-only drops the value field.
    let got = json(&c, &["get", "k/c", "--keys-only"]).await;
    assert_eq!(
        without_header(got),
        json!({
            "kvs": [{"key": b64("k/c"), "create_revision": 4, "mod_revision": 4, "version": 1}],
            "count": 1,
        })
    );
    // A miss: only the header.
    let got = json(&c, &["get", "missing"]).await;
    assert_header(&got, 8);
    assert_eq!(without_header(got), json!({}));
    // A historical read still reports the current revision in its header.
    let got = json(&c, &["get", "k/b", "--rev", "2"]).await;
    assert_header(&got, 8);
    assert_eq!(
        without_header(got),
        json!({"kvs": [kv("k/b", "v2", 2, 2, 1)], "count": 1})
    );

    // put --prev-kv prints the previous pair after OK; nothing for a new key.
    assert_eq!(
        ok(&c, &["put", "k/c", "v7", "--prev-kv"]).await,
        "OK\nk/c\nv1\n"
    );
    assert_eq!(ok(&c, &["put", "new", "z", "--prev-kv"]).await, "OK\n");
    let got = json(&c, &["put", "k/c", "v8", "--prev-kv"]).await;
    assert_header(&got, 11);
    assert_eq!(
        without_header(got),
        json!({"prev_kv": kv("k/c", "v7", 4, 9, 2)})
    );

    // An empty key is refused, for writes and reads alike.
    for args in [&["put", "", "v"][..], &["get", ""]] {
        let out = fails(&c, args, 1).await;
        assert_eq!(out.error_line(), "Error: etcdserver: key is not provided");
        assert_eq!(
            out.grpc_errors(),
            ["rpc error: code = InvalidArgument desc = etcdserver: key is not provided"]
        );
    }
    assert_eq!(revision(&c).await, 11);
}

#[tokio::test]
async fn get_sort_by_every_target_and_order() {
    let c = cluster().await;
    sort_fixture(&c).await;
    // k/a: create 3, mod 5, version 2, value v0
    // k/b: create 2, mod 7, version 3, value v4
    // k/c: create 4, mod 4, version 1, value v1
    let cases: &[(&str, &str, &str)] = &[
        ("KEY", "ASCEND", "a b c"),
        ("KEY", "DESCEND", "c b a"),
        ("VERSION", "ASCEND", "c a b"),
        ("VERSION", "DESCEND", "b a c"),
        ("CREATE", "ASCEND", "b a c"),
        ("CREATE", "DESCEND", "c a b"),
        ("MODIFY", "ASCEND", "c a b"),
        ("MODIFY", "DESCEND", "b a c"),
        ("VALUE", "ASCEND", "a c b"),
        ("VALUE", "DESCEND", "b c a"),
    ];
    for &(target, order, keys) in cases {
        let sort = format!("--sort-by={target}");
        let order_flag = format!("--order={order}");
        let got = ok(&c, &["get", "k/", "--prefix", &sort, &order_flag]).await;
        assert_eq!(got, listing(keys), "--sort-by={target} --order={order}");
    }
    // Without --order a sort target sorts ascending; without --sort-by an order sorts by key.
    assert_eq!(
        ok(&c, &["get", "k/", "--prefix", "--sort-by=VERSION"]).await,
        listing("c a b")
    );
    assert_eq!(
        ok(&c, &["get", "k/", "--prefix", "--order=DESCEND"]).await,
        listing("c b a")
    );
    // Sorting happens before the limit.
    assert_eq!(
        ok(
            &c,
            &[
                "get",
                "k/",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--limit=1"
            ]
        )
        .await,
        listing("b")
    );
    let got = json(
        &c,
        &[
            "get",
            "k/",
            "--prefix",
            "--sort-by=CREATE",
            "--order=DESCEND",
            "--limit=2",
        ],
    )
    .await;
    assert_eq!(
        without_header(got),
        json!({
            "kvs": [kv("k/c", "v1", 4, 4, 1), kv("k/a", "v0", 3, 5, 2)],
            "more": true,
            "count": 3,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// del

#[tokio::test]
async fn del_prefix_and_prev_kv() {
    let c = cluster().await;
    for (k, v) in [("d/1", "a"), ("d/2", "b"), ("d/3", "c"), ("e", "keep")] {
        assert_eq!(ok(&c, &["put", k, v]).await, "OK\n");
    }
    // revision 5
    assert_eq!(ok(&c, &["del", "d/", "--prefix"]).await, "3\n"); // revision 6
    assert_eq!(ok(&c, &["get", "d/", "--prefix"]).await, "");
    assert_eq!(ok(&c, &["get", "e"]).await, "e\nkeep\n");
    // Deleting nothing prints 0 and does not add a revision.
    assert_eq!(ok(&c, &["del", "missing"]).await, "0\n");
    assert_eq!(revision(&c).await, 6);

    assert_eq!(ok(&c, &["put", "x", "1"]).await, "OK\n"); // 7
    assert_eq!(ok(&c, &["put", "x", "2"]).await, "OK\n"); // 8
    assert_eq!(ok(&c, &["del", "x", "--prev-kv"]).await, "1\nx\n2\n"); // 9
    assert_eq!(revision(&c).await, 9);
    assert_eq!(ok(&c, &["get", "x"]).await, "");
    assert_eq!(ok(&c, &["get", "x", "--rev", "8"]).await, "x\n2\n");

    // A prefix delete with --prev-kv prints the count, then every deleted pair in key order.
    for (k, v) in [("p/b", "2"), ("p/a", "1"), ("p/c", "3")] {
        ok(&c, &["put", k, v]).await; // 10, 11, 12
    }
    assert_eq!(
        ok(&c, &["del", "p/", "--prefix", "--prev-kv"]).await,
        "3\np/a\n1\np/b\n2\np/c\n3\n"
    ); // 13

    // JSON: `deleted` and `prev_kvs`; a miss has neither field.
    ok(&c, &["put", "y", "v"]).await; // 14
    let got = json(&c, &["del", "y", "--prev-kv"]).await; // 15
    assert_header(&got, 15);
    assert_eq!(
        without_header(got),
        json!({"deleted": 1, "prev_kvs": [kv("y", "v", 14, 14, 1)]})
    );
    let got = json(&c, &["del", "y"]).await;
    assert_header(&got, 15);
    assert_eq!(without_header(got), json!({}));
    // A range delete [from, to).
    for k in ["r/1", "r/2", "r/3"] {
        ok(&c, &["put", k, "v"]).await;
    }
    assert_eq!(ok(&c, &["del", "r/1", "r/3"]).await, "2\n");
    assert_eq!(
        ok(&c, &["get", "r/", "--prefix", "--keys-only"]).await,
        "r/3\n\n"
    );
}

// ---------------------------------------------------------------------------------------------
// txn

#[tokio::test]
async fn txn_compares_and_branches() {
    let c = cluster().await;
    ok(&c, &["put", "t/a", "1"]).await; // 2
    ok(&c, &["put", "t/a", "2"]).await; // 3: t/a create 2, mod 3, version 2
    ok(&c, &["put", "t/b", "hello"]).await; // 4

    // Every kind of compare holds: the success branch runs; its responses follow, one per op.
    let script = "\
version(\"t/a\") = \"2\"
create(\"t/a\") = \"2\"
mod(\"t/a\") = \"3\"
value(\"t/b\") = \"hello\"

put t/c yes
get t/a

put t/c no

";
    assert_eq!(txn(&c, script, &[]).await, "SUCCESS\n\nOK\n\nt/a\n2\n");
    assert_eq!(ok(&c, &["get", "t/c"]).await, "t/c\nyes\n");
    assert_eq!(revision(&c).await, 5);

    // One failing compare: the failure branch runs, all its writes in a single revision.
    let script = "\
version(\"t/a\") = \"2\"
version(\"t/a\") > \"5\"

put t/d should-not-happen

put t/d f
del t/b

";
    assert_eq!(txn(&c, script, &[]).await, "FAILURE\n\nOK\n\n1\n");
    assert_eq!(revision(&c).await, 6);
    assert_eq!(ok(&c, &["get", "t/d"]).await, "t/d\nf\n");
    assert_eq!(ok(&c, &["get", "t/b"]).await, "");
    assert_eq!(ok(&c, &["get", "t/b", "--rev", "5"]).await, "t/b\nhello\n");
    let got = json(&c, &["get", "t/d"]).await;
    assert_eq!(got["kvs"][0]["mod_revision"], 6);

    // Each operator, and a missing key compares as 0 / empty.
    let cases: &[(&str, bool)] = &[
        ("version(\"t/a\") < \"3\"", true),
        ("version(\"t/a\") != \"2\"", false),
        ("mod(\"t/a\") > \"2\"", true),
        ("mod(\"t/a\") < \"3\"", false),
        ("create(\"t/c\") = \"5\"", true),
        ("create(\"t/c\") > \"5\"", false),
        ("value(\"t/c\") != \"no\"", true),
        ("value(\"t/c\") > \"yes\"", false),
        ("value(\"t/c\") < \"yf\"", true),
        ("create(\"t/missing\") = \"0\"", true),
        ("version(\"t/missing\") = \"0\"", true),
        ("mod(\"t/missing\") > \"0\"", false),
    ];
    for &(compare, holds) in cases {
        let script = format!("{compare}\n\nget t/a\n\nget t/d\n\n");
        let expected = if holds {
            "SUCCESS\n\nt/a\n2\n"
        } else {
            "FAILURE\n\nt/d\nf\n"
        };
        assert_eq!(txn(&c, &script, &[]).await, expected, "{compare}");
    }
    // Read-only transactions add no revision.
    assert_eq!(revision(&c).await, 6);

    // No compares: success. JSON shows every response with the txn's single revision.
    let script = "\nput t/e 1\nput t/f 2\ndel t/d\nget t/e\n\n\n";
    let got: Value = serde_json::from_str(&txn(&c, script, &["-w", "json"]).await).unwrap();
    assert_header(&got, 7);
    assert_eq!(
        without_header(got),
        json!({
            "succeeded": true,
            "responses": [
                {"Response": {"ResponsePut": {"header": {"revision": 7}}}},
                {"Response": {"ResponsePut": {"header": {"revision": 7}}}},
                {"Response": {"ResponseDeleteRange": {"header": {"revision": 7}, "deleted": 1}}},
                {"Response": {"ResponseRange": {
                    "header": {"revision": 7},
                    "kvs": [kv("t/e", "1", 7, 7, 1)],
                    "count": 1,
                }}},
            ],
        })
    );
    // A failed txn with an empty failure branch: `succeeded` omitted, no responses.
    let got: Value = serde_json::from_str(
        &txn(
            &c,
            "version(\"t/a\") = \"9\"\n\nput t/g 1\n\n\n",
            &["-w", "json"],
        )
        .await,
    )
    .unwrap();
    assert_header(&got, 7);
    assert_eq!(without_header(got), json!({}));
    assert_eq!(
        txn(&c, "version(\"t/a\") = \"9\"\n\nput t/g 1\n\n\n", &[]).await,
        "FAILURE\n"
    );
}

// ---------------------------------------------------------------------------------------------
// watch

#[tokio::test]
async fn watch_prefix_live() {
    let c = cluster().await;
    let mut w = Watch::spawn(&c, &["watch", "--prefix", "w/"]);
    w.sync(&c, "w/sync").await;

    ok(&c, &["put", "w/a", "1"]).await;
    ok(&c, &["put", "outside", "x"]).await;
    ok(&c, &["put", "w/b", "2"]).await;
    ok(&c, &["put", "w/a", "3"]).await;
    ok(&c, &["del", "w/a"]).await;
    ok(&c, &["del", "w/", "--prefix"]).await; // w/b and w/sync, in key order
    ok(&c, &["put", "w/end", "."]).await;
    assert_eq!(
        w.lines(21).await,
        [
            "PUT", "w/a", "1", //
            "PUT", "w/b", "2", //
            "PUT", "w/a", "3", //
            "DELETE", "w/a", "", //
            "DELETE", "w/b", "", //
            "DELETE", "w/sync", "", //
            "PUT", "w/end", ".",
        ]
    );
    w.stop().await;

    // A single-key watch sees only that key.
    let mut w = Watch::spawn(&c, &["watch", "one"]);
    w.sync(&c, "one").await;
    ok(&c, &["put", "one/child", "x"]).await;
    ok(&c, &["put", "onf", "x"]).await;
    ok(&c, &["put", "one", "last"]).await;
    assert_eq!(w.lines(3).await, ["PUT", "one", "last"]);
    w.stop().await;
}

#[tokio::test]
async fn watch_replays_history_from_rev() {
    let c = cluster().await;
    ok(&c, &["put", "h/a", "1"]).await; // 2
    ok(&c, &["put", "h/b", "2"]).await; // 3
    ok(&c, &["put", "h/a", "3"]).await; // 4
    ok(&c, &["del", "h/a"]).await; // 5
    ok(&c, &["put", "other", "0"]).await; // 6
    ok(&c, &["put", "h/c", "4"]).await; // 7

    let mut w = Watch::spawn(&c, &["watch", "--prefix", "h/", "--rev", "3"]);
    assert_eq!(
        w.lines(12).await,
        [
            "PUT", "h/b", "2", //
            "PUT", "h/a", "3", //
            "DELETE", "h/a", "", //
            "PUT", "h/c", "4",
        ]
    );
    // History then live, on the same watch.
    ok(&c, &["put", "h/d", "5"]).await; // 8
    assert_eq!(w.lines(3).await, ["PUT", "h/d", "5"]);
    w.stop().await;

    // JSON: exact revisions of every event, however the server batches them into responses.
    let mut w = Watch::spawn(&c, &["watch", "--prefix", "h/", "--rev", "2", "-w", "json"]);
    let events = w.json_events(6).await;
    assert_eq!(
        events,
        [
            json!({"kv": kv("h/a", "1", 2, 2, 1)}),
            json!({"kv": kv("h/b", "2", 3, 3, 1)}),
            json!({"kv": kv("h/a", "3", 2, 4, 2)}),
            json!({"type": 1, "kv": {"key": b64("h/a"), "mod_revision": 5}}),
            json!({"kv": kv("h/c", "4", 7, 7, 1)}),
            json!({"kv": kv("h/d", "5", 8, 8, 1)}),
        ]
    );
    w.stop().await;
}

#[tokio::test]
async fn watch_prev_kv() {
    let c = cluster().await;
    ok(&c, &["put", "pk", "1"]).await; // 2
    ok(&c, &["put", "pk", "2"]).await; // 3
    ok(&c, &["del", "pk"]).await; // 4

    // With --prev-kv an event prints the previous pair before the new one.
    let mut w = Watch::spawn(&c, &["watch", "pk", "--prev-kv", "--rev", "2"]);
    assert_eq!(
        w.lines(13).await,
        [
            "PUT", "pk", "1", //
            "PUT", "pk", "1", "pk", "2", //
            "DELETE", "pk", "2", "pk", "",
        ]
    );
    ok(&c, &["put", "pk", "3"]).await; // 5: re-created, no previous pair
    ok(&c, &["put", "pk", "4"]).await; // 6
    assert_eq!(
        w.lines(8).await,
        ["PUT", "pk", "3", "PUT", "pk", "3", "pk", "4"]
    );
    w.stop().await;

    let mut w = Watch::spawn(
        &c,
        &["watch", "pk", "--prev-kv", "--rev", "3", "-w", "json"],
    );
    assert_eq!(
        w.json_events(4).await,
        [
            json!({"kv": kv("pk", "2", 2, 3, 2), "prev_kv": kv("pk", "1", 2, 2, 1)}),
            json!({
                "type": 1,
                "kv": {"key": b64("pk"), "mod_revision": 4},
                "prev_kv": kv("pk", "2", 2, 3, 2),
            }),
            json!({"kv": kv("pk", "3", 5, 5, 1)}),
            json!({"kv": kv("pk", "4", 5, 6, 2), "prev_kv": kv("pk", "3", 5, 5, 1)}),
        ]
    );
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// lease

#[tokio::test]
async fn lease_grant_attach_list_keep_alive_revoke() {
    let c = cluster().await;
    let id = grant(&c, 100, 100).await;
    let granted = json(&c, &["lease", "grant", "200"]).await;
    // `lease grant -w json` prints a flattened header, with Go field names for ID/TTL/Error.
    let id2 = granted["ID"].as_i64().expect("ID");
    assert!(id2 > 0, "{granted}");
    assert_eq!(granted["TTL"], 200);
    assert_eq!(granted["Error"], "");
    assert_eq!(granted["revision"], 1);
    let id2 = format!("{id2:016x}");
    assert_ne!(id, id2);

    let lease_flag = format!("--lease={id}");
    assert_eq!(ok(&c, &["put", &lease_flag, "l/1", "a"]).await, "OK\n");
    assert_eq!(ok(&c, &["put", &lease_flag, "l/2", "b"]).await, "OK\n");
    let got = json(&c, &["get", "l/1"]).await;
    assert_eq!(
        got["kvs"][0]["lease"],
        i64::from_str_radix(&id, 16).unwrap()
    );

    // timetolive: text (remaining is time-dependent; the key order is not specified).
    let text = ok(&c, &["lease", "timetolive", &id, "--keys"]).await;
    let head = format!("lease {id} granted with TTL(100s), remaining(");
    let rest = text
        .strip_prefix(&head)
        .unwrap_or_else(|| panic!("{text:?}"));
    let (remaining, keys) = rest
        .split_once("s), ")
        .unwrap_or_else(|| panic!("{text:?}"));
    let remaining: i64 = remaining.parse().unwrap_or_else(|_| panic!("{text:?}"));
    assert!((90..=100).contains(&remaining), "{text:?}");
    assert!(
        keys == "attached keys([l/1 l/2])\n" || keys == "attached keys([l/2 l/1])\n",
        "{text:?}"
    );
    let text = ok(&c, &["lease", "timetolive", &id]).await;
    assert!(
        text.starts_with(&head) && text.ends_with("s)\n"),
        "{text:?}"
    );

    let got = json(&c, &["lease", "timetolive", &id, "--keys"]).await;
    assert_eq!(got["id"], i64::from_str_radix(&id, 16).unwrap());
    assert_eq!(got["granted-ttl"], 100);
    let ttl = got["ttl"].as_i64().unwrap();
    assert!((90..=100).contains(&ttl), "{got}");
    let mut keys: Vec<&str> = got["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, [b64("l/1"), b64("l/2")]);

    // etcd lists leases by expiry on the leader but in no particular order on a follower (where
    // every lease expires "never"), so only the set is checked.
    let list = ok(&c, &["lease", "list"]).await;
    let mut lines: Vec<&str> = list.lines().collect();
    lines[1..].sort_unstable();
    let mut expected = [id.as_str(), id2.as_str()];
    expected.sort_unstable();
    assert_eq!(
        lines,
        [&["found 2 leases"][..], &expected].concat(),
        "{list:?}"
    );

    assert_eq!(
        ok(&c, &["lease", "keep-alive", "--once", &id]).await,
        format!("lease {id} keepalived with TTL(100)\n")
    );

    assert_eq!(
        ok(&c, &["lease", "revoke", &id]).await,
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&c, &["get", "l/", "--prefix"]).await, "");
    assert_eq!(
        ok(&c, &["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        ok(&c, &["lease", "list"]).await,
        format!("found 1 leases\n{id2}\n")
    );

    // Unknown leases.
    let out = fails(&c, &["lease", "revoke", &id], 1).await;
    assert_eq!(
        out.error_line(),
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    );
    assert_eq!(
        out.grpc_errors(),
        ["rpc error: code = NotFound desc = etcdserver: requested lease not found"]
    );
    let out = fails(&c, &["put", &lease_flag, "l/3", "c"], 1).await;
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(
        out.grpc_errors(),
        ["rpc error: code = NotFound desc = etcdserver: requested lease not found"]
    );
    let out = fails(&c, &["lease", "keep-alive", "--once", &id], 2).await;
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(ok(&c, &["get", "l/3"]).await, "");

    // The largest TTL etcd accepts is 9,000,000,000 s.
    let big = grant(&c, 9_000_000_000, 9_000_000_000).await;
    assert_eq!(
        ok(&c, &["lease", "revoke", &big]).await,
        format!("lease {big} revoked\n")
    );
    let out = fails(&c, &["lease", "grant", "9000000001"], 1).await;
    assert_eq!(
        out.error_line(),
        "Error: failed to grant lease (etcdserver: too large lease TTL)"
    );
    assert_eq!(
        out.grpc_errors(),
        ["rpc error: code = OutOfRange desc = etcdserver: too large lease TTL"]
    );
}

#[tokio::test]
async fn lease_expiry_deletes_attached_keys() {
    let c = cluster().await;
    // A TTL below the minimum is raised to it.
    assert_ne!(grant(&c, 0, 2).await, grant(&c, 1, 2).await);
    let id = grant(&c, 1, 2).await;
    let granted_at = Instant::now();
    let lease_flag = format!("--lease={id}");
    ok(&c, &["put", &lease_flag, "short/a", "1"]).await; // 2
    ok(&c, &["put", &lease_flag, "short/b", "2"]).await; // 3
    ok(&c, &["put", "short/keep", "3"]).await; // 4
    let mut w = Watch::spawn(&c, &["watch", "--prefix", "short/", "--rev", "2"]);
    assert_eq!(
        w.lines(9).await,
        [
            "PUT",
            "short/a",
            "1",
            "PUT",
            "short/b",
            "2",
            "PUT",
            "short/keep",
            "3"
        ]
    );

    // Expiry deletes both keys (one revision, in key order) and emits their DELETE events.
    let deadline = Instant::now() + PATIENCE;
    while !ok(&c, &["get", "short/a"]).await.is_empty() {
        assert!(Instant::now() < deadline, "lease {id} never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        granted_at.elapsed() >= Duration::from_secs(1),
        "a 2 s lease expired after {:?}",
        granted_at.elapsed()
    );
    assert_eq!(
        w.lines(6).await,
        ["DELETE", "short/a", "", "DELETE", "short/b", ""]
    );
    w.stop().await;
    assert_eq!(
        ok(&c, &["get", "short/", "--prefix"]).await,
        "short/keep\n3\n"
    );
    assert_eq!(revision(&c).await, 5);
    assert_eq!(
        ok(&c, &["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    // The two other 2 s leases expire too (etcd revokes expired leases concurrently, so they may
    // go a moment after `id`).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = ok(&c, &["lease", "list"]).await;
        if list == "found 0 leases\n" {
            break;
        }
        assert!(Instant::now() < deadline, "leases never expired: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// compaction

#[tokio::test]
async fn compaction() {
    let c = cluster().await;
    for v in ["1", "2", "3", "4"] {
        ok(&c, &["put", "c", v]).await; // 2, 3, 4, 5
    }
    assert_eq!(ok(&c, &["compaction", "4"]).await, "compacted revision 4\n");

    let out = fails(&c, &["get", "c", "--rev", "3"], 1).await;
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        out.grpc_errors(),
        [
            "rpc error: code = OutOfRange desc = etcdserver: mvcc: required revision has been compacted"
        ]
    );
    // The compacted revision itself is still readable.
    assert_eq!(ok(&c, &["get", "c", "--rev", "4"]).await, "c\n3\n");
    assert_eq!(ok(&c, &["get", "c", "--rev", "5"]).await, "c\n4\n");
    let out = fails(&c, &["get", "c", "--rev", "6"], 1).await;
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(
        out.grpc_errors(),
        [
            "rpc error: code = OutOfRange desc = etcdserver: mvcc: required revision is a future revision"
        ]
    );

    // Compacting at or below the compacted revision, or in the future, fails.
    for rev in ["3", "4"] {
        let out = fails(&c, &["compaction", rev], 1).await;
        assert_eq!(
            out.error_line(),
            "Error: etcdserver: mvcc: required revision has been compacted"
        );
    }
    let out = fails(&c, &["compaction", "100"], 1).await;
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );

    // A watch from a compacted revision is canceled by the server.
    let out = run(&c, &["watch", "c", "--rev", "2"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (
            Some(5),
            "",
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
             Error: watch is canceled by the server\n"
        )
    );
    // From the compacted revision on, history is intact.
    let mut w = Watch::spawn(&c, &["watch", "c", "--rev", "4"]);
    assert_eq!(w.lines(6).await, ["PUT", "c", "3", "PUT", "c", "4"]);
    w.stop().await;

    ok(&c, &["del", "c"]).await; // 6
    assert_eq!(
        ok(&c, &["compaction", "6", "--physical"]).await,
        "compacted revision 6\n"
    );
    let out = fails(&c, &["get", "c", "--rev", "5"], 1).await;
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(ok(&c, &["get", "c", "--rev", "6"]).await, "");
    // Every member applied the compaction.
    for i in 0..c.len() {
        let out = etcdctl_with(c.etcdctl_for(i), &["get", "c", "--rev", "5"], None).await;
        assert_eq!(
            (out.code, out.error_line()),
            (
                Some(1),
                "Error: etcdserver: mvcc: required revision has been compacted"
            ),
            "member {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// member

#[tokio::test]
async fn member_list_add_remove() {
    let mut c = cluster().await;
    ok(&c, &["put", "before", "add"]).await;

    // Members are listed by id. A member publishes its name and client URLs once it runs,
    // so on a loaded machine one may still be listed unstarted right after the start.
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(started_member(&c, i).await);
    }
    let deadline = Instant::now() + PATIENCE;
    while ok(&c, &["member", "list"]).await.contains("unstarted") {
        assert!(
            Instant::now() < deadline,
            "members never published themselves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ok(&c, &["member", "list"]).await,
        member_list_text(&members)
    );
    let got = json(&c, &["member", "list"]).await;
    let cluster_id = got["header"]["cluster_id"].as_u64().expect("cluster_id");
    assert_ne!(cluster_id, 0);
    assert_eq!(
        header_fields(&got),
        ["cluster_id", "member_id", "raft_term"],
        "a cluster reply carries no revision: {got}"
    );
    assert_eq!(got["members"], member_list_json(&members));

    // etcdctl member add prints the new member's id and the environment to start it with.
    let peer = format!(
        "http://127.0.0.1:{}",
        testkit::localcluster::ports::pick_free_ports(1).unwrap()[0]
    );
    let peer_flag = format!("--peer-urls={peer}");
    let text = ok_when_healthy(&c, &["member", "add", "n9", &peer_flag]).await;
    let first = text.lines().next().unwrap_or_default();
    let new_id = first
        .strip_prefix("Member ")
        .and_then(|s| s.strip_suffix(&format!(" added to cluster {cluster_id:16x}")))
        .unwrap_or_else(|| panic!("{text:?}"))
        .trim_start();
    let new_id = u64::from_str_radix(new_id, 16).unwrap_or_else(|_| panic!("{text:?}"));
    let mut with_new: Vec<(u64, String, String)> = members
        .iter()
        .map(|m| (m.id, m.name.clone(), m.peer.clone()))
        .chain([(new_id, "n9".to_owned(), peer.clone())])
        .collect();
    with_new.sort();
    let initial: Vec<String> = with_new
        .iter()
        .map(|(_, name, peer)| format!("{name}={peer}"))
        .collect();
    assert_eq!(
        text,
        format!(
            "Member {new_id:16x} added to cluster {cluster_id:16x}\n\n\
             ETCD_NAME=\"n9\"\n\
             ETCD_INITIAL_CLUSTER=\"{}\"\n\
             ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\"\n\
             ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n",
            initial.join(",")
        )
    );
    // Until it starts, it is listed unstarted, without name or client URLs.
    let mut listed = members.clone();
    listed.push(Listed {
        id: new_id,
        name: String::new(),
        peer: peer.clone(),
        client: None,
    });
    listed.sort_by_key(|m| m.id);
    assert_eq!(ok(&c, &["member", "list"]).await, member_list_text(&listed));
    assert_eq!(
        json(&c, &["member", "list"]).await["members"],
        member_list_json(&listed)
    );
    assert_eq!(
        ok_when_healthy(&c, &["member", "remove", &format!("{new_id:x}")]).await,
        format!("Member {new_id:16x} removed from cluster {cluster_id:16x}\n")
    );
    assert_eq!(
        ok(&c, &["member", "list"]).await,
        member_list_text(&members)
    );

    // A member added and started for real joins, catches up and serves reads.
    let added = c.add_member().await.expect("member n4 joins");
    assert_eq!(added, 3);
    // From the moment it serves, the new member knows the membership (it serves clients only
    // once its log lists itself, as etcd serves only once ready): asked alone, it lists all four.
    let out = etcdctl_with(c.etcdctl_for(added), &["member", "list"], None).await;
    assert_eq!(
        (out.code, out.stdout.lines().count()),
        (Some(0), 4),
        "the new member's own list: {out:?}"
    );
    members.push(started_member(&c, added).await);
    members.sort_by_key(|m| m.id);
    // A member serves before its name and client URLs are applied (etcd's "unstarted" until
    // then): wait for them, then the list must be exact.
    let expected = member_list_text(&members);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut listed = ok(&c, &["member", "list"]).await;
    while listed != expected && listed.contains("unstarted") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        listed = ok(&c, &["member", "list"]).await;
    }
    assert_eq!(listed, expected);
    let out = etcdctl_with(c.etcdctl_for(added), &["get", "before"], None).await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "before\nadd\n"));
    ok(&c, &["put", "after", "add"]).await;
    let out = etcdctl_with(
        c.etcdctl_for(added),
        &["get", "after", "--consistency=s"],
        None,
    )
    .await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "after\nadd\n"));

    // Removing a started member: it leaves the list, the others keep serving.
    let n1 = c.member_id(0).await.unwrap();
    let out = ok_when_healthy_for(&c, 1, &["member", "remove", &format!("{n1:x}")]).await;
    assert_eq!(
        out,
        format!("Member {n1:16x} removed from cluster {cluster_id:16x}\n")
    );
    c.kill(0);
    members.retain(|m| m.id != n1);
    // If n1 led, the others elect a new leader first (a write sent in between may time out).
    let leader = c.leader().await.expect("a new leader");
    assert_ne!(leader, 0);
    assert_eq!(
        ok(&c, &["member", "list"]).await,
        member_list_text(&members)
    );
    assert_eq!(ok(&c, &["put", "after", "remove"]).await, "OK\n");
    for i in 1..4 {
        let out = etcdctl_with(c.etcdctl_for(i), &["get", "after"], None).await;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), "after\nremove\n"),
            "member {i}"
        );
    }

    // Removing an unknown member.
    let out = fails(&c, &["member", "remove", &format!("{n1:x}")], 1).await;
    assert_eq!(out.error_line(), "Error: etcdserver: member not found");
    assert_eq!(
        out.grpc_errors(),
        ["rpc error: code = NotFound desc = etcdserver: member not found"]
    );
}

// ---------------------------------------------------------------------------------------------
// endpoint
//
// etcdctl 3.4's `endpoint status/health` send a URL endpoint verbatim as the HTTP/2
// `:authority`; most tests pass `host:port` endpoints, `endpoint_status_with_url_endpoints`
// the URL form (the vendored h2 accepts it, as etcd does).

/// `http://host:port` → `host:port`.
fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

async fn json_with(command: std::process::Command, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-w", "json"]);
    let out = etcdctl_with(command, &full, None).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(0), ""),
        "etcdctl {full:?}: {out:?}"
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout))
}

async fn ok_with(command: std::process::Command, args: &[&str]) -> String {
    let out = etcdctl_with(command, args, None).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(0), ""),
        "etcdctl {args:?}: {out:?}"
    );
    out.stdout
}

/// etcdctl 3.4 sends a URL endpoint verbatim as the HTTP/2 `:authority`; the vendored h2
/// (vendor/h2/RAFTMESH-PATCH.md) reads it as its `host:port`, as etcd does.
#[tokio::test]
async fn endpoint_status_with_url_endpoints() {
    let c = cluster().await;
    let out = run(&c, &["endpoint", "status"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
}

#[tokio::test]
async fn endpoint_status_and_health() {
    let c = cluster().await;
    let leader = c.leader().await.unwrap();
    let leader_id = c.member_id(leader).await.unwrap();

    let got = json_with(c.etcdctl_addrs(), &["endpoint", "status"]).await;
    let statuses = got.as_array().expect("an array, one entry per endpoint");
    assert_eq!(statuses.len(), 3, "{got}");
    let term = statuses[0]["Status"]["raftTerm"]
        .as_u64()
        .expect("raftTerm");
    let cluster_id = statuses[0]["Status"]["header"]["cluster_id"]
        .as_u64()
        .unwrap();
    assert!(term >= 1, "{got}");
    for (i, entry) in statuses.iter().enumerate() {
        let status = &entry["Status"];
        assert_eq!(entry["Endpoint"], addr(&c.client_url(i)), "{got}");
        assert_eq!(
            status["header"]["member_id"],
            c.member_id(i).await.unwrap(),
            "{got}"
        );
        assert_eq!(status["header"]["cluster_id"], cluster_id, "{got}");
        assert_eq!(status["header"]["raft_term"], term, "{got}");
        assert_eq!(status["header"]["revision"], 1, "{got}");
        assert_eq!(
            status["leader"], leader_id,
            "every member agrees on the leader: {got}"
        );
        assert_eq!(status["raftTerm"], term, "{got}");
        assert_etcd_version(status["version"].as_str().expect("version"));
        assert!(status["dbSize"].as_i64().unwrap() > 0, "{got}");
        let index = status["raftIndex"].as_u64().expect("raftIndex");
        let applied = status["raftAppliedIndex"]
            .as_u64()
            .expect("raftAppliedIndex");
        assert!(index > 0 && applied > 0 && applied <= index, "{got}");
    }

    // Text: endpoint, id, version, db size, is leader, is learner, term, index, applied, errors.
    let text = ok_with(c.etcdctl_addrs(), &["endpoint", "status"]).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split(", ").collect();
        assert_eq!(fields.len(), 10, "{line:?}");
        let id = c.member_id(i).await.unwrap();
        assert_eq!(fields[0], addr(&c.client_url(i)));
        assert_eq!(fields[1], format!("{id:x}"));
        assert_etcd_version(fields[2]);
        assert_eq!(
            fields[4],
            if i == leader { "true" } else { "false" },
            "{line}"
        );
        assert_eq!(fields[5], "false", "{line}");
        assert_eq!(fields[6], term.to_string(), "{line}");
        assert_eq!(fields[9], "", "{line}");
    }

    // Health: every endpoint commits a proposal. Endpoints are checked concurrently, so the
    // output order is not specified.
    // etcdctl 3.4 prints the health lines on stderr, not stdout.
    let out = etcdctl_with(c.etcdctl_addrs(), &["endpoint", "health"], None).await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{out:?}");
    let text = out.stderr;
    let mut healthy: Vec<String> = text
        .lines()
        .map(|line| {
            let (url, took) = line
                .split_once(" is healthy: successfully committed proposal: took = ")
                .unwrap_or_else(|| panic!("{line:?}"));
            assert!(!took.is_empty(), "{line:?}");
            url.to_owned()
        })
        .collect();
    healthy.sort();
    let mut urls: Vec<String> = c.client_urls().iter().map(|u| addr(u)).collect();
    urls.sort();
    assert_eq!(healthy, urls);

    let got = json_with(c.etcdctl_addrs(), &["endpoint", "health"]).await;
    let mut entries: Vec<(String, bool)> = got
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            assert!(e["took"].as_str().is_some_and(|t| !t.is_empty()), "{e}");
            (
                e["endpoint"].as_str().unwrap().to_owned(),
                e["health"] == true,
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        urls.iter().map(|u| (u.clone(), true)).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fresh 3-member cluster of the server under test.
async fn cluster() -> Cluster {
    let flavor = Flavor::from_env(env!("CARGO_BIN_EXE_mesh-apiserver"));
    Cluster::start(flavor, Spec::default())
        .await
        .expect("the cluster starts")
}

/// Seven puts, revisions 2..=8, giving three keys whose key, version, create, mod and value
/// orders all differ:
/// k/a: create 3, mod 5, version 2, value v0;
/// k/b: create 2, mod 7, version 3, value v4;
/// k/c: create 4, mod 4, version 1, value v1;
/// and `other` = x.
async fn sort_fixture(c: &Cluster) {
    for (k, v) in [
        ("k/b", "v2"),
        ("k/a", "v3"),
        ("k/c", "v1"),
        ("k/a", "v0"),
        ("k/b", "v9"),
        ("k/b", "v4"),
        ("other", "x"),
    ] {
        assert_eq!(ok(c, &["put", k, v]).await, "OK\n");
    }
}

/// etcdctl's simple output for the fixture keys named by letter, in that order.
fn listing(keys: &str) -> String {
    keys.split(' ')
        .map(|k| {
            let value = match k {
                "a" => "v0",
                "b" => "v4",
                "c" => "v1",
                _ => unreachable!(),
            };
            format!("k/{k}\n{value}\n")
        })
        .collect()
}

/// What one etcdctl run produced.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    /// etcdctl's own message: the last line of stderr (`Error: …`).
    fn error_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }

    /// The gRPC errors clientv3 logged as JSON warnings on stderr, e.g.
    /// `rpc error: code = OutOfRange desc = …`: they show the status code the server sent.
    fn grpc_errors(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|v| v["error"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Runs `command args`, feeding `stdin`, bounded by [`COMMAND_TIMEOUT`].
async fn etcdctl_with(command: std::process::Command, args: &[&str], stdin: Option<&str>) -> Out {
    let mut command = tokio::process::Command::from(command);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("etcdctl starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .await
            .expect("etcdctl reads stdin");
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} ran longer than {COMMAND_TIMEOUT:?}"))
        .expect("etcdctl runs");
    Out {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// `etcdctl --endpoints=<all> args`.
async fn run(c: &Cluster, args: &[&str]) -> Out {
    etcdctl_with(c.etcdctl(), args, None).await
}

/// Runs etcdctl, asserts exit 0 and a silent stderr, returns stdout.
async fn ok(c: &Cluster, args: &[&str]) -> String {
    let out = run(c, args).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(0), ""),
        "etcdctl {args:?}: {out:?}"
    );
    out.stdout
}

/// Runs etcdctl, asserts exit `code` and an empty stdout, returns the output.
async fn fails(c: &Cluster, args: &[&str], code: i32) -> Out {
    let out = run(c, args).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(code), ""),
        "etcdctl {args:?}: {out:?}"
    );
    out
}

/// `ok` with `-w json`, parsed.
async fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    let text = ok(c, &args).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}: {text:?}"))
}

/// `etcdctl txn extra…` with `script` on stdin; asserts success and returns stdout.
async fn txn(c: &Cluster, script: &str, extra: &[&str]) -> String {
    let mut args = vec!["txn"];
    args.extend(extra);
    let out = etcdctl_with(c.etcdctl(), &args, Some(script)).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(0), ""),
        "txn {script:?}: {out:?}"
    );
    out.stdout
}

/// Runs a reconfiguration through every member, retrying while etcd refuses it as unsafe
/// ("unhealthy cluster": some member connected less than 5 s ago).
async fn ok_when_healthy(c: &Cluster, args: &[&str]) -> String {
    retry_unhealthy(|| c.etcdctl(), args).await
}

/// [`ok_when_healthy`] through member `i` only.
async fn ok_when_healthy_for(c: &Cluster, i: usize, args: &[&str]) -> String {
    retry_unhealthy(|| c.etcdctl_for(i), args).await
}

async fn retry_unhealthy(command: impl Fn() -> std::process::Command, args: &[&str]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = etcdctl_with(command(), args, None).await;
        if out.code == Some(0) {
            assert_eq!(out.stderr, "", "etcdctl {args:?}");
            return out.stdout;
        }
        assert!(
            out.error_line() == "Error: etcdserver: unhealthy cluster" && Instant::now() < deadline,
            "etcdctl {args:?}: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The current revision (the header of a read that matches nothing).
async fn revision(c: &Cluster) -> i64 {
    let got = json(c, &["get", "revision-probe"]).await;
    got["header"]["revision"].as_i64().expect("revision")
}

/// `lease grant <requested>`, checking the exact output (etcd raises a TTL below its minimum,
/// 2 s with the default election timeout, to that minimum); returns the id as etcdctl prints it.
async fn grant(c: &Cluster, requested: u64, ttl: u64) -> String {
    let text = ok(c, &["lease", "grant", &requested.to_string()]).await;
    let id = text
        .strip_prefix("lease ")
        .and_then(|s| s.strip_suffix(&format!(" granted with TTL({ttl}s)\n")))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "lease ids print as %016x: {text:?}"
    );
    assert_ne!(id, "0000000000000000");
    id.to_owned()
}

/// Asserts a reply header: `revision`, and non-zero ids and term.
fn assert_header(got: &Value, revision: i64) {
    let header = &got["header"];
    assert_eq!(header["revision"], revision, "{got}");
    assert!(
        header["cluster_id"].as_u64().is_some_and(|v| v > 0),
        "{got}"
    );
    assert!(header["member_id"].as_u64().is_some_and(|v| v > 0), "{got}");
    assert!(header["raft_term"].as_u64().is_some_and(|v| v > 0), "{got}");
}

/// The reply without its header.
fn without_header(mut got: Value) -> Value {
    got.as_object_mut().expect("an object").remove("header");
    got
}

/// The header's field names, sorted.
fn header_fields(got: &Value) -> Vec<String> {
    let mut fields: Vec<String> = got["header"]
        .as_object()
        .expect("a header")
        .keys()
        .cloned()
        .collect();
    fields.sort();
    fields
}

/// A key-value pair as etcdctl's JSON prints it (key and value base64, no lease field).
fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Value {
    json!({
        "key": b64(key),
        "create_revision": create,
        "mod_revision": modified,
        "version": version,
        "value": b64(value),
    })
}

/// Standard base64 with padding, as Go's encoding/json prints `[]byte`.
fn b64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The server version must look like an etcd 3.4+ version (clients such as Cilium check it).
fn assert_etcd_version(version: &str) {
    let parts: Vec<u32> = version
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("version {version:?}")))
        .collect();
    assert!(
        parts.len() == 3 && parts[0] == 3 && parts[1] >= 4,
        "version {version:?} is not etcd 3.4+"
    );
    if Flavor::from_env("").is_etcd() {
        assert_eq!(version, "3.4.23");
    }
}

/// One member as `member list` shows it.
#[derive(Debug, Clone)]
struct Listed {
    id: u64,
    /// Empty until the member has started.
    name: String,
    peer: String,
    /// `None` until the member has started.
    client: Option<String>,
}

async fn started_member(c: &Cluster, i: usize) -> Listed {
    let config = c.member_config(i);
    Listed {
        id: c.member_id(i).await.expect("member id"),
        name: config.name.clone(),
        peer: config.peer_url(),
        client: Some(config.client_url()),
    }
}

/// `member list` text for `members` (sorted by id, as etcd lists them).
fn member_list_text(members: &[Listed]) -> String {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|m| m.id);
    sorted
        .iter()
        .map(|m| {
            format!(
                "{:x}, {}, {}, {}, {}, false\n",
                m.id,
                if m.client.is_some() {
                    "started"
                } else {
                    "unstarted"
                },
                m.name,
                m.peer,
                m.client.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// `member list -w json` `members` for `members`; an unstarted member has no name and no
/// client URLs (empty fields are omitted).
fn member_list_json(members: &[Listed]) -> Value {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|m| m.id);
    Value::Array(
        sorted
            .iter()
            .map(|m| {
                let mut entry = json!({"ID": m.id, "peerURLs": [m.peer]});
                if let Some(client) = &m.client {
                    entry["name"] = json!(m.name);
                    entry["clientURLs"] = json!([client]);
                }
                entry
            })
            .collect(),
    )
}

/// A running `etcdctl watch`, read line by line.
struct Watch {
    args: Vec<String>,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Watch {
    fn spawn(c: &Cluster, args: &[&str]) -> Watch {
        let mut command = tokio::process::Command::from(c.etcdctl());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("etcdctl watch starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Watch {
            args: args.iter().map(|a| a.to_string()).collect(),
            child,
            stdout,
        }
    }

    /// The next line, or `None` if `deadline` passes first.
    async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Some(line),
            Ok(Ok(None)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        pipe.read_to_string(&mut stderr),
                    )
                    .await;
                }
                panic!("etcdctl {:?} exited; stderr: {stderr}", self.args)
            }
            Ok(Err(e)) => panic!("reading etcdctl {:?}: {e}", self.args),
            Err(_) => None,
        }
    }

    /// The next `n` lines, within [`PATIENCE`].
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next_line(deadline).await {
                Some(line) => got.push(line),
                None => panic!(
                    "etcdctl {:?}: {n} lines expected within {PATIENCE:?}, got {got:?}",
                    self.args
                ),
            }
        }
        got
    }

    /// For `-w json`: reads responses until `n` events arrived; returns the events.
    async fn json_events(&mut self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        let mut events = Vec::new();
        while events.len() < n {
            let line = self
                .next_line(deadline)
                .await
                .unwrap_or_else(|| panic!("{n} events expected, got {events:?}"));
            let response: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            let batch = response["Events"].as_array().expect("Events");
            let revision = response["Header"]["revision"].as_i64().expect("revision");
            for event in batch {
                // A response's header revision is never behind its events.
                assert!(
                    event["kv"]["mod_revision"].as_i64().unwrap() <= revision,
                    "{response}"
                );
            }
            events.extend(batch.iter().cloned());
        }
        assert_eq!(events.len(), n, "{events:?}");
        events
    }

    /// Makes sure the watch (started without `--rev`) is established: puts `key` = 1, 2, … until
    /// the watch reports one, then consumes every report up to the last put. Afterwards the next
    /// line is the first event after the sync.
    async fn sync(&mut self, c: &Cluster, key: &str) {
        let deadline = Instant::now() + PATIENCE;
        let mut last = 0;
        let mut first = None;
        while first.is_none() {
            assert!(
                Instant::now() < deadline,
                "watch {:?} never started",
                self.args
            );
            last += 1;
            ok(c, &["put", key, &last.to_string()]).await;
            first = self
                .next_line(Instant::now() + Duration::from_millis(300))
                .await;
        }
        let mut line = first.expect("set above");
        loop {
            assert_eq!(line, "PUT", "sync event");
            let event = self.lines(2).await;
            assert_eq!(event[0], key, "sync event");
            if event[1] == last.to_string() {
                return;
            }
            line = self.lines(1).await.remove(0);
        }
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("etcdctl watch is killed");
    }
}
