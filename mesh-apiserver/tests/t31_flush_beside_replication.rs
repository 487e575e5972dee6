//! The leader's log flush runs beside replication (`vendor/openraft/RAFTMESH-PATCH.md`), and
//! that costs no acknowledged write whichever single member loses its unflushed tail.
//!
//! The tests run the `fault-injection` build of mesh-apiserver (`scripts/test` builds it into
//! `target/fault-injection/`): a file in a member's Raft log directory holds its log's flushes
//! back, another holds back what follows a flush (the acknowledgement), and another makes the
//! log lose what it had not flushed when it is next opened, as a power loss would (a SIGKILL
//! alone loses nothing: the page cache survives it). Raftmesh-only:
//! etcd has no such faults (`.config/nextest.toml` leaves the binary out against etcd).

#[path = "support/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::GetOptions;
use testkit::localcluster::Cluster;
use util::{assert_logged, connect, eventually, start_with_faults};

/// Bound on a write, a read, an election or a catch-up.
const PATIENCE: Duration = Duration::from_secs(30);
/// The fault files (`kvstore::fault`).
const HOLD_FLUSH: &str = "fault-hold-flush";
const HOLD_ACK: &str = "fault-hold-ack";
const LOSE_UNSYNCED: &str = "fault-lose-unsynced";

/// A 3-member cluster of the fault-injection build of mesh-apiserver, its leader, and the
/// turn that keeps other cluster tests off the cores meanwhile.
async fn start() -> (Cluster, usize, tokio::sync::MutexGuard<'static, ()>) {
    start_with_faults("the fault-injection build's log faults").await
}

/// Member `i`'s Raft log directory.
fn log_dir(cluster: &Cluster, i: usize) -> PathBuf {
    cluster.member_config(i).data_dir.join("raft")
}

fn touch(path: &Path) {
    std::fs::write(path, b"").unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
}

/// Puts `key` through member `i` and returns the revision it was acknowledged at.
async fn put_through(cluster: &Cluster, i: usize, key: &str, value: &str) -> i64 {
    eventually(&format!("{key} acknowledged"), PATIENCE, async || {
        let mut client = connect(&cluster.client_url(i)).await?;
        let resp = client.put(key, value, None).await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    })
    .await
}

/// Waits until member `i` serves `key` with `value` (a serializable read of its own copy).
async fn served_by(cluster: &Cluster, i: usize, key: &str, value: &str) {
    eventually(&format!("member {i} serves {key}"), PATIENCE, async || {
        let mut client = connect(&cluster.client_url(i)).await?;
        let resp = client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await?;
        match resp.kvs().first() {
            Some(kv) if kv.value() == value.as_bytes() => Ok(()),
            other => anyhow::bail!("{key} is {other:?}"),
        }
    })
    .await;
}

/// Kills member `i` with its flush held, makes its log lose the unflushed tail, restarts it,
/// and checks that it did lose something (so the test is not passing without the fault).
async fn crash_losing_the_tail(cluster: &mut Cluster, i: usize) {
    let dir = log_dir(cluster, i);
    touch(&dir.join(LOSE_UNSYNCED));
    cluster.kill(i);
    std::fs::remove_file(dir.join(HOLD_FLUSH)).unwrap();
    cluster.restart(i).await.expect("the member restarts");
    assert_logged(
        cluster,
        i,
        "test fault: the Raft log loses its unflushed tail",
        "restarted without losing anything: the fault did not happen",
    );
}

/// With the leader's flush held, a write is acknowledged all the same (its followers' flushes
/// make the quorum): the leader's flush is off the write's critical path. Without the patch,
/// openraft 0.9 replicates only after the leader's flush, and this write never completes.
/// The leader, killed and restarted without its unflushed tail, serves the write again once
/// it has caught up, and so does every other member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_commits_while_the_leaders_flush_is_held_and_survives_losing_it() {
    let (mut cluster, leader, _turn) = start().await;
    // A write before the hold, so the log has a durable part to fall back to.
    put_through(&cluster, leader, "before", "1").await;
    touch(&log_dir(&cluster, leader).join(HOLD_FLUSH));

    let revision = put_through(&cluster, leader, "held", "2").await;
    assert!(revision > 0);
    for i in 0..3 {
        served_by(&cluster, i, "held", "2").await;
    }

    crash_losing_the_tail(&mut cluster, leader).await;
    for i in 0..3 {
        served_by(&cluster, i, "held", "2").await;
        served_by(&cluster, i, "before", "1").await;
    }
    // A linearizable read through the restarted member, and a write after it.
    let got = eventually("a linearizable read through it", PATIENCE, async || {
        let mut client = connect(&cluster.client_url(leader)).await?;
        Ok(client.get("held", None).await?)
    })
    .await;
    assert_eq!(got.kvs()[0].value(), b"2");
    put_through(&cluster, leader, "after", "3").await;
    for i in 0..3 {
        served_by(&cluster, i, "after", "3").await;
    }
}

/// The same for a follower: with its flush held, writes commit through the leader and the
/// other follower; killed and restarted without its unflushed tail, it catches up and serves
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_loses_its_unflushed_tail_loses_no_acknowledged_write() {
    let (mut cluster, leader, _turn) = start().await;
    let follower = (leader + 1) % 3;
    put_through(&cluster, leader, "before", "1").await;
    served_by(&cluster, follower, "before", "1").await;
    touch(&log_dir(&cluster, follower).join(HOLD_FLUSH));

    for n in 0..10 {
        put_through(&cluster, leader, &format!("held-{n}"), "2").await;
    }
    crash_losing_the_tail(&mut cluster, follower).await;
    for i in 0..3 {
        for n in 0..10 {
            served_by(&cluster, i, &format!("held-{n}"), "2").await;
        }
    }
}

/// kill -9 between flush and acknowledgement: both followers flush a write but do not
/// acknowledge it, so it is not committed and its client gets no answer; the leader is killed.
/// The write is on a majority's disks, so whichever follower becomes leader has it and commits
/// it: every member, the restarted old leader too, serves it, and the cluster takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flushed_by_a_majority_but_never_acknowledged_is_kept_after_the_leader_dies() {
    let (mut cluster, leader, _turn) = start().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    put_through(&cluster, leader, "before", "1").await;
    for &f in &followers {
        served_by(&cluster, f, "before", "1").await;
        touch(&log_dir(&cluster, f).join(HOLD_ACK));
    }
    let mut client = connect(&cluster.client_url(leader)).await.unwrap();
    let unanswered = client.put("unanswered", "2", None).await;
    assert!(
        unanswered.is_err(),
        "the put was acknowledged with no follower acknowledging it: {unanswered:?}"
    );
    cluster.kill(leader);
    for &f in &followers {
        std::fs::remove_file(log_dir(&cluster, f).join(HOLD_ACK)).unwrap();
    }
    for &f in &followers {
        assert_logged(
            &cluster,
            f,
            "test fault: holding back a flushed append's acknowledgement",
            "never held an acknowledgement back: the fault did not happen",
        );
    }
    cluster
        .restart(leader)
        .await
        .expect("the old leader restarts");
    for i in 0..3 {
        served_by(&cluster, i, "unanswered", "2").await;
    }
    let survivor = followers[0];
    put_through(&cluster, survivor, "after", "3").await;
    for i in 0..3 {
        served_by(&cluster, i, "after", "3").await;
    }
}
