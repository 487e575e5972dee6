//! Request errors of the store, one variant per etcd error.
//!
//! Clients match on etcd's exact strings, so every variant's message is etcd's, verbatim
//! (etcd's `api/v3rpc/rpctypes/error.go`). The gRPC code of each variant lives in
//! [`crate::api::status`], where errors cross the service boundary.
//!
//! Errors are serializable because a follower forwards writes to the leader and gets the
//! leader's verdict back over the peer port.

use serde::{Deserialize, Serialize};

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request the store refused, or could not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The requested revision is below the compacted revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The lease named by the request does not exist (never granted, revoked or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// The requested lease TTL is above [`crate::mvcc::MAX_LEASE_TTL`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// Two operations of one txn branch write the same key.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A txn has more than [`crate::validate::MAX_TXN_OPS`] compares or operations in a branch.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// The request has an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// The encoded request is above [`crate::validate::MAX_REQUEST_BYTES`].
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A put with `ignore_value` or `ignore_lease` names a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put sets both `ignore_value` and a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put sets both `ignore_lease` and a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// This member knows no leader.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request needs the leader and this member is not it.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The request could not be completed in time (e.g. the leader did not answer).
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The member cannot serve: its Raft instance stopped or its storage failed.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// The caller may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// The member named by a membership request is not a member.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member with one of the requested peer URLs already exists.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// The membership change was refused by Raft (e.g. another change is in progress).
    #[error("etcdserver: unhealthy cluster")]
    MembershipRejected,
    /// The storage quota is used up (a NOSPACE alarm is raised): writes that would grow the
    /// store are refused until an operator compacts and disarms.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The member holds `--max-leases` leases already (or the caller its per-identity share).
    #[error("etcdserver: too many leases")]
    TooManyLeases,
    /// The caller writes faster than its per-identity rate (etcd's `ErrTooManyRequests`).
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// MoveLeader named a member that cannot lead (not a voter, or the leader itself).
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// The leadership did not move in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
}
