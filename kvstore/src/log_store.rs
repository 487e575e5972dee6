//! The Raft log: entries in a write-ahead log ([`crate::wal`]), vote and purge/commit points
//! in sled. The only module that knows sled.
//!
//! # Flush, send, count
//! [`RaftLogStorage::append`] writes the entries (to the page cache, where the replication
//! tasks read them at once) and hands the flush to the log's flusher thread; it returns before
//! the flush. The flusher takes every append queued meanwhile, runs one `fdatasync` for all of
//! them, and completes their callbacks in append order (openraft's contract); a failed flush
//! fails every callback of its batch, and openraft stops the member. (Flushing a follower's
//! append inline instead, on openraft's task, was measured: no difference in `mesh-bench kv`'s
//! sequential puts, so the one path stays.)
//!
//! On the leader, openraft (patched: `vendor/openraft/RAFTMESH-PATCH.md`) does not wait for
//! that callback before it replicates: a write's entries go to the followers while the leader
//! flushes them, and the leader counts itself toward the quorum only when its callback comes.
//! So a write waits for one flush on its critical path, the fastest majority's, as with etcd
//! (whose leader sends before it saves, Raft thesis §10.2.1), rather than the leader's flush
//! and then a follower's. Followers still answer an AppendEntries only after their flush
//! (openraft awaits the callback before responding), so every acknowledgement a quorum is
//! counted from is durable: an entry the client was told is committed is on a majority's
//! disks whichever single member then loses its unflushed tail.
//!
//! What the leader may do with entries not yet durable on its own disk, and why it is safe:
//! - *Apply them* once committed (by the followers): if it then crashes and loses them, its
//!   state machine may be ahead of its log; openraft then purges the log up to the applied
//!   point at start-up (`StorageHelper::get_initial_state`) and the member catches up from the
//!   leader, as after installing a snapshot.
//! - *Record a committed index beyond them*: never. [`RaftLogStorage::save_committed`] writes
//!   only a committed index inside the durable log (a lagging committed index only means
//!   re-applying on restart; one past the log's end would ask openraft to re-apply entries that
//!   no longer exist).
//! - *Truncate or purge* while flushes are pending: [`RaftLogStorage::truncate`] and
//!   [`RaftLogStorage::purge`] first wait for every queued flush to finish, so the durable
//!   point moves only forward between them.
//!
//! Entries are bincode-encoded `openraft::Entry`s. The vote and the purge point are written
//! to sled and flushed before the call returns.

#![expect(
    clippy::result_large_err,
    reason = "openraft's StorageError is the error type of its storage traits"
)]

use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};

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
    /// The flusher thread's queue; the thread ends when the last clone is dropped.
    flusher: Arc<Flusher>,
    /// Where the fault-injection build records how far the log is durable.
    #[cfg(feature = "fault-injection")]
    dir: std::path::PathBuf,
}

/// An append waiting for its flush.
struct Pending {
    /// One past its last index.
    end: u64,
    /// The segment it was written to (earlier segments were synced when they filled up).
    file: Option<Arc<File>>,
    callback: LogFlushed<TypeConfig>,
}

/// The handle on the flusher thread.
struct Flusher {
    tx: Mutex<mpsc::Sender<Pending>>,
    /// Appends queued, and the state the thread keeps.
    progress: Arc<(Mutex<Progress>, Condvar)>,
}

