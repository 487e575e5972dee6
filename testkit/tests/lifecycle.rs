//! The harness itself, against the real etcd (`RAFTMESH_ETCD_BIN`, default `/usr/bin/etcd`):
//! readiness, kill, pause, restart, membership changes, failure reports and cleanup.

use std::net::TcpStream;
use std::path::PathBuf;

use etcd_client::GetOptions;
use testkit::localcluster::{Cluster, Flavor, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn etcd() -> Flavor {
    Flavor::Etcd(
        std::env::var_os("RAFTMESH_ETCD_BIN")
            .map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from),
    )
}

async fn get(c: &Cluster, i: usize, key: &str) -> Option<String> {
    let mut client = c.client_for(i).await.unwrap();
    let reply = client.get(key, None).await.unwrap();
    reply
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_owned())
}

#[tokio::test]
async fn kill_pause_and_restart() {
    let mut c = Cluster::start(etcd(), Spec::default()).await.unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c.client_urls().len(), 3);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(c.member_id(i).await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "member ids are distinct");

    let mut client = c.client().await.unwrap();
    client.put("k", "1", None).await.unwrap();

    // Killing the leader: the others elect a new one and keep serving.
    let leader = c.leader().await.unwrap();
    c.kill(leader);
    assert!(!c.is_serving(leader));
    assert_eq!(c.client_urls().len(), 2);
    assert!(!c.client_urls().contains(&c.client_url(leader)));
    let new_leader = c.leader().await.unwrap();
    assert_ne!(new_leader, leader);
    let mut client = c.client().await.unwrap();
    client.put("k", "2", None).await.unwrap();

    // Restarting it: same data dir and ports, it catches up.
    c.restart(leader).await.unwrap();
    assert!(c.is_serving(leader));
    assert_eq!(get(&c, leader, "k").await.as_deref(), Some("2"));
    assert!(
        c.log_tail(leader, 1000)
            .contains("=== localcluster: restarting")
    );
    assert_eq!(c.member_id(leader).await.unwrap(), {
        let mut client = c.client_for(leader).await.unwrap();
        client.status().await.unwrap().header().unwrap().member_id()
    });

    // Pausing a member: it is left out of clients and etcdctl until resumed.
    let paused = (new_leader + 1) % 3;
    c.pause(paused);
    assert!(!c.is_serving(paused));
    assert_eq!(c.client_urls().len(), 2);
    let mut client = c.client().await.unwrap();
    client.put("k", "3", None).await.unwrap();
    let out = c.etcdctl().args(["get", "k"]).output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "k\n3\n");
    c.resume(paused);
    assert!(c.is_serving(paused));
    assert_eq!(get(&c, paused, "k").await.as_deref(), Some("3"));
    let out = c.etcdctl_for(paused).args(["get", "k"]).output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "k\n3\n");
}

#[tokio::test]
async fn add_and_remove_members() {
    let mut c = Cluster::start(etcd(), Spec::default()).await.unwrap();
    let mut client = c.client().await.unwrap();
    client.put("before", "add", None).await.unwrap();

    let added = c.add_member().await.unwrap();
    assert_eq!((added, c.len()), (3, 4));
    assert_eq!(c.member_config(added).name, "n4");
    assert_eq!(get(&c, added, "before").await.as_deref(), Some("add"));
    let mut client = c.client().await.unwrap();
    let names: Vec<String> = {
        let mut names: Vec<String> = client
            .member_list()
            .await
            .unwrap()
            .members()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names, ["n1", "n2", "n3", "n4"]);

    let removed_id = c.member_id(0).await.unwrap();
    c.remove_member(0).await.unwrap();
    assert!(!c.is_serving(0));
    assert_eq!(c.client_urls().len(), 3);
    let mut client = c.client().await.unwrap();
    let members = client.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
    assert!(members.members().iter().all(|m| m.id() != removed_id));
    client.put("after", "remove", None).await.unwrap();
    let err = c.restart(0).await.unwrap_err();
    assert_eq!(err.to_string(), "member n1 was removed from the cluster");
}

#[tokio::test]
async fn metrics_url_serves_http() {
    let c = Cluster::start(
        etcd(),
        Spec {
            members: 1,
            metrics: true,
            ..Spec::default()
        },
    )
    .await
    .unwrap();
    let url = c.metrics_url(0).expect("a metrics url");
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut reply),
    )
    .await
    .expect("metrics answer")
    .unwrap();
    assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply:.200}");
    assert!(reply.contains("\netcd_server_has_leader 1\n"));
}

#[tokio::test]
async fn a_member_that_exits_is_reported_with_its_log() {
    let spec = Spec {
        members: 1,
        extra_args: vec!["--no-such-flag".into()],
        ..Spec::default()
    };
    let err = Cluster::start(etcd(), spec).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(err.starts_with("member n1 (http://127.0.0.1:"), "{err}");
    assert!(
        err.contains("exited (exit status: 2) before serving"),
        "{err}"
    );
    assert!(
        err.contains("flag provided but not defined: -no-such-flag"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_binary_is_an_error() {
    let err = Cluster::start(
        Flavor::Raftmesh("/nonexistent/mesh-apiserver".into()),
        Spec::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "server binary /nonexistent/mesh-apiserver does not exist"
    );
}

#[tokio::test]
async fn drop_kills_every_member() {
    let c = Cluster::start(etcd(), Spec::default()).await.unwrap();
    let addrs: Vec<String> = c
        .client_urls()
        .iter()
        .map(|u| u.strip_prefix("http://").unwrap().to_owned())
        .collect();
    for addr in &addrs {
        TcpStream::connect(addr).expect("a member listens");
    }
    drop(c);
    for addr in &addrs {
        assert!(
            TcpStream::connect(addr).is_err(),
            "{addr} still listens after drop"
        );
    }
}

#[tokio::test]
async fn clients_see_every_member() {
    let c = Cluster::start(etcd(), Spec::default()).await.unwrap();
    let mut client = c.client().await.unwrap();
    client.put("x/1", "a", None).await.unwrap();
    for i in 0..3 {
        let mut client = c.client_for(i).await.unwrap();
        let reply = client
            .get("x/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(reply.count(), 1, "member {i}");
    }
}
