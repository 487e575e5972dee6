//! The server side of the peer port: Raft RPCs from the other members of this cluster, and
//! the calls they forward to this member.
//!
//! Trust boundary: this service is served on the peer port only, never on the client port,
//! because it accepts raw Raft messages. Only members of this cluster may reach it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::node::Node;
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
}

/// The peer gRPC service.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// Serves `node`'s Raft and forwarded calls.
    pub fn new(node: Arc<Node>) -> pb::peer_server::PeerServer<Self> {
        pb::peer_server::PeerServer::new(Self { node })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<pb::Blob>) -> Result<T, Status> {
    bincode::deserialize(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<pb::Blob>, Status> {
    let data = bincode::serialize(value)
        .map_err(|e| Status::internal(format!("unencodable peer payload: {e}")))?;
    Ok(Response::new(pb::Blob { data }))
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn append_entries(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn call(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        let call: PeerRequest = decode(req)?;
        let result: Result<PeerResponse, Error> = self.node.serve_peer_call(call).await;
        encode(&result)
    }
}
