//! The replicated state machine: the MVCC key space, leases, member attributes and the
//! cluster id, applied from committed log entries.
//!
//! The state lives in memory; durability is the log's and the snapshot's. On start the last
//! snapshot file is loaded and openraft re-applies the committed log after it. A snapshot is
//! written to a temporary file, fsynced and renamed before openraft may purge the log it
//! covers, so a crash at any step leaves either the old snapshot with its log or the new one.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use tokio::sync::watch;

use crate::membership::cluster_id_of;
use crate::raft_types::{Member, Meta, NodeId, Outcome, Reply, TypeConfig};
use crate::snapshot_file::SnapshotFile;
use crate::watch_hub::WatchHub;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

pub(crate) use crate::data::attached_leases;
pub use crate::data::{ALARM_NOSPACE, Data, Published, decode_data, encode_data};

/// The state shared between the Raft state machine and the API: readers take the lock
/// briefly and never across an await.
#[derive(Debug)]
pub struct Shared {
    data: RwLock<Data>,
    /// The current revision, for watchers to wait on.
    revision: watch::Sender<i64>,
    /// Entries applied since start, for metrics.
    applied: AtomicU64,
    /// The watch streams and the keys they watch, told of writes under the write lock.
    pub hub: Arc<WatchHub>,
    /// [`Mvcc::bytes`] and whether NOSPACE is raised, as of the last apply: the quota check
    /// of every write reads these rather than taking the lock the applies need.
    usage: (AtomicU64, std::sync::atomic::AtomicBool),
    /// Whether write sessions are on, as of the last apply.
    sessions: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Read access to the state.
    pub fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().expect("state machine lock poisoned")
    }

    /// The counted size and whether the store is out of space, as of the last apply.
    pub fn usage(&self) -> (u64, bool) {
        (
            self.usage.0.load(Ordering::Relaxed),
            self.usage.1.load(Ordering::Relaxed),
        )
    }

    /// Whether members number their writes ([`crate::session`]), as of the last apply.
    pub fn sessions_enabled(&self) -> bool {
        self.sessions.load(Ordering::Relaxed)
    }

    fn record_usage(&self, data: &Data) {
        self.usage.0.store(data.mvcc.bytes(), Ordering::Relaxed);
        self.usage.1.store(data.out_of_space(), Ordering::Relaxed);
        self.sessions
            .store(data.sessions.enabled, Ordering::Relaxed);
    }

    /// Wakes when the revision changes.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Entries applied since start.
    pub fn applied_entries(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    fn replace(&self, data: Data) {
        let rev = data.mvcc.revision();
        let mut guard = self.data.write().expect("state machine lock poisoned");
        *guard = data;
        self.record_usage(&guard);
        // Anything may have changed: every stream looks.
        self.hub.changed_everything(rev);
        drop(guard);
        self.revision.send_replace(rev);
    }
}

/// The openraft state machine over [`Shared`], with its snapshot file.
#[derive(Debug)]
pub struct StateMachine {
    shared: Arc<Shared>,
    file: Arc<SnapshotFile>,
    /// Snapshots built by this process, to give each a unique id.
    built: Arc<AtomicU64>,
    /// Where the fault-injection build looks for its hold-apply file.
    #[cfg(feature = "fault-injection")]
    dir: std::path::PathBuf,
}

impl StateMachine {
    /// Opens the state machine under `dir`, loading the last snapshot if there is one.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let (file, found) = SnapshotFile::open(dir)?;
        // Without a snapshot, the state before the first entry: a restored backup's, or empty.
        let data = match found {
            Some((_, bytes)) => decode_data(&bytes)?,
            None => crate::backup::read_seed(dir)?.unwrap_or_default(),
        };
        let (revision, _) = watch::channel(data.mvcc.revision());
        let shared = Shared {
            data: RwLock::new(Data::default()),
            revision,
            applied: AtomicU64::new(0),
            usage: Default::default(),
            sessions: Default::default(),
            hub: Arc::default(),
        };
        shared.record_usage(&data);
        *shared.data.write().expect("state machine lock poisoned") = data;
        Ok(Self {
            shared: Arc::new(shared),
            file: Arc::new(file),
            built: Arc::new(AtomicU64::new(0)),
            #[cfg(feature = "fault-injection")]
            dir: dir.to_owned(),
        })
    }

    /// The state, for the API.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Bytes of the snapshot file in `dir`, for `dbSize`.
    pub fn snapshot_size(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(crate::snapshot_file::FILE)).map_or(0, |m| m.len())
    }
}

