//! The Raft type configuration: what the log carries, what applying returns, who the nodes are.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::request::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

/// A member id, as etcd's: a hash of its peer URLs and the cluster token (see `membership.rs`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// raftmesh's Raft types.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a member.
pub type Raft = openraft::Raft<TypeConfig>;

/// A member as Raft's membership records it: what a peer needs to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's name (`--name`); empty until a member added by MemberAdd has started.
    pub name: String,
    /// URLs its Raft peer port is reached at (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
}

/// A mutation of the state machine: one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// etcd Put.
    Put(PutRequest),
    /// etcd DeleteRange.
    DeleteRange(DeleteRangeRequest),
    /// etcd Txn with at least one write.
    Txn(TxnRequest),
    /// etcd Compact.
    Compact {
        /// Compact the history up to this revision.
        revision: i64,
    },
    /// etcd LeaseGrant; the id is chosen before proposing so applying is deterministic.
    LeaseGrant {
        /// Lease id, > 0.
        id: i64,
        /// TTL in seconds.
        ttl: i64,
    },
    /// etcd LeaseRevoke, or the leader expiring a lease.
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
    /// A member announces its name and client URLs, as etcd members publish their attributes.
    PublishMember {
        /// The member.
        id: NodeId,
        /// Its `--name`.
        name: String,
        /// Its `--advertise-client-urls`.
        client_urls: Vec<String>,
    },
    /// Commands proposed together by the leader (see `propose.rs`), applied in order as if
    /// proposed one by one.
    Batch(Vec<Command>),
    /// LeaseRevoke by a caller who may delete only `keys`: refused with PermissionDenied,
    /// changing nothing, if the lease holds any other key when it applies. Checked at apply
    /// time so a key attached after the request was authorized is still covered.
    LeaseRevokeIfOnly {
        /// Lease id.
        id: i64,
        /// The keys the caller may delete.
        keys: Vec<bytes::Bytes>,
    },
    /// LeaseGrant by a caller limited to its own leases (an agent): the lease records it.
    LeaseGrantOwned {
        /// Lease id, > 0.
        id: i64,
        /// TTL in seconds.
        ttl: i64,
        /// The caller's identity.
        owner: String,
    },
    /// LeaseRevoke by a caller limited to its own leases: refused with PermissionDenied,
    /// changing nothing, unless `owner` granted the lease and it holds only `keys`.
    LeaseRevokeOwned {
        /// Lease id.
        id: i64,
        /// The caller's identity.
        owner: String,
        /// The keys the caller may delete.
        keys: Vec<bytes::Bytes>,
    },
    /// A write by a caller limited to its own leases: refused with PermissionDenied, changing
    /// nothing, if it would attach a key to a lease `owner` did not grant (checked when it
    /// applies, so a lease re-granted meanwhile cannot be borrowed).
    As {
        /// The caller's identity.
        owner: String,
        /// The write (a put or a txn).
        cmd: Box<Command>,
    },
    /// Raises or clears an alarm (etcd's Alarm ACTIVATE/DEACTIVATE). While a NOSPACE alarm
    /// is raised, every write that would grow the store is refused.
    Alarm {
        /// Raise (true) or clear.
        activate: bool,
        /// The member the alarm is for.
        member: NodeId,
        /// etcd's `AlarmType` (1 NOSPACE, 2 CORRUPT).
        alarm: i32,
    },
    /// A write of member `member`'s write session (`session.rs`): applied once however many
    /// copies of it are sent, every copy answered with that application's reply.
    Once {
        /// The member that proposed it.
        member: NodeId,
        /// Its number in the member's session.
        seq: crate::session::Seq,
        /// The lowest number the member still had a caller waiting on when it numbered this.
        done_below: crate::session::Seq,
        /// The write.
        cmd: Box<Command>,
    },
    /// Members number their writes from now on (proposed once every member can read
    /// [`Command::Once`]).
    EnableWriteSessions,
}

/// What a snapshot is of: its last log id and membership.
pub type Meta = openraft::SnapshotMeta<NodeId, Member>;

/// What applying a log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put was applied.
    Put(PutResponse),
    /// A delete was applied.
    DeleteRange(DeleteRangeResponse),
    /// A txn was applied.
    Txn(TxnResponse),
    /// Any entry without a payload of its own (blank, membership, compact, lease, publish).
    Done,
    /// One reply per command of a [`Command::Batch`], in order.
    Batch(Vec<Reply>),
    /// The alarms an [`Command::Alarm`] changed, as (member, alarm type).
    Alarms(Vec<(NodeId, i32)>),
}

/// The result of applying one log entry, with the store revision right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The store revision after the entry was applied.
    pub revision: i64,
    /// The entry's outcome, or the request error the state machine found.
    pub result: Result<Outcome, Error>,
}
