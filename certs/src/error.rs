//! The crate's errors.

use std::path::PathBuf;

/// What can go wrong making, reading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A role other than apiserver, agent, admin or remote.
    #[error("unknown role {role:?} (expected apiserver, agent, admin or remote)")]
    BadRole {
        /// What was given.
        role: String,
    },
    /// A cluster or holder name that is not a DNS-1123 subdomain.
    #[error(
        "invalid {what} {name:?}: use 1-253 lowercase letters, digits, '-' and '.', labels not starting or ending with '-'"
    )]
    BadName {
        /// Which name.
        what: &'static str,
        /// What was given.
        name: String,
    },
    /// A raftmesh URI SAN that does not parse.
    #[error("invalid raftmesh identity {uri:?}: {reason}")]
    BadIdentity {
        /// The URI(s) found.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate without a raftmesh URI SAN.
    #[error("the certificate has no spiffe://raftmesh/ URI SAN")]
    NoIdentity,
    /// Bytes that are not a usable certificate.
    #[error("unreadable certificate: {reason}")]
    BadCertificate {
        /// The parser's complaint.
        reason: String,
    },
    /// A PEM file without the item expected.
    #[error("{}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rcgen could not make a key or certificate.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being made.
        what: String,
        /// The cause.
        source: rcgen::Error,
    },
    /// A valid certificate whose identity this port does not accept.
    #[error("{identity} is not accepted here: expected {expected}")]
    NotAccepted {
        /// The identity shown.
        identity: String,
        /// What the port accepts.
        expected: String,
    },
    /// A leaf certificate requested for another cluster than the CA's.
    #[error("this CA belongs to cluster {ca:?} and cannot issue {identity}")]
    WrongCluster {
        /// The CA's cluster.
        ca: String,
        /// The identity requested.
        identity: String,
    },
    /// A subject alternative name that is neither an IP address nor a DNS name.
    #[error("invalid SAN {san:?}: {reason}")]
    BadSan {
        /// What was given.
        san: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A validity period that is empty or cannot be encoded.
    #[error("invalid validity: {reason}")]
    BadValidity {
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes that are not a usable private key.
    #[error("unreadable private key: {reason}")]
    BadKey {
        /// The parser's complaint.
        reason: String,
    },
    /// A CA key that does not belong to the CA certificate.
    #[error("the private key does not match the CA certificate's public key")]
    KeyMismatch,
    /// rustls refused a configuration.
    #[error("TLS configuration: {reason}")]
    Tls {
        /// Why.
        reason: String,
    },
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
