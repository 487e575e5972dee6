//! What cluster to start.

use std::path::PathBuf;

/// The shape of a cluster and the optional flags every member gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Number of members started by [`super::Cluster::start`] (at least 1).
    pub members: usize,
    /// `--snapshot-count N` when set.
    pub snapshot_count: Option<u64>,
    /// Appended verbatim to every member's command line, after the standard flags.
    pub extra_args: Vec<String>,
    /// Give every member `--listen-metrics-urls http://127.0.0.1:<free port>`.
    pub metrics: bool,
    /// Serve mutual TLS with the certificates in this directory, laid out as
    /// `meshctl pki init` writes them: `ca.crt`, `apiserver-<member>.crt`/`.key` for every
    /// member (`n1`, `n2`, …), and `admin-admin.crt`/`.key`, which the cluster's own clients
    /// and etcdctl use. `None`: plaintext (raftmesh gets `--insecure-plaintext`).
    pub tls: Option<PathBuf>,
}

impl Spec {
    /// `members` members and no optional flags.
    pub fn with_members(members: usize) -> Spec {
        Spec {
            members,
            snapshot_count: None,
            extra_args: Vec::new(),
            metrics: false,
            tls: None,
        }
    }
}

impl Default for Spec {
    /// Three members, no optional flags.
    fn default() -> Spec {
        Spec::with_members(3)
    }
}
