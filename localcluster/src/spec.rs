//! What cluster to start.

/// The shape of a cluster and the optional flags every member gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Number of members started by [`crate::Cluster::start`] (at least 1).
    pub members: usize,
    /// `--snapshot-count N` when set.
    pub snapshot_count: Option<u64>,
    /// Appended verbatim to every member's command line, after the standard flags.
    pub extra_args: Vec<String>,
    /// Give every member `--listen-metrics-urls http://127.0.0.1:<free port>`.
    pub metrics: bool,
}

impl Spec {
    /// `members` members and no optional flags.
    pub fn with_members(members: usize) -> Spec {
        Spec {
            members,
            snapshot_count: None,
            extra_args: Vec::new(),
            metrics: false,
        }
    }
}

impl Default for Spec {
    /// Three members, no optional flags.
    fn default() -> Spec {
        Spec::with_members(3)
    }
}
