//! `--bootstrap-url`: the agent gets its `agent` certificate from the API server's bootstrap
//! endpoint, proving its node with its pod's projected ServiceAccount token, and renews it
//! after two thirds of its lifetime (see `mesh_apiserver::bootstrap` for the server side).
//!
//! The key is made here and never leaves the node; the request carries a token and a
//! certificate signing request. The server is trusted only as an `apiserver` of this cluster
//! whose certificate chains to `--cacert` and names the host dialled. Key and certificate are
//! written atomically (0600) to `--key` and `--cert`, which the agent's client reads at every
//! connection, so a renewal needs no restart.
//!
//! The exchange is one HTTP/1.1 request by hyper over TLS (`POST` [`PATH`], JSON both ways):
//! connecting, the handshake, the request and the answer together are bounded by `TIMEOUT`
//! (15 s), and the answer's head and its body are each read to at most `MAX_ANSWER` (64 KiB).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::{Identity, Role};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_api::bootstrap::{AgentCertificateRequest, AgentCertificateResponse, ErrorResponse, PATH};
use tokio::task::JoinHandle;

/// Bound on one exchange (connect, handshake, answer).
const TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer head, and largest answer body, read.
const MAX_ANSWER: usize = 64 * 1024;
/// Retry pace after a failed exchange.
const RETRY: Duration = Duration::from_secs(10);

/// The bootstrap settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// `https://host:port` of the bootstrap endpoint.
    pub url: String,
    /// The projected ServiceAccount token.
    pub token_file: PathBuf,
}

/// Where the agent's files are and who it is.
#[derive(Debug, Clone)]
pub struct Files<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    pub cluster: &'a str,
    pub node: &'a str,
}

/// When the certificate at `files.cert` should be replaced: now if it is missing, unreadable
/// or not this node's agent certificate, else two thirds into its lifetime.
pub fn renew_at(files: &Files<'_>) -> SystemTime {
    let now = SystemTime::now();
    let Ok(pem) = std::fs::read_to_string(files.cert) else {
        return now;
    };
    let wanted = Identity::new(files.cluster, Role::Agent, files.node).ok();
    let ours = certs::pki::leaf_info(&pem).ok().map(|(id, _)| id);
    if ours.is_none() || ours != wanted || !trusted_pair(files, &pem) {
        return now;
    }
    match certs::pki::validity_of(&pem) {
        Ok(v) => {
            let life = v.not_after.duration_since(v.not_before).unwrap_or_default();
            v.not_before + life * 2 / 3
        }
        Err(_) => now,
    }
}

/// Whether the files hold this node's agent certificate, not expired, signed by the CA in
/// `--cacert` (a certificate of a replaced CA is useless), with its key.
pub fn usable(files: &Files<'_>) -> bool {
    let Ok(pem) = std::fs::read_to_string(files.cert) else {
        return false;
    };
    let wanted = Identity::new(files.cluster, Role::Agent, files.node).ok();
    matches!(
        certs::pki::leaf_info(&pem),
        Ok((id, not_after)) if Some(&id) == wanted.as_ref() && not_after > SystemTime::now()
    ) && trusted_pair(files, &pem)
}

/// The certificate chains to `--cacert` (and is valid now), and the key is its key.
fn trusted_pair(files: &Files<'_>, cert_pem: &str) -> bool {
    let (Ok(ca), Ok(key)) = (
        std::fs::read_to_string(files.ca),
        std::fs::read_to_string(files.key),
    ) else {
        return false;
    };
    certs::tls::verify_issued_by(cert_pem, &ca).is_ok() && certs::pki::pair_matches(cert_pem, &key)
}

