//! The remote mirror's writes are fenced: two mirrors of one remote (a deposed leader's and
//! the new leader's) that both loaded the same status cannot both write; the one that writes
//! second is refused and must reload. raftmesh only (in-process sessions on a real store).

#[path = "support/util.rs"]
mod util;

use mesh_apiserver::mirror::Settings as MirrorSettings;
use mesh_apiserver::mirror::session::{Session, SessionError};
use mesh_apiserver::mirror::validate::Validator;
use mesh_apiserver::mirror::{MirrorMetrics, RemoteState};
use testkit::localcluster::{Cluster, Spec};
use util::{connect, flavor, raftmesh_only};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_mirror_with_a_stale_view_is_refused() {
    raftmesh_only("the mirror is raftmesh's; nothing to check against etcd");
    let cluster = Cluster::start(flavor(), Spec::with_members(1))
        .await
        .unwrap();
    let url = cluster.client_url(0);
    let validator = Validator::new("infra", 2, vec!["10.2.0.0/16".parse().unwrap()]);
    let settings = MirrorSettings {
        disconnect_grace: std::time::Duration::from_secs(1),
        max_keys: 10,
        max_bytes: 1 << 20,
        write_bytes_per_minute: 1 << 20,
    };
    let (state, metrics) = (RemoteState::default(), MirrorMetrics::default());
    let load = async || {
        Session::load(
            "infra",
            &validator,
            settings,
            &state,
            &metrics,
            connect(&url).await.unwrap(),
        )
        .await
        .unwrap()
    };
    let mut old = load().await;
    let mut new = load().await;
    new.write_status(true).await.unwrap();
    match old.write_status(true).await {
        Err(SessionError::Fenced) => {}
        other => panic!("the stale mirror wrote: {other:?}"),
    }
    // After reloading it writes again.
    let mut reloaded = load().await;
    reloaded.write_status(true).await.unwrap();
    match new.write_status(true).await {
        Err(SessionError::Fenced) => {}
        other => panic!("the now stale mirror wrote: {other:?}"),
    }
}
