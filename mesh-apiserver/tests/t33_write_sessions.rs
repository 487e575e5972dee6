//! Write sessions (`kvstore::session`): a write a follower forwards is applied once even when it
//! is sent twice: after the leader died with it on the wire, and after the leader's answer was
//! lost.
//!
//! The test runs the `fault-injection` build of mesh-apiserver (`scripts/test` builds it into
//! `target/fault-injection/`): a file in the leader's Raft log directory makes it lose its answer
//! to the next forwarded write after serving it, as a connection breaking on the way back would.
//! The follower cannot tell whether the write went through, so it sends it again; the state
//! machine recognises the copy by its number and answers it with the first application's reply.
//! Raftmesh-only: etcd has no such fault (`.config/nextest.toml` leaves the binary out against
//! etcd).

#[path = "support/util.rs"]
mod util;

use std::time::Duration;

use etcd_client::{Client, PutOptions, PutResponse};
use testkit::localcluster::Cluster;
use util::{assert_logged, connect, sessions_on, start_with_faults};

/// The fault file (`kvstore::fault::LOSE_ANSWER_FILE`).
const LOSE_ANSWER: &str = "fault-lose-answer";

/// A 3-member cluster of the fault-injection build, its leader and a follower that has seen
/// write sessions switched on, with the turn that keeps other cluster tests off the cores.
async fn start() -> (Cluster, usize, usize, tokio::sync::MutexGuard<'static, ()>) {
    let (cluster, leader, turn) =
        start_with_faults("write sessions and the fault-injection build").await;
    let follower = (leader + 1) % 3;
    // The leader switches sessions on once every member said it has them.
    sessions_on(&cluster, follower).await;
    (cluster, leader, follower, turn)
}

/// Checks that `put` of `k` = "1", sent through the follower after `k` held "0", was applied
/// once: `k` has two versions, the put's answer saw "0" before it (a second application would
/// have seen "1"), and nothing was applied after it.
async fn applied_once(client: &mut Client, put: &PutResponse) {
    let revision = put.header().unwrap().revision();
    assert_eq!(put.prev_key().map(|kv| kv.value()), Some(&b"0"[..]));
    let got = client.get("k", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(kv.value(), b"1");
    assert_eq!(kv.version(), 2, "the write was applied twice: {kv:?}");
    assert_eq!(kv.mod_revision(), revision);
    assert_eq!(
        got.header().unwrap().revision(),
        revision,
        "something applied after it"
    );
}

/// The race a sequential writer meets when the leader dies under it: a write the follower sent
/// reaches the leader's socket but is never read (the leader is stopped with SIGSTOP, then
/// killed, and its kernel resets the connection). The follower cannot tell that from a write
/// the leader took, so it sends it again to the next leader, which applies it once. Without
/// sessions it fails with `request timed out` (t32's election test met this under CI load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_its_way_to_a_leader_that_dies_is_applied_once_by_the_next() {
    let (mut cluster, leader, follower, _turn) = start().await;
    let mut client = connect(&cluster.client_url(follower)).await.unwrap();
    client.put("k", "0", None).await.unwrap();

    cluster.pause(leader);
    let mut writer = client.clone();
    let put = tokio::spawn(async move {
        writer
            .put("k", "1", Some(PutOptions::new().with_prev_key()))
            .await
    });
    // Long enough for the request to reach the stopped leader's socket, shorter than an
    // election timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(leader);
    let put = put
        .await
        .unwrap()
        .expect("the write on its way to the dead leader is applied by the next one");
    assert_logged(
        &cluster,
        follower,
        "failed in transit",
        "the follower's send did not fail in transit: the race did not happen",
    );
    applied_once(&mut client, &put).await;
}

/// The leader serves a forwarded write but its answer is lost on the way back: the follower
/// sends the write again and gets the first application's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_answer_is_lost_is_sent_again_and_applied_once() {
    let (cluster, leader, follower, _turn) = start().await;
    let mut client = connect(&cluster.client_url(follower)).await.unwrap();
    client.put("k", "0", None).await.unwrap();
    let lose = cluster
        .member_config(leader)
        .data_dir
        .join("raft")
        .join(LOSE_ANSWER);
    std::fs::write(&lose, b"").unwrap();
    let put = client
        .put("k", "1", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("the write whose answer was lost is sent again and answered");
    assert!(
        !lose.exists(),
        "the fault did not happen: the leader lost no answer"
    );
    assert_logged(
        &cluster,
        leader,
        "test fault: the answer to a forwarded write is lost",
        "lost no answer",
    );
    assert_logged(
        &cluster,
        follower,
        "failed in transit",
        "the follower never saw the failure",
    );

    // The copy's answer is the first application's (it saw 0, not 1).
    applied_once(&mut client, &put).await;
}
