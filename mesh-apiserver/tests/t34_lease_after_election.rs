//! A member just elected answers lease requests from the state it has applied, so it first
//! applies everything its predecessor committed: a keep-alive for a lease granted just before
//! the election finds the lease (it once answered "requested lease not found" in the lab's
//! isolated-leader test).
//!
//! The test runs the `fault-injection` build of mesh-apiserver (`scripts/test` builds it into
//! `target/fault-injection/`): a file in a member's snapshot directory holds its state machine's
//! applies back while its log takes entries. Raftmesh-only: etcd has no such fault
//! (`.config/nextest.toml` leaves the binary out against etcd).

#[path = "support/util.rs"]
mod util;

use std::time::Duration;

use util::{assert_logged, connect, eventually, logged, start_with_faults};

/// The fault file (`kvstore::fault::HOLD_APPLY_FILE`).
const HOLD_APPLY: &str = "fault-hold-apply";
/// The lease's TTL, in seconds.
const TTL: i64 = 60;
/// What a member logs when a lease request waits for its applies.
const WAITING: &str = "a lease request waits until this member has applied";
/// Bound on the wait for it.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_renews_a_lease_granted_before_it_applied_the_grant() {
    let (cluster, leader, _turn) =
        start_with_faults("the fault-injection build's held applies").await;
    let next = (leader + 1) % 3;

    // `next` takes the grant into its log but does not apply it.
    let hold = cluster
        .member_config(next)
        .data_dir
        .join("snap")
        .join(HOLD_APPLY);
    std::fs::write(&hold, b"").unwrap();
    let mut client = connect(&cluster.client_url(leader)).await.unwrap();
    let lease = client.lease_grant(TTL, None).await.unwrap().id();
    let next_id = cluster.member_id(next).await.unwrap();
    client
        .maintenance_client()
        .move_leader(next_id)
        .await
        .expect("the leadership moves to the member whose applies are held");
    assert_logged(
        &cluster,
        next,
        "test fault: holding the state machine's applies",
        "the fault did not happen",
    );

    // A keep-alive at the new leader waits for the grant to be applied.
    let mut at_next = connect(&cluster.client_url(next)).await.unwrap();
    let renewal = tokio::spawn(async move {
        let (mut keeper, mut answers) = at_next.lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        answers.message().await
    });
    // It reached the new leader and waits there (the member says so once it has waited 100 ms).
    eventually(
        "the keep-alive waiting at the new leader",
        PATIENCE,
        async || {
            if renewal.is_finished() {
                return Ok(None);
            }
            anyhow::ensure!(logged(&cluster, next, WAITING), "not yet");
            Ok(Some(()))
        },
    )
    .await
    .unwrap_or_else(|| panic!("the new leader answered before applying the grant"));
    assert!(
        !renewal.is_finished(),
        "the new leader answered before applying the grant: {:?}",
        renewal.await
    );
    std::fs::remove_file(&hold).unwrap();
    let answer = renewal
        .await
        .unwrap()
        .expect("the keep-alive is answered")
        .expect("one answer");
    assert_eq!(answer.ttl(), TTL, "the new leader did not find the lease");
}
