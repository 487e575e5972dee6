//! The etcd v3 gRPC services, on the client port.
//!
//! Each service is a thin translation: decode (`convert.rs`), validate (`validate.rs`), call
//! the [`Node`](crate::node::Node), encode. Errors become gRPC statuses in one place,
//! [`status`], with etcd's codes and strings.

pub mod cluster;
pub mod convert;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use tonic::{Code, Status};

use crate::auth::Operation;
use crate::error::Error;
use crate::node::Node;

/// etcd's gRPC code for each error.
pub fn status(e: Error) -> Status {
    let code = match e {
        Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
        Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
        Error::LeaseExist | Error::NotLeader | Error::PeerUrlExists => Code::FailedPrecondition,
        Error::DuplicateKey
        | Error::TooManyOps
        | Error::EmptyKey
        | Error::RequestTooLarge
        | Error::KeyNotFound
        | Error::ValueProvided
        | Error::LeaseProvided => Code::InvalidArgument,
        Error::NoLeader | Error::Timeout | Error::Unhealthy | Error::MembershipRejected => {
            Code::Unavailable
        }
        Error::PermissionDenied => Code::PermissionDenied,
        Error::NoSpace | Error::TooManyLeases | Error::TooManyRequests => Code::ResourceExhausted,
        Error::BadLeaderTransferee => Code::FailedPrecondition,
        Error::LeaderTransferTimeout => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

/// Refuses `req` with etcd's `PermissionDenied` unless its caller may do `op`.
pub(crate) fn allow<T>(node: &Node, req: &tonic::Request<T>, op: Operation) -> Result<(), Status> {
    let caller = node.auth().caller(req.extensions());
    node.auth().operation(&caller, op).map_err(status)
}

/// Whether the caller asked to be refused when this member knows no leader (etcd's
/// `hasleader` metadata, which etcdctl watch and the Go client send).
pub(crate) fn requires_leader<T>(req: &tonic::Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// Consecutive election timeouts without a leader after which a stream that requires one
/// (watch, lease keep-alive) is ended with `ErrNoLeader`, as etcd's `monitorLeader` does
/// (`maxNoLeaderCnt`): new streams are refused at once, open ones — which cost more to
/// re-establish — only once the member has clearly lost its leader.
pub const MAX_NO_LEADER_TIMEOUTS: u32 = 3;

/// Completes once `node` has known no leader at [`MAX_NO_LEADER_TIMEOUTS`] consecutive checks,
/// one per election timeout; never, for a stream that does not require a leader (`required`
/// false). A select arm of the streams that honour `hasleader`.
pub(crate) async fn leader_lost(node: &Node, required: bool) {
    if !required {
        return std::future::pending().await;
    }
    let mut check = tokio::time::interval(node.election_timeout());
    check.reset();
    let mut leaderless = 0u32;
    while leaderless < MAX_NO_LEADER_TIMEOUTS {
        check.tick().await;
        leaderless = if node.leader().is_some() {
            0
        } else {
            leaderless + 1
        };
    }
    tracing::debug!(
        "ending a stream that requires a leader: none for {leaderless} election timeouts"
    );
}

/// Largest gRPC message the client port decodes: the request limit plus room for framing,
/// so an oversized request gets etcd's `ErrRequestTooLarge` rather than a transport error.
pub const MAX_DECODE_BYTES: usize = crate::validate::MAX_REQUEST_BYTES + 512 * 1024;
