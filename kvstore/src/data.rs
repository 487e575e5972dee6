//! The replicated state: what applying the committed log builds (the MVCC key space, leases,
//! member attributes, alarms and the cluster id), how one command changes it, and its encoding
//! in snapshots and backups. [`crate::state_machine`] keeps it for openraft; [`crate::backup`]
//! writes and reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::mvcc::Mvcc;
use crate::raft_types::{Command, Member, NodeId, Outcome, Reply};
use crate::request::RequestOp;
use crate::session::{Seen, Sessions};

/// What a member published about itself (etcd's member attributes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// `--name`.
    pub name: String,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

/// Everything the log builds; a snapshot is this, serialized.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Data {
    /// Last entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last membership applied.
    pub last_membership: StoredMembership<NodeId, Member>,
    /// The key space.
    pub mvcc: Mvcc,
    /// etcd's cluster id: a hash of the first membership's voters, fixed for the cluster's
    /// life and the same on every member because every member applies the same first entry.
    pub cluster_id: u64,
    /// Attributes each member published.
    pub published: BTreeMap<NodeId, Published>,
    /// Raised alarms, as (member, etcd `AlarmType`). Kept beside the rest in snapshots (see
    /// [`encode_data`]), so snapshots of the earlier format still read.
    #[serde(skip)]
    pub alarms: BTreeSet<(NodeId, i32)>,
    /// Write sessions: whether they are on and what each member's writes got
    /// ([`crate::session`]). Kept after the alarms in snapshots, like them.
    #[serde(skip)]
    pub sessions: Sessions,
}

/// etcd's `AlarmType` NOSPACE.
pub const ALARM_NOSPACE: i32 = 1;

impl Data {
    /// Whether the store is out of space: a NOSPACE alarm is raised.
    pub fn out_of_space(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == ALARM_NOSPACE)
    }

    /// A revoke by a limited caller: refused, changing nothing, if the lease holds a key
    /// outside `keys` or (when `owner` is given) another caller granted it.
    fn revoke_limited(
        &mut self,
        id: i64,
        owner: Option<&String>,
        keys: &[bytes::Bytes],
    ) -> Result<Outcome, crate::error::Error> {
        let refused = self.mvcc.lease(id).is_some_and(|l| {
            owner.is_some_and(|o| l.owner.as_ref() != Some(o))
                || l.keys.iter().any(|k| !keys.contains(k))
        });
        if refused {
            return Err(crate::error::Error::PermissionDenied);
        }
        self.mvcc.lease_revoke(id).map(|()| Outcome::Done)
    }

    pub(crate) fn apply(&mut self, cmd: &Command) -> Reply {
        if let Command::Once {
            member,
            seq,
            done_below,
            cmd,
        } = cmd
        {
            let reply = match self.sessions.seen(*member, *seq) {
                Seen::New => {
                    let reply = self.apply(cmd);
                    self.sessions.record(*member, *seq, reply.clone());
                    reply
                }
                Seen::Applied(reply) => {
                    tracing::debug!(
                        member = format_args!("{member:x}"),
                        seq = ?seq,
                        "a write applied before was sent again; answered with its reply"
                    );
                    reply
                }
                Seen::Late => Reply {
                    revision: self.mvcc.revision(),
                    result: Err(crate::error::Error::Timeout),
                },
            };
            self.sessions.raise_floor(*member, *done_below);
            return reply;
        }
        if self.out_of_space() && grows(cmd) {
            return Reply {
                revision: self.mvcc.revision(),
                result: Err(crate::error::Error::NoSpace),
            };
        }
        let result = match cmd {
            Command::Put(r) => self.mvcc.put(r).map(Outcome::Put),
            Command::DeleteRange(r) => self.mvcc.delete_range(r).map(Outcome::DeleteRange),
            Command::Txn(r) => self.mvcc.txn(r).map(Outcome::Txn),
            Command::Compact { revision } => self.mvcc.compact(*revision).map(|()| Outcome::Done),
            Command::LeaseGrant { id, ttl } => self
                .mvcc
                .lease_grant(*id, *ttl, None)
                .map(|()| Outcome::Done),
            Command::LeaseGrantOwned { id, ttl, owner } => self
                .mvcc
                .lease_grant(*id, *ttl, Some(owner.clone()))
                .map(|()| Outcome::Done),
            Command::LeaseRevokeOwned { id, owner, keys } => {
                self.revoke_limited(*id, Some(owner), keys)
            }
            Command::As { owner, cmd } => {
                let mut leases = Vec::new();
                attached_leases(cmd, &mut leases);
                let borrowed = leases.iter().any(|id| {
                    self.mvcc
                        .lease(*id)
                        .is_some_and(|l| l.owner.as_ref() != Some(owner))
                });
                if borrowed {
                    Err(crate::error::Error::PermissionDenied)
                } else {
                    return self.apply(cmd);
                }
            }
            Command::LeaseRevoke { id } => self.mvcc.lease_revoke(*id).map(|()| Outcome::Done),
            Command::LeaseRevokeIfOnly { id, keys } => self.revoke_limited(*id, None, keys),
            Command::PublishMember {
                id,
                name,
                client_urls,
            } => {
                self.published.insert(
                    *id,
                    Published {
                        name: name.clone(),
                        client_urls: client_urls.clone(),
                    },
                );
                Ok(Outcome::Done)
            }
            Command::Alarm {
                activate,
                member,
                alarm,
            } => {
                let changed = if *activate {
                    self.alarms.insert((*member, *alarm))
                } else {
                    self.alarms.remove(&(*member, *alarm))
                };
                Ok(Outcome::Alarms(if changed {
                    vec![(*member, *alarm)]
                } else {
                    Vec::new()
                }))
            }
            Command::Batch(cmds) => Ok(Outcome::Batch(
                cmds.iter().map(|cmd| self.apply(cmd)).collect(),
            )),
            Command::EnableWriteSessions => {
                self.sessions.enabled = true;
                Ok(Outcome::Done)
            }
            Command::Once { .. } => unreachable!("applied above"),
        };
        Reply {
            revision: self.mvcc.revision(),
            result,
        }
    }
}

