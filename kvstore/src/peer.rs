//! What members say to each other over the peer port: the generated gRPC types, and the calls
//! one member forwards to another with their answers. The service that answers them is
//! [`crate::peer_service`]; the client side is [`crate::network`] and [`crate::propose`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::raft_types::{Command, Member, NodeId, Reply};

/// Generated gRPC types of `proto/peer.proto`.
#[allow(missing_docs, missing_debug_implementations, reason = "generated code")]
pub mod pb {
    tonic::include_proto!("raftmesh.peer.v1");
}

/// A call one member makes to another over the peer port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Propose a command (leader only).
    Propose(Command),
    /// Confirm leadership and return the index reads must wait for (leader only).
    ReadIndex,
    /// Renew a lease (leader only).
    LeaseKeepAlive {
        /// Lease id.
        id: i64,
    },
    /// Remaining TTL of a lease (leader only).
    LeaseTimeToLive {
        /// Lease id.
        id: i64,
    },
    /// etcd MemberAdd (leader only).
    AddMember {
        /// Peer URLs of the new member.
        peer_urls: Vec<String>,
        /// Add as a learner.
        learner: bool,
    },
    /// etcd MemberRemove (leader only).
    RemoveMember {
        /// The member.
        id: NodeId,
    },
    /// This member's view of the membership (any member; used by a joining member).
    Members,
    /// Propose commands in this order (leader only); a follower's batch of forwarded writes.
    ProposeBatch(Vec<Command>),
    /// Stand for election now (sent by the leader to the member leadership moves to).
    Campaign,
    /// Would you vote for this candidate? ([`crate::prevote`]; any member, changes nothing.)
    PreVote(crate::prevote::PreVote),
    /// What this member's version can do (any member, changes nothing). A member of an older
    /// version cannot decode the request and refuses it.
    Capabilities,
}

/// A lease's remaining time as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTtl {
    /// Seconds left.
    pub remaining: i64,
    /// TTL granted.
    pub granted: i64,
    /// Attached keys.
    pub keys: Vec<bytes::Bytes>,
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `Propose`.
    Reply(Reply),
    /// Answer to `ReadIndex`.
    ReadIndex(u64),
    /// Answer to `LeaseKeepAlive`: the TTL granted.
    LeaseRenewed(i64),
    /// Answer to `LeaseTimeToLive`; `None` when the lease does not exist.
    LeaseTtl(Option<LeaseTtl>),
    /// Answer to `AddMember`: the new member's id.
    MemberAdded(NodeId),
    /// Answer to `RemoveMember`.
    MemberRemoved,
    /// Answer to `Members`.
    Members(BTreeMap<NodeId, Member>),
    /// Answer to `ProposeBatch`: one result per command, in order.
    Replies(Vec<Result<Reply, Error>>),
    /// Answer to `Campaign`: the election started.
    Done,
    /// Answer to `PreVote`: granted or not.
    PreVote(bool),
    /// Answer to `Capabilities`: what this member can do (e.g. [`crate::session::CAPABILITY`]).
    Capabilities(Vec<String>),
}
