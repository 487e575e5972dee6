//! `--listen-metrics-urls`: Prometheus metrics that reflect what the member did, and
//! `/healthz`. raftmesh only: the metric names are ours, not etcd's.

#[path = "support/util.rs"]
mod util;

use std::time::{Duration, Instant};

use testkit::localcluster::{Cluster, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::{flavor, raftmesh_only};

/// GET `path` from `url` (http://host:port); returns (status line, body).
async fn get(url: &str, path: &str) -> (String, String) {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to metrics port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut raw))
        .await
        .expect("metrics answer within 5 s")
        .expect("read answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head and body");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of an unlabeled sample, or of the sample with exactly `labels`.
fn sample(body: &str, name_and_labels: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{body}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn metrics_reflect_writes_and_healthz_reports_leader() {
    raftmesh_only("raftmesh metrics are not etcd's");
    let spec = Spec {
        metrics: true,
        ..Spec::default()
    };
    let c = Cluster::start(flavor(), spec)
        .await
        .expect("cluster starts");
    let leader = c.leader().await.expect("a leader");
    let url = c.metrics_url(leader).expect("metrics URL");

    let mut client = c.client_for(leader).await.expect("client");
    for i in 0..5 {
        client.put(format!("m/{i}"), "v", None).await.expect("put");
    }

    // Metrics are read after the puts returned, so the counts are exact.
    let (status, body) = get(&url, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&body, "raftmesh_raft_is_leader"), 1.0);
    assert!(sample(&body, "raftmesh_raft_term") >= 1.0);
    assert_eq!(
        sample(&body, "raftmesh_mvcc_revision"),
        6.0,
        "revision 1 + 5 puts"
    );
    assert_eq!(sample(&body, "raftmesh_mvcc_keys"), 5.0);
    assert_eq!(
        sample(
            &body,
            "raftmesh_grpc_request_duration_seconds_count{method=\"Put\"}"
        ),
        5.0
    );
    assert!(sample(&body, "raftmesh_db_size_bytes") > 0.0);
    assert!(sample(&body, "raftmesh_log_flushes_total") >= 1.0);

    // Every member reports healthy once it knows the leader.
    for i in 0..c.len() {
        let url = c.metrics_url(i).expect("metrics URL");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = get(&url, "/healthz").await;
            if status == "HTTP/1.1 200 OK" {
                assert_eq!(body, "{\"health\":\"true\"}\n");
                break;
            }
            assert!(Instant::now() < deadline, "member {i}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, _) = get(&url, "/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
