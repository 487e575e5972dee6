//! The agent bootstrap exchange: an agent without a certificate proves its node with its
//! ServiceAccount token and gets an `agent` certificate named after the node.
//!
//! `POST` [`PATH`] on the API server's `--listen-bootstrap-urls` (HTTPS, server-authenticated
//! only), body [`AgentCertificateRequest`] as JSON; a 200 answer carries
//! [`AgentCertificateResponse`], any other status an [`ErrorResponse`].

use serde::{Deserialize, Serialize};

/// The path of the exchange.
pub const PATH: &str = "/v1/agent-certificate";
/// The token audience the API server asks the Kubernetes API to check by default.
pub const DEFAULT_AUDIENCE: &str = "raftmesh";
/// Largest request body accepted, in bytes (a token and a signing request are a few KiB).
pub const MAX_REQUEST: usize = 32 * 1024;

/// What an agent sends.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCertificateRequest {
    /// A ServiceAccount token bound to the agent's pod (a projected token with the
    /// bootstrap's audience). Secret.
    pub token: String,
    /// A PKCS#10 certificate signing request (PEM) over the agent's fresh key.
    pub csr: String,
}

impl std::fmt::Debug for AgentCertificateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCertificateRequest")
            .field("token", &"[secret]")
            .field("csr", &self.csr)
            .finish()
    }
}

/// What the API server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCertificateResponse {
    /// The `agent` certificate for the node (PEM).
    pub certificate: String,
    /// The cluster's CA bundle (PEM), to trust the API servers with.
    pub ca: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}
