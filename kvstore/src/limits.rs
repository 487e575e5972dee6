//! The bounds a member puts on what the store holds (`--quota-backend-bytes`, `--max-leases`,
//! `--max-watchers-per-stream`, and what one agent or remote identity may hold): configuration
//! the member's parts read, apart from the server that assembles them.

/// How much the store holds before it refuses more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// `--quota-backend-bytes`: past this ([`crate::mvcc::Mvcc::bytes`]), writes raise the
    /// NOSPACE alarm and fail until an operator frees space and disarms it.
    pub quota_bytes: u64,
    /// `--max-leases`: live leases; a grant past it fails.
    pub max_leases: usize,
    /// `--max-watchers-per-stream`: watchers on one watch stream; a create past it is
    /// canceled.
    pub max_watchers_per_stream: usize,
    /// What one agent or remote identity may hold.
    pub per_identity: crate::per_identity::IdentityLimits,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            quota_bytes: 2 << 30,
            max_leases: 100_000,
            max_watchers_per_stream: 10_000,
            per_identity: crate::per_identity::IdentityLimits::default(),
        }
    }
}