fn io_snapshot_err(meta: Option<&Meta>, e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::new(&e)).into()
}

/// Builds a snapshot from a copy of the state taken under the lock.
#[derive(Debug)]
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    file: Arc<SnapshotFile>,
    built: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = self.shared.read().clone();
        let n = self.built.fetch_add(1, Ordering::Relaxed);
        let meta = Meta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
            snapshot_id: format!("{}-{}", data.last_applied.map_or(0, |l| l.index), n),
        };
        let file = self.file.clone();
        let meta2 = meta.clone();
        // Serializing and fsyncing a large state takes a while: keep it off the runtime.
        let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let bytes = encode_data(&data)?;
            file.write(&meta2, &bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| io_snapshot_err(Some(&meta), std::io::Error::other(e)))?
        .map_err(|e| io_snapshot_err(Some(&meta), e))?;
        tracing::info!(
            last_log = ?meta.last_log_id,
            bytes = bytes.len(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let data = self.shared.read();
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Reply>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        #[cfg(feature = "fault-injection")]
        crate::fault::hold_apply(&self.dir).await;
        let mut replies = Vec::new();
        let revision = {
            let mut data = self
                .shared
                .data
                .write()
                .expect("state machine lock poisoned");
            let mut changed = Vec::new();
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let reply = match &entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(cmd) => {
                        let before = data.mvcc.revision();
                        let reply = data.apply(cmd);
                        for rev in before + 1..=data.mvcc.revision() {
                            changed.extend_from_slice(data.mvcc.keys_changed_at(rev));
                        }
                        Some(reply)
                    }
                    EntryPayload::Membership(m) => {
                        if data.cluster_id == 0 {
                            data.cluster_id = cluster_id_of(m.voter_ids());
                        }
                        data.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        None
                    }
                };
                replies.push(reply.unwrap_or(Reply {
                    revision: data.mvcc.revision(),
                    result: Ok(Outcome::Done),
                }));
            }
            // Still under the write lock: whoever reads this revision sees who it concerned.
            self.shared.hub.changed(data.mvcc.revision(), &changed);
            self.shared.record_usage(&data);
            data.mvcc.revision()
        };
        self.shared
            .applied
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        self.shared.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            file: self.file.clone(),
            built: self.built.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let mut data = decode_data(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        let file = self.file.clone();
        let meta2 = meta.clone();
        let bytes2 = bytes.clone();
        tokio::task::spawn_blocking(move || file.write(&meta2, &bytes2))
            .await
            .map_err(|e| io_snapshot_err(Some(meta), std::io::Error::other(e)))?
            .map_err(|e| io_snapshot_err(Some(meta), e))?;
        tracing::info!(last_log = ?meta.last_log_id, bytes = bytes.len(), "snapshot installed");
        self.shared.replace(data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let file = self.file.clone();
        let found = tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(|e| io_snapshot_err(None, std::io::Error::other(e)))?
            .map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&e)))
            })?;
        Ok(found.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::Command;
    use crate::request::{PutRequest, RequestOp};

    fn put(key: &str, value: &str) -> Command {
        Command::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..PutRequest::default()
        })
    }

    #[test]
    fn a_batch_applies_in_order_as_separate_requests() {
        let mut data = Data::default();
        let start = data.mvcc.revision();
        let Command::Put(mut second) = put("a", "2") else {
            unreachable!()
        };
        second.prev_kv = true;
        let Command::Put(mut missing) = put("b", "") else {
            unreachable!()
        };
        missing.ignore_value = true;
        let batch = Command::Batch(vec![
            put("a", "1"),
            Command::Put(second),
            Command::Put(missing),
            put("c", "3"),
        ]);
        let reply = data.apply(&batch);
        assert_eq!(reply.revision, start + 3);
        let Ok(Outcome::Batch(replies)) = reply.result else {
            panic!("{reply:?}")
        };
        let revisions: Vec<i64> = replies.iter().map(|r| r.revision).collect();
        // A failed request changes nothing and takes no revision.
        assert_eq!(revisions, [start + 1, start + 2, start + 2, start + 3]);
        match &replies[1].result {
            Ok(Outcome::Put(p)) => {
                assert_eq!(p.prev_kv.as_ref().unwrap().value.as_ref(), b"1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(replies[2].result, Err(crate::error::Error::KeyNotFound));
    }

    fn seq(n: u64) -> crate::session::Seq {
        crate::session::Seq { run: 1, n }
    }

    fn once(n: u64, done_below: u64, cmd: Command) -> Command {
        Command::Once {
            member: 9,
            seq: seq(n),
            done_below: seq(done_below),
            cmd: Box::new(cmd),
        }
    }

    #[test]
    fn a_numbered_write_sent_twice_is_applied_once_and_both_copies_get_its_reply() {
        let mut data = Data::default();
        let Command::Put(mut p) = put("a", "1") else {
            unreachable!()
        };
        p.prev_kv = true;
        let first = data.apply(&once(10, 10, Command::Put(p.clone())));
        let revision = data.mvcc.revision();
        // The copy comes in a batch, behind another member's write to the same key.
        let other = Command::Once {
            member: 4,
            seq: seq(10),
            done_below: seq(10),
            cmd: Box::new(put("a", "2")),
        };
        let reply = data.apply(&Command::Batch(vec![other, once(10, 10, Command::Put(p))]));
        let Ok(Outcome::Batch(replies)) = reply.result else {
            panic!("{reply:?}")
        };
        assert_eq!(
            replies[1], first,
            "the copy is answered with the first reply"
        );
        assert_eq!(
            data.mvcc.revision(),
            revision + 1,
            "only member 4's write applied"
        );

        // The copy survives a snapshot: a member that installs one still knows it.
        let mut back = decode_data(&encode_data(&data).unwrap()).unwrap();
        assert_eq!(back.sessions, data.sessions);
        let again = back.apply(&once(10, 10, put("a", "1")));
        assert_eq!(again, first);
        assert_eq!(back.mvcc.revision(), revision + 1);

        // Once the member's waiting writes are past 10, its reply is forgotten and a late
        // copy is refused, changing nothing.
        back.apply(&once(11, 11, put("b", "1")));
        assert!(!back.sessions.members[&9].replies.contains_key(&seq(10)));
        let late = back.apply(&once(10, 10, put("a", "1")));
        assert_eq!(late.result, Err(crate::error::Error::Timeout));
        assert_eq!(back.mvcc.revision(), revision + 2);

        // A snapshot written before sessions existed reads with them off.
        assert!(
            !decode_data(&bincode::serialize(&data).unwrap())
                .unwrap()
                .sessions
                .enabled
        );
        back.apply(&Command::EnableWriteSessions);
        assert!(
            decode_data(&encode_data(&back).unwrap())
                .unwrap()
                .sessions
                .enabled
        );
    }

    fn put_leased(key: &str, lease: i64) -> Command {
        Command::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            lease,
            ..PutRequest::default()
        })
    }

    #[test]
    fn a_revoke_limited_to_some_keys_is_refused_when_the_lease_holds_others() {
        let mut data = Data::default();
        let own: bytes::Bytes = b"mesh/v1/apps/nodekeys/n1".to_vec().into();
        data.apply(&Command::LeaseGrant { id: 7, ttl: 60 });
        data.apply(&put_leased("mesh/v1/apps/nodekeys/n1", 7));
        data.apply(&put_leased("mesh/config/x", 7));
        let before = data.mvcc.revision();
        let limited = Command::LeaseRevokeIfOnly {
            id: 7,
            keys: vec![own.clone()],
        };
        let refused = data.apply(&limited);
        assert_eq!(refused.result, Err(crate::error::Error::PermissionDenied));
        assert_eq!(
            data.mvcc.revision(),
            before,
            "a refused revoke changes nothing"
        );
        assert!(data.mvcc.lease(7).is_some());

        data.apply(&Command::DeleteRange(crate::request::DeleteRangeRequest {
            key: b"mesh/config/x".to_vec().into(),
            ..Default::default()
        }));
        assert!(data.apply(&limited).result.is_ok());
        assert!(data.mvcc.lease(7).is_none());
    }

    #[test]
    fn a_limited_caller_uses_only_the_leases_it_granted_and_owners_survive_snapshots() {
        let mut data = Data::default();
        let a = "spiffe://raftmesh/cluster/apps/agent/node-1".to_owned();
        let b = "spiffe://raftmesh/cluster/apps/agent/node-2".to_owned();
        let grant = |id, owner: &String| Command::LeaseGrantOwned {
            id,
            ttl: 60,
            owner: owner.clone(),
        };
        data.apply(&grant(1, &a));
        data.apply(&grant(2, &a));
        data.apply(&Command::LeaseGrant { id: 3, ttl: 60 });
        let as_b = |cmd| Command::As {
            owner: b.clone(),
            cmd: Box::new(cmd),
        };
        let nested = Command::Txn(crate::request::TxnRequest {
            failure: vec![RequestOp::Txn(crate::request::TxnRequest {
                success: vec![RequestOp::Put(PutRequest {
                    key: b"k".to_vec().into(),
                    lease: 1,
                    ..PutRequest::default()
                })],
                ..Default::default()
            })],
            ..Default::default()
        });
        let before = data.mvcc.revision();
        let denied = Err(crate::error::Error::PermissionDenied);
        for cmd in [
            as_b(put_leased("k", 1)),
            as_b(put_leased("k", 3)),
            as_b(nested),
            Command::LeaseRevokeOwned {
                id: 2,
                owner: b.clone(),
                keys: Vec::new(),
            },
        ] {
            assert_eq!(data.apply(&cmd).result, denied, "{cmd:?}");
        }
        assert_eq!(data.mvcc.revision(), before, "refusals change nothing");
        assert!(data.mvcc.lease(2).is_some());

        // The owners and alarms are in the snapshot; one of the earlier format still reads.
        data.apply(&Command::Alarm {
            activate: true,
            member: 9,
            alarm: ALARM_NOSPACE,
        });
        let mut back = decode_data(&encode_data(&data).unwrap()).unwrap();
        assert_eq!(back.alarms, data.alarms);
        assert_eq!(
            back.apply(&put_leased("k", 1)).result,
            Err(crate::error::Error::NoSpace),
            "out of space, a put is refused"
        );
        back.alarms.clear();
        assert_eq!(back.mvcc.lease_owners(), data.mvcc.lease_owners());
        assert_eq!(back.mvcc.lease(1).unwrap().owner.as_ref(), Some(&a));
        let old = decode_data(&bincode::serialize(&data).unwrap()).unwrap();
        assert!(old.mvcc.lease_owners().is_empty());
        let mut data = back;

        let as_a = Command::As {
            owner: a.clone(),
            cmd: Box::new(put_leased("k", 1)),
        };
        assert!(data.apply(&as_a).result.is_ok());
        let revoke = |id| Command::LeaseRevokeOwned {
            id,
            owner: a.clone(),
            keys: vec![b"k".to_vec().into()],
        };
        assert!(data.apply(&revoke(2)).result.is_ok());
        assert!(data.apply(&revoke(1)).result.is_ok());
        assert!(data.mvcc.lease(1).is_none());
    }

    /// A snapshot of a state holding `key` = `value`, as of log index `index`.
    fn snapshot_of(index: u64, key: &str, value: &str) -> (Meta, Vec<u8>) {
        let mut data = Data::default();
        data.apply(&put(key, value));
        let meta = Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("test-{index}"),
        };
        (meta, bincode::serialize(&data).unwrap())
    }

    fn value_of(sm: &StateMachine, key: &str) -> String {
        let data = sm.shared.read();
        let r = data
            .mvcc
            .range(&crate::request::RangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })
            .unwrap();
        String::from_utf8_lossy(&r.kvs[0].value).into_owned()
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let (new_meta, new) = snapshot_of(200, "k", "new");
        let (old_meta, old) = snapshot_of(100, "k", "old");
        sm.install_snapshot(&new_meta, Box::new(Cursor::new(new)))
            .await
            .unwrap();
        // A slower, older one (a build racing an install) arrives last.
        sm.install_snapshot(&old_meta, Box::new(Cursor::new(old)))
            .await
            .unwrap();
        drop(sm);
        let sm = StateMachine::open(dir.path()).unwrap();
        assert_eq!(value_of(&sm, "k"), "new");
    }

    #[tokio::test]
    async fn a_damaged_snapshot_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let (meta, bytes) = snapshot_of(10, "k", "vvvvvvvvvvvvvvvv");
        sm.install_snapshot(&meta, Box::new(Cursor::new(bytes)))
            .await
            .unwrap();
        drop(sm);
        // One bit flipped inside the value.
        let path = dir.path().join(crate::snapshot_file::FILE);
        let mut file = std::fs::read(&path).unwrap();
        let at = file
            .windows(16)
            .position(|w| w == b"vvvvvvvvvvvvvvvv")
            .unwrap();
        file[at + 3] ^= 1;
        std::fs::write(&path, &file).unwrap();
        let err = StateMachine::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
