//! The admin port of raftmesh's binaries (mesh-apiserver's `--listen-metrics-urls`,
//! node-agent's `--listen-metrics`): `GET /metrics`, the process's one Prometheus registry in
//! the OpenMetrics text format, and `GET /healthz`, whatever the binary calls healthy
//! (ARCHITECTURE.md, "Metrics").
//!
//! HTTP/1.1 by hyper, one small server for both binaries, bounded so a scraper or a stray client
//! cannot hold resources: the request head must arrive within [`HEAD_TIMEOUT`] and fit in
//! [`MAX_HEAD`] bytes, at most [`MAX_CONNECTIONS`] are served at once (further ones wait in the
//! listen backlog), and a failed accept (out of file descriptors) pauses the loop rather than
//! spinning on it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8192;
/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` answers: a status and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// 200 when healthy, 503 when not.
    pub healthy: bool,
    /// The body (JSON or text, see `content_type`).
    pub body: String,
    /// The body's media type.
    pub content_type: &'static str,
}

/// Computes `/healthz` at request time.
pub type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

/// Serves `/metrics` and `/healthz` on `listener` until `stop` is cancelled; connections being
/// answered then finish on their own.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: HealthFn,
    stop: CancellationToken,
    what: &'static str,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(stream) = accept(&listener, &stop, what).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &registry, &health);
                async move { Ok::<_, Infallible>(answer) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, listener = what, "connection ended with an error");
            }
            drop(slot);
        });
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
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

fn answer(
    req: &Request<Incoming>,
    registry: &Registry,
    health: &HealthFn,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics or /healthz\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        "/healthz" | "/health" => {
            let h = health();
            let code = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, h.content_type, h.body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests;
