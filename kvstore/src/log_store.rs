//! The Raft log, vote and committed index on sled: the only module that knows sled.
//!
//! An append is acknowledged to Raft only after it is on disk. Appends write into sled's
//! page cache and hand their completion callback to one flusher task; the flusher takes
//! every callback waiting, flushes once, and completes them all (group commit). One
//! `fdatasync` so covers every append that arrived while the previous one ran, which is what
//! makes throughput grow with load instead of being capped by one fsync per entry.
//!
//! Keys of the `log` tree are big-endian indexes, so sled's order is log order. Entries are
//! bincode-encoded `openraft::Entry`s.

#![expect(
    clippy::result_large_err,
    reason = "openraft's StorageError is the error type of its storage traits"
)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use tokio::sync::mpsc;

use crate::raft_types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Raft log storage on sled. Cheap to clone: clones share the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// Entries by big-endian index.
    log: sled::Tree,
    /// Vote, committed log id and last purged log id.
    meta: sled::Tree,
    /// Completion callbacks of appends, waiting for the next group flush.
    flushes: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
    /// Number of appends so far and number of disk flushes, for metrics.
    stats: Arc<FlushStats>,
}

/// Counters of the group commit.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Append calls acknowledged.
    pub appends: std::sync::atomic::AtomicU64,
    /// Disk flushes that acknowledged them.
    pub flushes: std::sync::atomic::AtomicU64,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("entries", &self.log.len())
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (or creates) the log under `dir`. Must be called inside a tokio runtime: it
    /// starts the flusher task.
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from our explicit flushes, not from a background timer.
            .flush_every_ms(None)
            .open()?;
        let log = db.open_tree("log")?;
        let meta = db.open_tree("meta")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(FlushStats::default());
        tokio::spawn(flusher(db.clone(), rx, stats.clone()));
        Ok(Self {
            db,
            log,
            meta,
            flushes: tx,
            stats,
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Group-commit counters.
    pub fn stats(&self) -> Arc<FlushStats> {
        self.stats.clone()
    }

    async fn flush(&self) -> Result<(), sled::Error> {
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
}

/// Completes append callbacks in groups: one flush for everything appended so far.
async fn flusher(
    db: sled::Db,
    mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
    stats: Arc<FlushStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut waiting = Vec::new();
    while rx.recv_many(&mut waiting, 4096).await > 0 {
        let result = db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other);
        stats.flushes.fetch_add(1, Relaxed);
        stats.appends.fetch_add(waiting.len() as u64, Relaxed);
        for cb in waiting.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            cb.log_io_completed(r);
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(bytes: &[u8]) -> StorageResult<Entry> {
    bincode::deserialize(bytes).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let iter = match range.end_bound() {
            Bound::Included(&i) => self.log.range(index_key(start)..=index_key(i)),
            Bound::Excluded(&i) => self.log.range(index_key(start)..index_key(i)),
            Bound::Unbounded => self.log.range(index_key(start)..),
        };
        let out: StorageResult<Vec<Entry>> = iter
            .map(|kv| {
                let (_, v) = kv.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
                decode_entry(&v)
            })
            .collect();
        out
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .read_meta(LAST_PURGED)
            .map_err(StorageIOError::read_logs)?;
        let last = self
            .log
            .last()
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        let last_log_id = match last {
            Some((_, v)) => Some(decode_entry(&v)?.log_id),
            None => last_purged_log_id,
        };
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
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.read_meta(VOTE).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed on its own: it rides on the next log flush. A committed index that is
        // lost in a crash is only an optimization lost (Raft recommits it).
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = bincode::serialize(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        // The flusher is gone only if the runtime is shutting down; then nothing is acked.
        let _ = self.flushes.send(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(index_key(log_id.index)..) {
            let (k, _) = kv.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: a crash between the two steps leaves extra entries,
        // never a hole.
        self.write_meta(LAST_PURGED, &log_id)
            .map_err(StorageIOError::write_logs)?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = kv.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok(())
    }
}
