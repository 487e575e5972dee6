//! The etcd operations surface, driven by etcdctl 3.4 with URL endpoints: snapshot save and a
//! restore into a fresh 3-member cluster (keys, revision, leases intact; a member added after
//! the restore gets the same state), defrag, hashkv equal on every member after 10k writes,
//! move-leader to a named member, endpoint status.
//!
//! Runs against etcd with `RAFTMESH_TEST_SERVER=etcd`, except the restore (etcd restores
//! offline with `etcdctl snapshot restore`; raftmesh with `mesh-apiserver --restore-from`).

#[path = "support/util.rs"]
mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::{GetOptions, PutOptions};
use serde_json::Value;
use testkit::localcluster::{Cluster, Spec};
use tokio::task::JoinSet;
use util::{connect, etcdctl_stdout as etcdctl, eventually, flavor, raftmesh_only};

async fn json(command: std::process::Command, args: &[&str]) -> Result<Value> {
    let mut with = args.to_vec();
    with.extend(["-w", "json"]);
    let out = etcdctl(command, &with).await?;
    // `endpoint` commands print one JSON array; others one object.
    Ok(serde_json::from_str(&out)?)
}

/// Every key as `get "" --from-key -w json` returns it: key → (value, create, mod, version,
/// lease), keys and values base64 as etcdctl prints them, with the header revision.
async fn everything(c: &Cluster) -> Result<(i64, BTreeMap<String, Value>)> {
    let v = json(c.etcdctl(), &["get", "", "--from-key"]).await?;
    let revision = v["header"]["revision"].as_i64().context("revision")?;
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    let mut map = BTreeMap::new();
    for mut kv in kvs {
        let key = kv["key"].as_str().context("key")?.to_owned();
        // The fields that must survive; etcdctl omits zero ones.
        let keep: serde_json::Map<String, Value> = [
            "value",
            "create_revision",
            "mod_revision",
            "version",
            "lease",
        ]
        .iter()
        .filter_map(|f| kv.get_mut(*f).map(|v| ((*f).to_owned(), v.take())))
        .collect();
        map.insert(key, Value::Object(keep));
    }
    Ok((revision, map))
}