/// Gets a new certificate and writes key and certificate.
pub async fn renew(bootstrap: &Bootstrap, files: &Files<'_>) -> anyhow::Result<SystemTime> {
    use anyhow::Context as _;
    let token = std::fs::read_to_string(&bootstrap.token_file)
        .with_context(|| format!("reading the token {}", bootstrap.token_file.display()))?;
    let ca = std::fs::read(files.ca).with_context(|| format!("reading {}", files.ca.display()))?;
    let (csr, key) = certs::pki::signing_request()?;
    let answer = exchange(
        &bootstrap.url,
        &ca,
        files.cluster,
        &AgentCertificateRequest {
            token: token.trim().to_owned(),
            csr,
        },
    )
    .await?;
    let (identity, not_after) = certs::pki::leaf_info(&answer.certificate)
        .context("the bootstrap answered with an unreadable certificate")?;
    let wanted = Identity::new(files.cluster, Role::Agent, files.node)?;
    anyhow::ensure!(
        identity == wanted,
        "the bootstrap issued {identity}, not {wanted} (is --node the Kubernetes node name?)"
    );
    certs::tls::verify_issued_by(&answer.certificate, &String::from_utf8_lossy(&ca))
        .context("the issued certificate does not chain to --cacert")?;
    certs::pki::write_pem(files.key, &key)?;
    certs::pki::write_pem(files.cert, &answer.certificate)?;
    tracing::info!(
        cert = %files.cert.display(),
        not_after = ?not_after,
        "got an agent certificate from the bootstrap"
    );
    Ok(renew_at(files))
}

/// Renews whenever due (first at once if needed), retrying every [`RETRY`] on failure, until
/// `stop` resolves. `ready` is told once a certificate is in place.
pub async fn keep_renewed(
    bootstrap: Bootstrap,
    files: OwnedFiles,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut ready = ready;
    loop {
        // A certificate that is due but still valid serves while the renewal is tried.
        if usable(&files.borrow())
            && let Some(tx) = ready.take()
        {
            let _ = tx.send(());
        }
        let due = renew_at(&files.borrow());
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            // Looked at again at least hourly: the wall clock may be set (NTP) meanwhile.
            tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            continue;
        }
        match renew(&bootstrap, &files.borrow()).await {
            // Never back to back, even if this clock says the new one is already due.
            Ok(_) => tokio::time::sleep(RETRY).await,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), url = %bootstrap.url, "agent certificate bootstrap failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// [`Files`] that own their paths, for a task.
#[derive(Debug, Clone)]
pub struct OwnedFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cluster: String,
    pub node: String,
}

impl OwnedFiles {
    pub fn borrow(&self) -> Files<'_> {
        Files {
            ca: &self.ca,
            cert: &self.cert,
            key: &self.key,
            cluster: &self.cluster,
            node: &self.node,
        }
    }
}

/// One HTTPS exchange with the bootstrap endpoint.
pub async fn exchange(
    url: &str,
    ca_pem: &[u8],
    cluster: &str,
    request: &AgentCertificateRequest,
) -> anyhow::Result<AgentCertificateResponse> {
    use anyhow::{Context as _, anyhow, bail};
    let (host, port) =
        mesh_api::endpoint::host_port(url).map_err(|e| anyhow!("--bootstrap-url {url:?}: {e}"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let config = certs::tls::client_without_identity(ca_pem, cluster)?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| anyhow!("--bootstrap-url host {host:?}: {e}"))?;
    // The authority as dialled: an IPv6 address in brackets, and the port.
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let post = Request::post(PATH)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(request)?)))?;
    tokio::time::timeout(TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .with_context(|| format!("TLS with {url}"))?;
        // The answer's head is bounded by the read buffer, its body below.
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_ANSWER)
            .handshake(TokioIo::new(tls))
            .await
            .with_context(|| format!("HTTP with {url}"))?;
        // Ends with the exchange, also when it is abandoned (the timeout).
        let _connection = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "bootstrap connection ended with an error");
            }
        }));
        let answer = sender
            .send_request(post)
            .await
            .with_context(|| format!("asking {url}"))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer of {url}: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            let why = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{url} refused: {}: {why}", status.as_u16());
        }
        serde_json::from_slice(&body).with_context(|| format!("the answer of {url}"))
    })
    .await
    .map_err(|_| anyhow!("no answer from {url} within {TIMEOUT:?}"))?
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
