//! The Raft log: entries in a write-ahead log ([`crate::wal`]), vote and purge/commit points
//! in sled. The only module that knows sled.
//!
//! An append is acknowledged to Raft only after it is on disk: [`RaftLogStorage::append`]
//! writes the records and runs `fdatasync` before it completes the callback. It does so inline
//! on purpose. openraft 0.9's RaftCore waits for that callback before it does anything else
//! (replicating the new entries included), so only one append is ever outstanding and a
//! separate sync thread can form no groups; it only added two thread hand-offs per write
//! (measured with `mesh-bench kv`: inline, put with 1 client +10%, put with 256 clients
//! +10%). Throughput under load comes from batching requests into entries (`propose.rs`).
//! Entries are bincode-encoded `openraft::Entry`s.
//!
//! The vote and the purge point are written to sled and flushed before the call returns; the
//! committed index is written without a flush (losing it in a crash only means re-committing).

#![expect(
    clippy::result_large_err,
    reason = "openraft's StorageError is the error type of its storage traits"
)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::raft_types::{NodeId, TypeConfig};
use crate::wal::Wal;

type Entry = openraft::Entry<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Encoded bytes of entries one AppendEntries carries at most, beyond its first entry (as
/// etcd's `MaxSizePerMsg`, 1 MiB). openraft 0.9 bounds a batch only by count (300 entries) and
/// gives each AppendEntries one heartbeat interval; a follower behind by hundreds of large Txns
/// (a mirror's initial copy at 255 remotes) was sent payloads it could not take in that time,
/// and every timeout sent them again: seen as replication timeouts and a follower growing to
/// 1.7 GiB while it caught up (`mesh-bench scale`).
pub const APPEND_BYTES: usize = 1024 * 1024;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Raft log storage. Cheap to clone: clones share the log, the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    /// Vote, committed log id and last purged log id.
    db: sled::Db,
    meta: sled::Tree,
    /// The entries. Held only for page-cache writes and reads, never across a sync.
    wal: Arc<Mutex<Wal>>,
    /// Number of appends so far and number of disk syncs, for metrics.
    stats: Arc<FlushStats>,
}

/// Counters of the log's appends and disk syncs.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Append calls acknowledged.
    pub appends: std::sync::atomic::AtomicU64,
    /// Disk syncs that acknowledged them.
    pub flushes: std::sync::atomic::AtomicU64,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wal = self.wal();
        f.debug_struct("LogStore")
            .field("first", &wal.first())
            .field("end", &wal.end())
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (or creates) the log under `dir`: the WAL in `dir/wal`, the metadata in a sled
    /// database in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from our explicit flushes, not from a background timer.
            .flush_every_ms(None)
            .open()
            .map_err(std::io::Error::other)?;
        let meta = db.open_tree("meta").map_err(std::io::Error::other)?;
        let mut wal = Wal::open(&dir.join("wal"))?;
        if let Some(bytes) = meta.get(LAST_PURGED).map_err(std::io::Error::other)? {
            let purged: LogId<NodeId> = bincode::deserialize(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("purge point: {e}"))
            })?;
            wal.purge(purged.index)?;
        }
        Ok(Self {
            db,
            meta,
            wal: Arc::new(Mutex::new(wal)),
            stats: Arc::new(FlushStats::default()),
        })
    }

    /// Bytes the log and its metadata occupy on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.wal().bytes() + self.db.size_on_disk().unwrap_or(0)
    }

    /// Append and sync counters.
    pub fn stats(&self) -> Arc<FlushStats> {
        self.stats.clone()
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        // A panic while holding the lock leaves the WAL as it was after its last whole call.
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn flush_meta(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, AnyError> {
        match self.meta.get(key).map_err(|e| AnyError::new(&e))? {
            None => Ok(None),
            Some(v) => bincode::deserialize(&v)
                .map(Some)
                .map_err(|e| AnyError::new(&e)),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), AnyError> {
        let bytes = bincode::serialize(value).map_err(|e| AnyError::new(&e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| AnyError::new(&e))?;
        Ok(())
    }

    /// The entries from `start` until `stop` or the end of the WAL, stopping before the one
    /// that would take their encoded size past `budget` (the first is always included).
    fn entries(wal: &Wal, start: u64, stop: u64, budget: usize) -> StorageResult<Vec<Entry>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for index in start..stop {
            let raw = match wal.read(index) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => {
                    return Err(StorageIOError::read_log_at_index(index, AnyError::new(&e)).into());
                }
            };
            if !out.is_empty() && bytes.saturating_add(raw.len()) > budget {
                break;
            }
            bytes = bytes.saturating_add(raw.len());
            out.push(decode_entry(&raw)?);
        }
        Ok(out)
    }

    /// The entry at `index`, if the WAL holds it.
    fn entry(wal: &Wal, index: u64) -> StorageResult<Option<Entry>> {
        match wal.read(index) {
            Ok(Some(bytes)) => decode_entry(&bytes).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_log_at_index(index, AnyError::new(&e)).into()),
        }
    }
}

fn decode_entry(bytes: &[u8]) -> StorageResult<Entry> {
    bincode::deserialize(bytes).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let wal = self.wal();
        let (Some(first), Some(end)) = (wal.first(), wal.end()) else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        }
        .max(first);
        let stop = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => end,
        }
        .min(end);
        Self::entries(&wal, start, stop, usize::MAX)
    }

    /// What the leader sends a follower in one AppendEntries: entries from `start`, at most
    /// [`APPEND_BYTES`] of them (always at least one).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> StorageResult<Vec<Entry>> {
        let wal = self.wal();
        let start = wal.first().map_or(start, |first| start.max(first));
        Self::entries(&wal, start, end, APPEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .read_meta(LAST_PURGED)
            .map_err(StorageIOError::read_logs)?;
        let last_entry = {
            let wal = self.wal();
            match wal.end() {
                Some(end) => Self::entry(&wal, end - 1)?,
                None => None,
            }
        };
        // The WAL hides purged entries, so any entry it holds is past the purge point.
        let last_log_id = last_entry.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE, vote)
            .map_err(StorageIOError::write_vote)?;
        self.flush_meta()
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.read_meta(VOTE).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed on its own: a committed index lost in a crash is only an optimization
        // lost (Raft recommits it).
        self.write_meta(COMMITTED, &committed)
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let c: Option<Option<LogId<NodeId>>> = self
            .read_meta(COMMITTED)
            .map_err(StorageIOError::read_logs)?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut first = None;
        let mut encoded = Vec::new();
        for entry in entries {
            first.get_or_insert(entry.log_id);
            let bytes = bincode::serialize(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            encoded.push(bytes);
        }
        let Some(first) = first else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let active = {
            let mut wal = self.wal();
            wal.append(first.index, encoded.iter().map(Vec::as_slice))
                .map_err(|e| StorageIOError::write_log_entry(first, AnyError::new(&e)))?;
            wal.active_file()
        };
        // Outside the lock, so the replication tasks keep reading the log meanwhile.
        let synced = active.map_or(Ok(()), |f| f.sync_data());
        self.stats.appends.fetch_add(1, Relaxed);
        if let Err(e) = &synced {
            tracing::error!(error = %e, "syncing the Raft log failed");
        } else {
            self.stats.flushes.fetch_add(1, Relaxed);
        }
        callback.log_io_completed(synced);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.wal()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Make the purge point durable first: a crash before the segments are gone leaves
        // extra entries, never a hole.
        self.write_meta(LAST_PURGED, &log_id)
            .map_err(StorageIOError::write_logs)?;
        self.flush_meta()
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.wal()
            .purge(log_id.index)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
