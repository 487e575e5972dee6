//! Write sessions (`kvstore::session`): a write a follower forwards is applied once even when it
//! is sent twice.
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

use std::path::Path;
use std::time::Duration;

use etcd_client::PutOptions;
use testkit::localcluster::flavor::fault_injection_server;
use testkit::localcluster::{Cluster, Flavor, Spec};
use util::{connect, eventually, exclusive, raftmesh_only};

/// Bound on a write, a read or an election.
const PATIENCE: Duration = Duration::from_secs(30);
/// The fault file (`kvstore::fault::LOSE_ANSWER_FILE`).
const LOSE_ANSWER: &str = "fault-lose-answer";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_answer_is_lost_is_sent_again_and_applied_once() {
    raftmesh_only("the fault-injection build's lost answer");
    let _turn = exclusive().await;
    let server = fault_injection_server(Path::new(env!("CARGO_BIN_EXE_mesh-apiserver")));
    let cluster = Cluster::start(Flavor::Raftmesh(server), Spec::with_members(3))
        .await
        .expect("cluster starts");
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    // The leader switches sessions on once every member said it has them; each member logs
    // when it sees them on.
    eventually("write sessions on at the follower", PATIENCE, async || {
        let log = std::fs::read_to_string(cluster.log_path(follower))?;
        anyhow::ensure!(log.contains("write sessions are on"), "not yet");
        Ok(())
    })
    .await;

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
    let leader_log = std::fs::read_to_string(cluster.log_path(leader)).unwrap();
    assert!(
        leader_log.contains("test fault: the answer to a forwarded write is lost"),
        "{}",
        cluster.log_tail(leader, 30)
    );
    let follower_log = std::fs::read_to_string(cluster.log_path(follower)).unwrap();
    assert!(
        follower_log.contains("failed in transit"),
        "the follower never saw the failure:\n{}",
        cluster.log_tail(follower, 30)
    );

    // Applied once: the key has two versions (the first put and this one), the copy's answer is
    // the first application's (the previous value was 0, not 1), and nothing came after it.
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
