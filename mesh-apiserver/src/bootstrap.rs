//! `--listen-bootstrap-urls`: agents without a certificate get one here.
//!
//! An agent sends a ServiceAccount token bound to its pod and a certificate signing request
//! ([`mesh_api::bootstrap`]). The API server asks the Kubernetes API to review the token
//! (TokenReview, with the bootstrap audience), accepts only the ServiceAccounts it was told to
//! (`--bootstrap-service-account`), reads the node from the token (the node-name claim
//! Kubernetes adds to pod-bound tokens since 1.30; else the pod it is bound to, whose UID must
//! match), and signs an `agent` certificate named after that node over the request's key with
//! the cluster's CA (`--bootstrap-ca-key-file`). Nothing the request asks for besides its key
//! is used, so a token of one node never yields another node's certificate.
//!
//! HTTPS with the member's server certificate and no client certificate (the agents have
//! none yet), HTTP/1.1 by hyper, one request per connection, bounded like the metrics
//! endpoint: the TLS handshake must end within `READ_TIMEOUT` (10 s), and the request then
//! arrive within as long again, its head in at most `MAX_HEAD` bytes (32 KiB; hyper answers
//! 431 beyond) and its body in at most [`MAX_REQUEST`] (a 400 beyond, like any other refusal,
//! with an [`ErrorResponse`]); the Kubernetes API has another `READ_TIMEOUT` to review the
//! token. At most [`MAX_CONNECTIONS`] are in progress, and an eighth of that from
//! one source address; a new connection beyond either closes the oldest in progress
//! ([`kvstore::admission`], as on the client port), so idle sockets cannot hold the port shut
//! against agents — an attacker must keep opening connections faster than an agent completes
//! its exchange, and from many addresses.
//!
//! Decisions are functions of API objects ([`claim`], [`node_of_pod`]), tested on objects as
//! the API returns them; [`Kubernetes`] is the only part that talks to a cluster.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use certs::pki::{CertificateAuthority, LeafSpec, Validity};
use certs::tls::ServerTls;
use certs::{Identity, Role};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kvstore::admission::Admission;
use mesh_api::bootstrap::{
    AgentCertificateRequest, AgentCertificateResponse, ErrorResponse, MAX_REQUEST, PATH,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client has for its TLS handshake, and then for its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head (request line and headers) read: as large as the largest body.
const MAX_HEAD: usize = MAX_REQUEST;
/// Most connections in progress at once: the port takes clients without certificates, so a
/// flood of them must not grow without bound (nor turn into a flood of TokenReviews). Beyond
/// it the oldest is closed; agents retry.
pub const MAX_CONNECTIONS: usize = 256;
/// The token claim Kubernetes (1.30+) adds with the node a pod-bound token's pod runs on.
const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";
/// The claims of the pod a token is bound to.
const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_CLAIM: &str = "authentication.kubernetes.io/pod-uid";

/// A ServiceAccount allowed to bootstrap agents, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ServiceAccount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ServiceAccount {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err("expected NAMESPACE/NAME".to_owned()),
        }
    }
}

