//! The etcd v3 gRPC services, on the client port.
//!
//! Each service is a thin translation: decode (`convert.rs`), validate (`validate.rs`), call
//! the [`Node`](crate::node::Node), encode. Errors become gRPC statuses in one place,
//! [`status`], with etcd's codes and strings.

pub mod cluster;
pub(crate) mod convert;
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

/// Largest gRPC message the client port decodes: the request limit plus room for framing,
/// so an oversized request gets etcd's `ErrRequestTooLarge` rather than a transport error.
pub const MAX_DECODE_BYTES: usize = crate::validate::MAX_REQUEST_BYTES + 512 * 1024;
