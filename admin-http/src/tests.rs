use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

struct Server {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    healthy: Arc<AtomicBool>,
}

async fn start() -> Server {
    let mut registry = Registry::with_prefix("test");
    let counter = Counter::<u64>::default();
    counter.inc_by(7);
    registry.register("things", "Things seen", counter);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let health: HealthFn = Arc::new(move || {
        let ok = h.load(Ordering::Relaxed);
        Health {
            healthy: ok,
            body: format!("{{\"health\":\"{ok}\"}}\n"),
            content_type: "application/json",
        }
    });
    tokio::spawn(serve(
        listener,
        Arc::new(registry),
        health,
        stop.clone(),
        "test",
    ));
    Server {
        addr,
        stop,
        healthy,
    }
}

/// Sends `request` as written and reads the whole answer (the server closes after one).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn metrics_are_the_registry_in_openmetrics_text() {
    let s = start().await;
    let out = get(s.addr, "/metrics").await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{out}"
    );
    assert!(out.contains("\ntest_things_total 7\n"), "{out}");
    assert!(out.ends_with("# EOF\n"), "{out}");
    s.stop.cancel();
}

#[tokio::test]
async fn healthz_answers_what_the_binary_says_at_request_time() {
    let s = start().await;
    let out = get(s.addr, "/healthz").await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("{\"health\":\"true\"}\n"), "{out}");
    s.healthy.store(false, Ordering::Relaxed);
    let out = get(s.addr, "/healthz").await;
    assert!(
        out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{out}"
    );
    assert!(out.ends_with("{\"health\":\"false\"}\n"), "{out}");
}

#[tokio::test]
async fn other_paths_methods_and_oversized_heads_are_refused() {
    let s = start().await;
    assert!(
        get(s.addr, "/")
            .await
            .starts_with("HTTP/1.1 404 Not Found\r\n")
    );
    let out = raw(
        s.addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{out}"
    );
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(4 * MAX_HEAD)
    );
    let out = raw(s.addr, big.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{out}"
    );
    // The server still answers afterwards.
    assert!(
        get(s.addr, "/metrics")
            .await
            .starts_with("HTTP/1.1 200 OK\r\n")
    );
}

#[tokio::test]
async fn a_stopped_server_accepts_nothing_more() {
    let s = start().await;
    s.stop.cancel();
    // The accept loop ends and drops the listener: connecting is refused.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(s.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting after stop");
}