impl ServiceAccount {
    /// The user name Kubernetes gives its tokens.
    fn user_name(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// The validated bootstrap flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port` to listen on.
    pub listen: Vec<String>,
    /// The CA that signs agent certificates, and its key.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Who may bootstrap.
    pub service_accounts: Vec<ServiceAccount>,
    /// The audience tokens must be for.
    pub audience: String,
    /// How long an agent certificate is valid.
    pub validity: Duration,
}

/// What a reviewed token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The node its pod runs on, from the token itself.
    Node(String),
    /// The pod it is bound to; its node is read from the pod.
    Pod {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// Why a request is refused; each is an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the token is not valid: {0}")]
    Unauthenticated(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("cannot answer now: {0}")]
    Unavailable(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The metric label.
    fn outcome(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

/// What a token review says, as a claim of a node or a pod.
pub fn claim(
    status: &TokenReviewStatus,
    audience: &str,
    allowed: &[ServiceAccount],
) -> Result<Claim, Refusal> {
    if status.authenticated != Some(true) {
        return Err(Refusal::Unauthenticated(
            status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned()),
        ));
    }
    // An authenticator that does not know audiences answers none: the token is then one for
    // the Kubernetes API, not for us.
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(Refusal::Unauthenticated(format!(
            "the token is for {audiences:?}, not {audience:?}"
        )));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let Some(account) = allowed.iter().find(|a| a.user_name() == username) else {
        return Err(Refusal::Forbidden(format!(
            "{username:?} is not a ServiceAccount allowed to bootstrap agents"
        )));
    };
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    // Bound to a pod, always: a token bound to a Node object alone (which anyone allowed to
    // mint the account's tokens could get) names a node without an agent on it.
    match (extra(POD_NAME_CLAIM), extra(POD_UID_CLAIM)) {
        (Some(_), Some(_)) if extra(NODE_NAME_CLAIM).is_some() => {
            Ok(Claim::Node(extra(NODE_NAME_CLAIM).unwrap_or_default()))
        }
        (Some(name), Some(uid)) => Ok(Claim::Pod {
            namespace: account.namespace.clone(),
            name,
            uid,
        }),
        _ => Err(Refusal::Forbidden(
            "the token is not bound to a pod (mount a projected ServiceAccount token)".to_owned(),
        )),
    }
}

/// The node of the pod a token is bound to: the pod must be the one the token names (same
/// UID, so not a later pod of the same name) and scheduled.
pub fn node_of_pod(pod: Option<&Pod>, uid: &str) -> Result<String, Refusal> {
    let Some(pod) = pod else {
        return Err(Refusal::Forbidden(
            "the token's pod no longer exists".to_owned(),
        ));
    };
    if pod.metadata.uid.as_deref() != Some(uid) {
        return Err(Refusal::Forbidden(
            "the token's pod was replaced (its UID differs)".to_owned(),
        ));
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Refusal::Forbidden("the token's pod is not on a node".to_owned()))
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The Kubernetes API as the bootstrap uses it.
pub trait Reviewer: Send + Sync {
    /// Reviews `token` for `audience`.
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, String>>;
    /// Reads a pod (`None`: there is none).
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, String>>;
}

/// The live Kubernetes API.
#[derive(Clone)]
pub struct Kubernetes(pub kube::Client);

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kubernetes")
    }
}

impl Reviewer for Kubernetes {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, String>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(vec![audience.to_owned()]),
                },
                ..Default::default()
            };
            let done = Api::<TokenReview>::all(self.0.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            Ok(done.status.unwrap_or_default())
        })
    }

    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, String>> {
        Box::pin(async move {
            Api::<Pod>::namespaced(self.0.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| format!("reading pod {namespace}/{name}: {e}"))
        })
    }
}

/// Issues agent certificates.
pub struct Issuer {
    settings: Settings,
    ca: CertificateAuthority,
    reviewer: Arc<dyn Reviewer>,
    requests: Family<Vec<(String, String)>, Counter>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// An issuer with the CA of `settings`, which must be `cluster`'s.
    pub fn new(
        settings: Settings,
        cluster: &str,
        reviewer: Arc<dyn Reviewer>,
    ) -> Result<Self, String> {
        let ca = CertificateAuthority::load(&settings.ca_cert, &settings.ca_key)
            .map_err(|e| format!("the bootstrap CA: {e}"))?;
        if ca.cluster() != cluster {
            return Err(format!(
                "the bootstrap CA {} is cluster {}'s, this is cluster {cluster}",
                settings.ca_cert.display(),
                ca.cluster()
            ));
        }
        Ok(Self {
            settings,
            ca,
            reviewer,
            requests: Family::default(),
        })
    }

    /// Registers `raftmesh_bootstrap_requests_total{outcome}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bootstrap_requests",
            "Agent certificate requests, by outcome (issued, bad_request, unauthenticated, forbidden, unavailable; overloaded: connections closed unread)",
            self.requests.clone(),
        );
    }

    /// Answers one request.
    pub async fn issue(
        &self,
        req: &AgentCertificateRequest,
    ) -> Result<AgentCertificateResponse, Refusal> {
        let result = self.decide(req).await;
        self.count(match &result {
            Ok(_) => "issued",
            Err(r) => r.outcome(),
        });
        result
    }

    fn count(&self, outcome: &str) {
        self.requests
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    async fn decide(
        &self,
        req: &AgentCertificateRequest,
    ) -> Result<AgentCertificateResponse, Refusal> {
        if req.token.is_empty() {
            return Err(Refusal::BadRequest("no token".to_owned()));
        }
        let status = self
            .reviewer
            .review(&req.token, &self.settings.audience)
            .await
            .map_err(Refusal::Unavailable)?;
        let node = match claim(
            &status,
            &self.settings.audience,
            &self.settings.service_accounts,
        )? {
            Claim::Node(node) => node,
            Claim::Pod {
                namespace,
                name,
                uid,
            } => {
                let pod = self
                    .reviewer
                    .pod(&namespace, &name)
                    .await
                    .map_err(Refusal::Unavailable)?;
                node_of_pod(pod.as_ref(), &uid)?
            }
        };
        let identity = Identity::new(self.ca.cluster(), Role::Agent, &node)
            .map_err(|e| Refusal::Forbidden(format!("node name {node:?}: {e}")))?;
        let now = std::time::SystemTime::now();
        let spec = LeafSpec {
            identity,
            sans: Vec::new(),
            validity: Validity {
                not_before: now - Duration::from_secs(300),
                not_after: now + self.settings.validity,
            },
        };
        let certificate = self
            .ca
            .sign_request(&req.csr, &spec)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?;
        tracing::info!(%node, valid_for = ?self.settings.validity, "issued an agent certificate");
        Ok(AgentCertificateResponse {
            certificate,
            ca: self.ca.cert_pem().to_owned(),
        })
    }
}