/// How far the flusher has come.
#[derive(Debug, Default)]
struct Progress {
    /// Appends handed to the flusher.
    queued: u64,
    /// Appends whose flush has finished (well or not).
    done: u64,
    /// One past the last index known durable.
    durable_end: u64,
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
    /// The directory the log is in (where the fault-injection build looks for fault files).
    #[cfg(feature = "fault-injection")]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

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
        #[cfg(feature = "fault-injection")]
        if crate::fault::lose_unsynced(dir) {
            lose_unsynced_tail(dir, &mut wal)?;
        }
        if let Some(bytes) = meta.get(LAST_PURGED).map_err(std::io::Error::other)? {
            let purged: LogId<NodeId> = bincode::deserialize(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("purge point: {e}"))
            })?;
            wal.purge(purged.index)?;
        }
        // What a previous process wrote is made durable before anything counts on it.
        wal.sync()?;
        let stats = Arc::new(FlushStats::default());
        let progress = Arc::new((
            Mutex::new(Progress {
                durable_end: wal.end().unwrap_or(0),
                ..Progress::default()
            }),
            Condvar::new(),
        ));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (stats, progress, dir) = (stats.clone(), progress.clone(), dir.to_owned());
            std::thread::Builder::new()
                .name("raft-log-flush".into())
                .spawn(move || flush_loop(&rx, &stats, &progress, &dir))?
        };
        drop(thread);
        Ok(Self {
            db,
            meta,
            wal: Arc::new(Mutex::new(wal)),
            stats,
            flusher: Arc::new(Flusher {
                tx: Mutex::new(tx),
                progress,
            }),
            #[cfg(feature = "fault-injection")]
            dir: dir.to_owned(),
        })
    }

    /// Waits until every append handed to the flusher so far is flushed (or failed).
    fn drain(&self) {
        let (lock, cond) = &*self.flusher.progress;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        while p.done < p.queued {
            p = cond.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One past the last index known durable.
    fn durable_end(&self) -> u64 {
        let (lock, _) = &*self.flusher.progress;
        lock.lock().unwrap_or_else(|e| e.into_inner()).durable_end
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
        // Only inside the durable log: the leader may learn of a commit (from its followers)
        // before its own flush of those entries, and a committed index past the log's end
        // after a crash would have openraft re-apply entries that are gone. Skipping it here
        // only leaves the stored index behind; the next one is written.
        if committed.is_some_and(|c| c.index >= self.durable_end()) {
            return Ok(());
        }
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
        let end = first.index + encoded.len() as u64;
        let file = {
            let mut wal = self.wal();
            wal.append(first.index, encoded.iter().map(Vec::as_slice))
                .map_err(|e| StorageIOError::write_log_entry(first, AnyError::new(&e)))?;
            wal.active_file()
        };
        self.stats.appends.fetch_add(1, Relaxed);
        let (lock, _) = &*self.flusher.progress;
        lock.lock().unwrap_or_else(|e| e.into_inner()).queued += 1;
        let pending = Pending {
            end,
            file,
            callback,
        };
        if let Err(mpsc::SendError(p)) = self
            .flusher
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(pending)
        {
            // Only if the flusher thread died (it does not return while a clone is alive).
            p.callback
                .log_io_completed(Err(std::io::Error::other("the log flusher has stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.drain();
        self.wal()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        let (lock, _) = &*self.flusher.progress;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        p.durable_end = p.durable_end.min(log_id.index);
        #[cfg(feature = "fault-injection")]
        record_durable_end(&self.dir, p.durable_end);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.drain();
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

/// The flusher thread: takes every append queued, flushes once for all of them, completes
/// their callbacks in order. Ends when the last [`LogStore`] clone is dropped.
fn flush_loop(
    rx: &mpsc::Receiver<Pending>,
    stats: &FlushStats,
    progress: &(Mutex<Progress>, Condvar),
    dir: &Path,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let last = batch.last().expect("a batch has an append");
        // The last append's segment: every earlier one was synced when it filled up.
        let synced = flush(last.file.as_ref(), last.end, stats, dir);
        let (lock, cond) = progress;
        if synced.is_ok() {
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            p.durable_end = p.durable_end.max(last.end);
        }
        let appends = batch.len() as u64;
        for pending in batch {
            let result = match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            pending.callback.log_io_completed(result);
        }
        // Counted done once their callbacks are completed.
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        p.done += appends;
        cond.notify_all();
    }
}

/// One `fdatasync` of `file` (the active segment), counted; with the fault-injection build,
/// held while a test says so and recorded as the durable end.
#[cfg_attr(
    not(feature = "fault-injection"),
    expect(unused_variables, reason = "`end` and `dir` are the fault's")
)]
fn flush(
    file: Option<&Arc<File>>,
    end: u64,
    stats: &FlushStats,
    dir: &Path,
) -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    crate::fault::hold_flush(dir);
    let synced = file.map_or(Ok(()), |f| f.sync_data());
    match &synced {
        Ok(()) => {
            stats.flushes.fetch_add(1, Relaxed);
            #[cfg(feature = "fault-injection")]
            {
                record_durable_end(dir, end);
                crate::fault::hold_ack(dir);
            }
        }
        Err(e) => tracing::error!(error = %e, "syncing the Raft log failed"),
    }
    synced
}

/// The file beside the log where the fault-injection build records how far it is durable.
#[cfg(feature = "fault-injection")]
fn durable_end_file(dir: &Path) -> std::path::PathBuf {
    dir.join("durable-end")
}

#[cfg(feature = "fault-injection")]
fn record_durable_end(dir: &Path, end: u64) {
    let _ = std::fs::write(durable_end_file(dir), end.to_string());
}

/// Cuts the log back to where its last flush left it (test fault: a power loss).
#[cfg(feature = "fault-injection")]
fn lose_unsynced_tail(dir: &Path, wal: &mut Wal) -> std::io::Result<()> {
    let Ok(text) = std::fs::read_to_string(durable_end_file(dir)) else {
        return Ok(());
    };
    let Ok(durable) = text.trim().parse::<u64>() else {
        return Ok(());
    };
    if let Some(end) = wal.end()
        && end > durable
    {
        tracing::warn!(
            durable_end = durable,
            end,
            "test fault: the Raft log loses its unflushed tail"
        );
        wal.truncate(durable.max(wal.first().unwrap_or(durable)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
