//! Durability under crashes: no acknowledged write is lost when the leader is killed mid-load,
//! when every member is killed at once, or when a follower comes back after the log it missed
//! was snapshotted and purged; a new member catches up the same way.
//!
//! Runs against etcd with `RAFTMESH_TEST_SERVER=etcd`. The tests share the two cores badly, so
//! they take turns ([`util::exclusive`]).

#[path = "support/util.rs"]
mod util;

use std::time::Duration;

use etcd_client::PutOptions;
use testkit::localcluster::{Cluster, Spec};
use tokio::time::Instant;
use util::{
    Writers, check_acks_in, connect, current_revision, eventually, exclusive, flavor, read_prefix,
    restart_together,
};

/// Writers in the leader-kill test.
const WRITERS: usize = 4;
/// Puts acknowledged before the leader is killed (about a second of load).
const ACKS_BEFORE_KILL: usize = 200;
/// Puts that must be acknowledged after the kill, sent after it.
const ACKS_AFTER_KILL: usize = 200;
/// Bound on each phase of writing.
const WRITE_PATIENCE: Duration = Duration::from_secs(60);
/// Bound on a member catching up or a cluster recovering.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(60);

/// kill -9 of the leader while four writers put unique keys through every member: another
/// member becomes leader, writes sent after the kill are acknowledged, every acknowledged put
/// reads back (linearizable, from each survivor) with its value at its acknowledged revision, and
/// the killed member serves them all once restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_during_writes_loses_no_acknowledged_write() {
    let _turn = exclusive().await;
    let mut cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .expect("cluster starts");
    let old_leader = cluster.leader().await.unwrap();

    let writers = Writers::start(&cluster.client_urls(), WRITERS, "k-", None);
    writers
        .wait_for("acks before the kill", WRITE_PATIENCE, |n| {
            n >= ACKS_BEFORE_KILL
        })
        .await;
    let killed_at = Instant::now();
    cluster.kill(old_leader);
    let acked_at_kill = writers.acked();
    writers
        .wait_for("acks after the kill", WRITE_PATIENCE, |n| {
            n >= acked_at_kill + 2 * ACKS_AFTER_KILL
        })
        .await;
    let failed = writers.failed();
    let acks = writers.finish().await;
    let after_kill = acks.iter().filter(|a| a.sent > killed_at).count();
    eprintln!(
        "{} puts acknowledged ({after_kill} sent after the kill), {failed} failed",
        acks.len()
    );
    assert!(
        after_kill >= ACKS_AFTER_KILL,
        "only {after_kill} puts sent after the kill were acknowledged"
    );

    let new_leader = cluster.leader().await.unwrap();
    assert_ne!(new_leader, old_leader, "the killed member is still leader");
    let last_acked = acks.last().unwrap().revision;
    for member in (0..3).filter(|&m| m != old_leader) {
        let mut client = connect(&cluster.client_url(member)).await.unwrap();
        let snapshot = read_prefix(&mut client, "k-", false).await.unwrap();
        assert!(snapshot.revision >= last_acked);
        check_acks_in(&snapshot, &acks)
            .unwrap_or_else(|e| panic!("linearizable read from member {member}: {e:#}"));
    }

    cluster.restart(old_leader).await.unwrap();
    let mut client = connect(&cluster.client_url(old_leader)).await.unwrap();
    eventually(
        "the restarted member serves every acknowledged put",
        CATCH_UP_PATIENCE,
        async || {
            let snapshot = read_prefix(&mut client, "k-", true).await?;
            check_acks_in(&snapshot, &acks)
        },
    )
    .await;
}

/// kill -9 of every member at once, then restart of all: every acknowledged put is intact at its
/// revision, the revision is exactly what it was before the crash (a restart writes nothing), and
/// a 600 s lease with an attached key is still listed, alive and attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_kill_keeps_writes_revision_and_leases() {
    let _turn = exclusive().await;
    let mut cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .expect("cluster starts");
    let mut client = connect(&cluster.client_url(0)).await.unwrap();
    let lease = client.lease_grant(600, None).await.unwrap().id();
    let options = PutOptions::new().with_lease(lease);
    client
        .put("leased", "held by a lease", Some(options))
        .await
        .unwrap();

    let writers = Writers::start(&cluster.client_urls(), 8, "k-", Some(500));
    writers
        .wait_for("500 acks", WRITE_PATIENCE, |n| n >= 500)
        .await;
    let acks = writers.finish().await;
    let before = current_revision(&mut client).await.unwrap();
    let last = acks.last().unwrap().clone();
    assert_eq!(before, last.revision, "only the writers wrote");

    for member in 0..3 {
        cluster.kill(member);
    }
    restart_together(&mut cluster, &[0, 1, 2]).await.unwrap();

    for member in 0..3 {
        let mut client = connect(&cluster.client_url(member)).await.unwrap();
        let snapshot = eventually(
            "a linearizable read after the restart",
            CATCH_UP_PATIENCE,
            async || read_prefix(&mut client, "k-", false).await,
        )
        .await;
        assert_eq!(
            snapshot.revision, before,
            "member {member}: revision after restart"
        );
        check_acks_in(&snapshot, &acks).unwrap_or_else(|e| panic!("member {member}: {e:#}"));
        assert_eq!(snapshot.entries[&last.key].mod_revision, last.revision);
        assert_eq!(snapshot.entries.len(), acks.len(), "unexpected keys");

        let leases = client.leases().await.unwrap();
        let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
        assert_eq!(ids, [lease], "member {member}: leases after restart");
        let options = etcd_client::LeaseTimeToLiveOptions::new().with_keys();
        let ttl = client
            .lease_time_to_live(lease, Some(options))
            .await
            .unwrap();
        assert!(
            ttl.ttl() > 0 && ttl.ttl() <= 600,
            "member {member}: remaining TTL {}",
            ttl.ttl()
        );
        assert_eq!(ttl.granted_ttl(), 600);
        assert_eq!(ttl.keys(), [b"leased".to_vec()]);
        let leased = client.get("leased", None).await.unwrap();
        let kv = &leased.kvs()[0];
        assert_eq!(kv.value(), b"held by a lease");
        assert_eq!(kv.lease(), lease);
    }
}

