//! `--listen-metrics-urls`: `/metrics` (the process's one Prometheus registry, in the
//! OpenMetrics text format) and `/healthz` (200 while the member knows a leader).
//!
//! A minimal HTTP/1.1 responder, one request per connection, with the request head bounded in
//! size and time: enough for scrapers and probes, with no framework behind it.

use std::sync::Arc;
use std::time::Duration;

use kvstore::node::Node;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest request head read.
const MAX_HEAD: usize = 4096;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/healthz` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    node: Arc<Node>,
    stop: CancellationToken,
) {
    while let Some(stream) = accept(&listener, &stop, "metrics").await {
        tokio::spawn(answer(stream, registry.clone(), node.clone()));
    }
}

/// The next connection on `listener`, or `None` once `stop` is cancelled. A failed accept
/// (out of file descriptors) is logged and retried after a pause.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

async fn answer(mut stream: TcpStream, registry: Arc<Registry>, node: Arc<Node>) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (code, body, ctype) = match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => (
                    "200 OK",
                    body,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                Err(e) => (
                    "500 Internal Server Error",
                    format!("encoding metrics: {e}\n"),
                    "text/plain",
                ),
            }
        }
        "/healthz" | "/health" => {
            if node.leader().is_some() {
                (
                    "200 OK",
                    "{\"health\":\"true\"}\n".to_owned(),
                    "application/json",
                )
            } else {
                (
                    "503 Service Unavailable",
                    "{\"health\":\"false\",\"reason\":\"no leader\"}\n".to_owned(),
                    "application/json",
                )
            }
        }
        _ => ("404 Not Found", "not found\n".to_owned(), "text/plain"),
    };
    let resp = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}
