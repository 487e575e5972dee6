//! The server as a library: `mesh_apiserver::run` with listeners bound by the caller on port
//! 0, flags validated by `Config::validate`, serving until the shutdown future completes.
//! raftmesh only.

use std::time::Duration;

use clap::Parser;
use mesh_apiserver::config::{Config, Flags};
use mesh_apiserver::{Listeners, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_runs_in_process_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (c, p, m) = (
        client.local_addr().unwrap(),
        peer.local_addr().unwrap(),
        metrics.local_addr().unwrap(),
    );
    let flags = Flags::try_parse_from([
        "mesh-apiserver".to_owned(),
        "--insecure-plaintext".to_owned(),
        "--name=n1".to_owned(),
        format!("--data-dir={}", dir.path().display()),
        format!("--listen-client-urls=http://{c}"),
        format!("--advertise-client-urls=http://{c}"),
        format!("--listen-peer-urls=http://{p}"),
        format!("--initial-advertise-peer-urls=http://{p}"),
        format!("--initial-cluster=n1=http://{p}"),
        format!("--listen-metrics-urls=http://{m}"),
    ])
    .unwrap();
    let config = Config::validate(&flags).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(
        config,
        Listeners {
            client: vec![client],
            peer: vec![peer],
            metrics: vec![metrics],
            bootstrap: Vec::new(),
        },
        async {
            let _ = stop_rx.await;
        },
    ));

    let mut etcd = etcd_client::Client::connect([format!("http://{c}")], None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match etcd.put("k", "v", None).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = etcd.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");

    // The process's one registry, in the OpenMetrics text format.
    let mut tcp = tokio::net::TcpStream::connect(m).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("\nraftmesh_mvcc_keys 1\n"), "{body}");
    assert!(body.contains("raftmesh_raft_is_leader 1"), "{body}");
    let puts: f64 = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("raftmesh_grpc_request_duration_seconds_count{method=\"Put\"} ")
        })
        .unwrap_or_else(|| panic!("no Put latency in {body}"))
        .parse()
        .unwrap();
    assert!(puts >= 1.0, "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
    // The port is closed.
    assert!(tokio::net::TcpStream::connect(c).await.is_err());
}