/// Serves the bootstrap on `listener` until `stop`: at most `max_connections` in progress and
/// an eighth of that from one source address, the oldest closed to make room (counted as
/// `evicted`).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    issuer: Arc<Issuer>,
    max_connections: usize,
    stop: CancellationToken,
) {
    let admission = Arc::new(Mutex::new(Admission::new(
        max_connections,
        max_connections.div_ceil(8),
    )));
    while let Some(stream) = admin_http::accept(&listener, &stop, "bootstrap").await {
        let Ok(remote) = stream.peer_addr() else {
            continue;
        };
        let admitted = admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(remote.ip());
        for _ in 0..admitted.closed {
            issuer.count("evicted");
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let (issuer, admission) = (issuer.clone(), admission.clone());
        tokio::spawn(async move {
            let exchange = async {
                let Ok(Ok(stream)) =
                    tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await
                else {
                    return;
                };
                connection(stream, issuer.clone()).await;
            };
            tokio::select! {
                () = exchange => {}
                // Closed to make room for newer connections.
                _ = admitted.evicted => {}
            }
            admission
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .close(admitted.id);
        });
    }
}

/// Serves one connection: one request, HTTP/1.1 by hyper. The request head and body must
/// arrive within [`READ_TIMEOUT`] of the connection's start (hyper's header timeout bounds the
/// head alone), the head must fit in [`MAX_HEAD`] bytes and the body in [`MAX_REQUEST`].
async fn connection<S>(stream: S, issuer: Arc<Issuer>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    // Whether a request head reached the service, which then counts its outcome itself.
    let reached = Arc::new(AtomicBool::new(false));
    let service = {
        let (issuer, reached) = (issuer.clone(), reached.clone());
        hyper::service::service_fn(move |req| {
            reached.store(true, Ordering::Relaxed);
            let issuer = issuer.clone();
            async move { answer(req, &issuer, deadline).await }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        // The read buffer, and exactly the head (the buffer alone may take in a little more).
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        // A head hyper refused (it answered 400, or 431 when too large) or a connection closed
        // within it is a bad request, as a refusal of the service is; a head not sent in time
        // or a request not answered is not counted.
        if !reached.load(Ordering::Relaxed) && (e.is_parse() || e.is_incomplete_message()) {
            issuer.count("bad_request");
        }
        tracing::debug!(error = %e, "bootstrap connection ended with an error");
    }
}

/// Answers one request; `Err` (the request was not read by `deadline`) closes the connection
/// without an answer.
async fn answer(
    req: Request<Incoming>,
    issuer: &Issuer,
    deadline: tokio::time::Instant,
) -> Result<Response<Full<Bytes>>, String> {
    let (status, body) = match tokio::time::timeout_at(deadline, read_request(req)).await {
        Ok(Ok(req)) => match tokio::time::timeout(READ_TIMEOUT, issuer.issue(&req))
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::Unavailable(
                    "the Kubernetes API did not answer in time".to_owned(),
                ))
            }) {
            Ok(resp) => (
                StatusCode::OK,
                serde_json::to_string(&resp).unwrap_or_default(),
            ),
            Err(refusal) => {
                tracing::warn!(%refusal, "refused an agent certificate request");
                (refusal.status(), error_body(&refusal.to_string()))
            }
        },
        Ok(Err(refusal)) => {
            issuer.count(refusal.outcome());
            (refusal.status(), error_body(&refusal.to_string()))
        }
        Err(_) => return Err("the request was not read in time".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// `e` and its sources, `: `-separated.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}

fn error_body(error: &str) -> String {
    serde_json::to_string(&ErrorResponse {
        error: error.to_owned(),
    })
    .unwrap_or_default()
}

/// Reads `POST PATH` with a JSON body of at most [`MAX_REQUEST`] bytes.
async fn read_request(req: Request<Incoming>) -> Result<AgentCertificateRequest, Refusal> {
    let bad = |why: &str| Refusal::BadRequest(why.to_owned());
    if req.uri().path() != PATH {
        return Err(bad(&format!("no such path (POST {PATH})")));
    }
    if req.method() != Method::POST {
        return Err(bad(&format!("only POST {PATH}")));
    }
    let too_large = || bad("request body too large");
    // A Content-Length beyond the bound is refused unread.
    if req.body().size_hint().lower() > MAX_REQUEST as u64 {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                too_large()
            } else {
                bad(&format!("reading the body: {}", with_sources(&*e)))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| bad(&format!("body: {e}")))
}

#[cfg(test)]
mod tests;