/// Whether `cmd` may grow the store, so is refused while it is out of space (etcd's capped
/// applier): a put, a txn with a put in either branch at any depth, a lease grant. Deletes,
/// compaction and revokes free space and pass.
fn grows(cmd: &Command) -> bool {
    fn puts(list: &[RequestOp]) -> bool {
        list.iter().any(|op| match op {
            RequestOp::Put(_) => true,
            RequestOp::Txn(t) => puts(&t.success) || puts(&t.failure),
            _ => false,
        })
    }
    match cmd {
        Command::Put(_) | Command::LeaseGrant { .. } | Command::LeaseGrantOwned { .. } => true,
        Command::Txn(t) => puts(&t.success) || puts(&t.failure),
        Command::As { cmd, .. } | Command::Once { cmd, .. } => grows(cmd),
        _ => false,
    }
}

/// The leases a write would attach keys to (both branches of a txn, nested ones included).
pub(crate) fn attached_leases(cmd: &Command, out: &mut Vec<i64>) {
    fn walk(list: &[RequestOp], out: &mut Vec<i64>) {
        for op in list {
            match op {
                RequestOp::Put(p) if p.lease != 0 => out.push(p.lease),
                RequestOp::Txn(t) => {
                    walk(&t.success, out);
                    walk(&t.failure, out);
                }
                _ => {}
            }
        }
    }
    match cmd {
        Command::Put(p) if p.lease != 0 => out.push(p.lease),
        Command::Txn(t) => {
            walk(&t.success, out);
            walk(&t.failure, out);
        }
        Command::Once { cmd, .. } => attached_leases(cmd, out),
        _ => {}
    }
}

/// The state machine's state as a snapshot holds it: the data, then the lease owners, then
/// the alarms, then the write sessions (which [`Data`]'s own encoding leaves out, so snapshots
/// of the earlier formats still read).
pub fn encode_data(data: &Data) -> std::io::Result<Vec<u8>> {
    let mut bytes = bincode::serialize(data).map_err(std::io::Error::other)?;
    bincode::serialize_into(&mut bytes, &data.mvcc.lease_owners())
        .map_err(std::io::Error::other)?;
    bincode::serialize_into(&mut bytes, &data.alarms).map_err(std::io::Error::other)?;
    bincode::serialize_into(&mut bytes, &data.sessions).map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// The state of a snapshot: see [`encode_data`].
pub fn decode_data(bytes: &[u8]) -> std::io::Result<Data> {
    let mut cursor = Cursor::new(bytes);
    let mut data: Data = bincode::deserialize_from(&mut cursor).map_err(std::io::Error::other)?;
    if (cursor.position() as usize) < bytes.len() {
        let owners: BTreeMap<i64, String> =
            bincode::deserialize_from(&mut cursor).map_err(std::io::Error::other)?;
        data.mvcc.set_lease_owners(owners);
    }
    if (cursor.position() as usize) < bytes.len() {
        data.alarms = bincode::deserialize_from(&mut cursor).map_err(std::io::Error::other)?;
    }
    if (cursor.position() as usize) < bytes.len() {
        data.sessions = bincode::deserialize_from(&mut cursor).map_err(std::io::Error::other)?;
    }
    data.mvcc.recount();
    Ok(data)
}