/// Writes `n` keys `load/<i>` with 16 concurrent clients spread over the members.
async fn write_many(c: &Cluster, n: usize) -> Result<()> {
    let mut tasks = JoinSet::new();
    for t in 0..16 {
        let mut client = connect(&c.client_url(t % c.len())).await?;
        tasks.spawn(async move {
            for i in (t..n).step_by(16) {
                client
                    .put(format!("load/{i:05}"), format!("v{i}"), None)
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_restores_into_a_fresh_cluster() -> Result<()> {
    raftmesh_only("restoring is per server (etcdctl snapshot restore vs --restore-from)");
    let source = Cluster::start(flavor(), Spec::with_members(3)).await?;
    let mut client = connect(&source.client_url(0)).await?;
    write_many(&source, 500).await?;
    // History worth keeping: overwrites, deletes, a compaction, keys on a lease.
    for i in 0..50 {
        client.put(format!("load/{i:05}"), "again", None).await?;
    }
    client
        .delete(
            "load/0010",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    let lease = client.lease_grant(600, None).await?.id();
    for i in 0..3 {
        let opts = PutOptions::new().with_lease(lease);
        client.put(format!("leased/{i}"), "x", Some(opts)).await?;
    }
    let compact_at = client
        .get("load/00000", None)
        .await?
        .header()
        .context("h")?
        .revision();
    client.compact(compact_at, None).await?;
    let (revision, keys) = everything(&source).await?;
    let loaded = client
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup.db");
    let file_arg = file.to_string_lossy().into_owned();
    etcdctl(source.etcdctl_for(1), &["snapshot", "save", &file_arg]).await?;
    drop(source);

    let mut spec = Spec::with_members(3);
    spec.extra_args = vec!["--restore-from".into(), file_arg];
    let mut restored = Cluster::start(flavor(), spec).await?;
    let (revision_after, keys_after) = everything(&restored).await?;
    ensure!(
        revision_after == revision,
        "revision {revision_after}, saved at {revision}"
    );
    ensure!(keys_after == keys, "keys differ after the restore");
    let leases = etcdctl(restored.etcdctl(), &["lease", "list"]).await?;
    ensure!(
        leases.contains(&format!("{lease:x}")),
        "lease {lease:x} missing: {leases}"
    );
    let ttl = etcdctl(
        restored.etcdctl(),
        &["lease", "timetolive", &format!("{lease:x}"), "--keys"],
    )
    .await?;
    ensure!(
        ttl.contains("leased/0") && ttl.contains("leased/2"),
        "{ttl}"
    );
    // History from before the save is readable, compaction is kept.
    let mut c = connect(&restored.client_url(2)).await?;
    let old = c
        .get(
            "load/00001",
            Some(GetOptions::new().with_revision(compact_at)),
        )
        .await?;
    ensure!(
        old.kvs().len() == 1,
        "the history since compaction came back"
    );
    ensure!(
        c.get(
            "load/00001",
            Some(GetOptions::new().with_revision(compact_at - 1))
        )
        .await
        .is_err()
    );
    // Writes continue from the saved revision.
    let next = c
        .put("after", "restore", None)
        .await?
        .header()
        .context("h")?
        .revision();
    ensure!(
        next == revision + 1,
        "first write after the restore at {next}"
    );

    // A member added later gets the restored state too (by snapshot: the log no longer
    // holds the state before the first entry).
    let added = restored.add_member().await?;
    let mut fresh = connect(&restored.client_url(added)).await?;
    let (added_keys, _) = eventually(
        "the added member serves the restored keys",
        Duration::from_secs(30),
        async || {
            let r = fresh
                .get(
                    "load/",
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_serializable()
                            .with_count_only(),
                    ),
                )
                .await?;
            let n = r.count();
            let l = fresh
                .get(
                    "leased/",
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_serializable()
                            .with_count_only(),
                    ),
                )
                .await?
                .count();
            ensure!(n == loaded && l == 3, "{n} and {l} keys so far");
            Ok((n, l))
        },
    )
    .await;
    eprintln!(
        "restored {} keys at revision {revision}; the added member has {added_keys}",
        keys.len()
    );

    // A restored member restarted with the flag still set keeps its data.
    restored.kill(0);
    restored.restart(0).await?;
    let (_, keys_restart) = everything(&restored).await?;
    ensure!(
        keys_restart.len() == keys.len() + 1,
        "after a restart: {} keys",
        keys_restart.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_hashkv_move_leader_and_status_with_url_endpoints() -> Result<()> {
    let c = Cluster::start(flavor(), Spec::with_members(3)).await?;
    write_many(&c, 10_000).await?;
    let mut client = connect(&c.client_url(0)).await?;
    let revision = client
        .get("x", None)
        .await?
        .header()
        .context("h")?
        .revision();

    // Every member's HashKV at the same revision is the same.
    let rev = revision.to_string();
    let hashes = eventually(
        "every member hashes the same",
        Duration::from_secs(30),
        async || {
            let v = json(c.etcdctl(), &["endpoint", "hashkv", "--rev", &rev]).await?;
            let hashes: Vec<u64> = v
                .as_array()
                .context("array")?
                .iter()
                .map(|e| e["HashKV"]["hash"].as_u64().unwrap_or(0))
                .collect();
            ensure!(
                hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]),
                "{hashes:?}"
            );
            Ok(hashes)
        },
    )
    .await;
    eprintln!("hashkv at {revision}: {:#x} on all 3 members", hashes[0]);
    // A change changes it.
    client.put("load/00000", "changed", None).await?;
    let v = json(c.etcdctl_for(0), &["endpoint", "hashkv"]).await?;
    ensure!(
        v[0]["HashKV"]["hash"].as_u64() != Some(hashes[0]),
        "hash unchanged after a write"
    );

    // Defrag on every member (URL endpoints), then the data is still there.
    etcdctl(c.etcdctl(), &["defrag"]).await?;
    let count = client
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    ensure!(count == 10_000, "{count} keys after defrag");

    // Status with URL endpoints; move the leadership to a named member.
    let status = json(c.etcdctl(), &["endpoint", "status"]).await?;
    let members = status.as_array().context("array")?;
    ensure!(members.len() == 3, "{status}");
    let leader = members[0]["Status"]["leader"].as_u64().context("leader")?;
    let target = members
        .iter()
        .map(|m| m["Status"]["header"]["member_id"].as_u64().unwrap_or(0))
        .find(|id| *id != leader)
        .context("a follower")?;
    let out = etcdctl(c.etcdctl(), &["move-leader", &format!("{target:x}")]).await?;
    ensure!(out.contains("Leadership transferred"), "{out}");
    let status = json(c.etcdctl(), &["endpoint", "status"]).await?;
    for m in status.as_array().context("array")? {
        let seen = m["Status"]["leader"].as_u64();
        ensure!(
            seen == Some(target),
            "a member sees leader {seen:?}, not {target:x}"
        );
    }
    client.put("after-move", "x", None).await?;
    // Moving to a non-member is refused, changing nothing.
    let err = etcdctl(c.etcdctl(), &["move-leader", "abcdef"])
        .await
        .expect_err("bad transferee");
    ensure!(err.to_string().contains("bad leader transferee"), "{err}");
    Ok(())
}