/// Puts written while a follower is down: more than etcd keeps in its log after a snapshot
/// (`snapshotCatchUpEntries` = 5,000 in etcd 3.4), so with `--snapshot-count 100` the leader can
/// only catch the follower up by sending a snapshot.
const SNAPSHOT_WRITES: usize = 6_000;

/// Proves the test exercised what it is about: the member's log says it installed a snapshot
/// (etcd 3.4's wording, or kvstore's), rather than replaying the entries it missed.
/// Polls member `i` until its serializable read of the `s-` prefix has reached `expected`'s
/// revision, then asserts it holds exactly the same entries.
async fn assert_serves(cluster: &Cluster, i: usize, expected: &util::PrefixSnapshot, who: &str) {
    let mut client = connect(&cluster.client_url(i)).await.unwrap();
    let caught_up = eventually(
        &format!("{who} serves what the leader served"),
        CATCH_UP_PATIENCE,
        async || {
            let mine = read_prefix(&mut client, "s-", true).await?;
            anyhow::ensure!(
                mine.revision >= expected.revision,
                "at revision {} of {}",
                mine.revision,
                expected.revision
            );
            Ok(mine)
        },
    )
    .await;
    assert_eq!(caught_up.entries, expected.entries, "{who}");
}

fn assert_caught_up_by_snapshot(cluster: &Cluster, member: usize, is_etcd: bool) {
    let line = if is_etcd {
        "applied incoming snapshot"
    } else {
        "snapshot installed"
    };
    let log = cluster.log_tail(member, 2_000);
    assert!(
        log.contains(line),
        "member {member} was not caught up with a snapshot (no {line:?} in its log):\n{}",
        cluster.log_tail(member, 40)
    );
}

/// A follower killed while thousands of puts are written (with `--snapshot-count 100`, so the
/// log it missed is snapshotted and purged) serves exactly what the leader serves once
/// restarted, with serializable reads from its own state; then a fourth member added with
/// MemberAdd does the same and is listed by MemberList.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_and_new_member_catch_up_from_snapshot() {
    let _turn = exclusive().await;
    let spec = Spec {
        snapshot_count: Some(100),
        ..Spec::with_members(3)
    };
    let is_etcd = flavor().is_etcd();
    let mut cluster = Cluster::start(flavor(), spec)
        .await
        .expect("cluster starts");
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    cluster.kill(follower);

    let started = Instant::now();
    let writers = Writers::start(&cluster.client_urls(), 16, "s-", Some(SNAPSHOT_WRITES));
    writers
        .wait_for("the writes", 2 * WRITE_PATIENCE, |n| n >= SNAPSHOT_WRITES)
        .await;
    let acks = writers.finish().await;
    eprintln!(
        "{} puts acknowledged in {:?}",
        acks.len(),
        started.elapsed()
    );
    let mut leader_client = connect(&cluster.client_url(leader)).await.unwrap();
    let expected = read_prefix(&mut leader_client, "s-", false).await.unwrap();
    check_acks_in(&expected, &acks).unwrap();

    cluster.restart(follower).await.unwrap();
    assert_serves(&cluster, follower, &expected, "the restarted follower").await;
    assert_caught_up_by_snapshot(&cluster, follower, is_etcd);
    let added = cluster.add_member().await.unwrap();
    assert_serves(&cluster, added, &expected, "the added member").await;
    assert_caught_up_by_snapshot(&cluster, added, is_etcd);

    let added_id = cluster.member_id(added).await.unwrap();
    let list = leader_client.member_list().await.unwrap();
    assert_eq!(list.members().len(), 4, "{:?}", list.members());
    let member = list
        .members()
        .iter()
        .find(|m| m.id() == added_id)
        .expect("the added member is listed");
    assert_eq!(member.name(), cluster.member_config(added).name);
    assert_eq!(member.client_urls(), [cluster.client_url(added)]);
    assert!(!member.is_learner());
}
