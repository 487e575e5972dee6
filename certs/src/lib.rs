//! raftmesh's PKI and TLS: every cluster has its own CA; every certificate names its holder
//! with a URI SAN `spiffe://raftmesh/cluster/<c>/<role>/<name>` (see ARCHITECTURE.md,
//! "Trust model"). All ports are mutual TLS 1.3 with these certificates, and the server authorizes
//! each request by the client certificate's identity.
//!
//! # Layout
//! - [`identity`]: roles, identities, and reading one out of a certificate.
//! - [`pki`]: creating a CA and issuing role certificates (rcgen, ECDSA P-256), PEM files.
//! - [`tls`]: rustls server and client configs from PEM files, peer identity checks at the
//!   handshake, and reloading when the files change.
//! - [`error`]: the crate's error type.

pub mod error;
pub mod identity;
pub mod pki;
pub mod tls;

pub use error::{Error, Result};
pub use identity::{Identity, Role};
