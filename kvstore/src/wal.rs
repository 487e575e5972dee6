//! The Raft log's entries as an append-only write-ahead log of segment files.
//!
//! Why not sled: a Raft log is written strictly in order and read back mostly at its tail,
//! which a plain file does with one `write` and one `fdatasync`. Profiling `mesh-bench kv`
//! (put, 256 clients) with the entries in sled showed sled's I/O thread pool taking about 70%
//! of the leader's CPU samples; the log was the bottleneck of every write.
//!
//! # Format
//! A directory of segments named `<first index, 20 digits>.wal`. A segment is a sequence of
//! records `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`, one per entry, in
//! index order; a new segment starts once the active one exceeds [`SEGMENT_BYTES`].
//!
//! # Durability
//! [`Wal::append`] only writes (to the page cache); [`Wal::sync`] (or `fdatasync` on
//! [`Wal::active_file`] without holding the log) makes every append before it durable. A full
//! segment is synced before the next one is created, so `sync` only needs the
//! active segment. On open, a write that never completed at the end of the last segment (a
//! crash before its sync: a cut-short record, a bad checksum with nothing valid after it, a
//! zero-filled tail; a length of 0 always ends the data) is cut off. Damage with a valid
//! record after it, or in any segment but the last, is an error that leaves the files as they
//! are: acknowledged entries are never dropped.
//!
//! This module is synchronous and knows nothing of openraft beyond indexes; the caller encodes
//! entries.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment size after which the next append starts a new segment (as etcd's WAL).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of a record's header: payload length and CRC.
const HEADER: usize = 8;
/// Larger payloads are treated as corruption (a Raft entry is bounded by the request limit).
const MAX_PAYLOAD: u32 = 64 * 1024 * 1024;
const SUFFIX: &str = ".wal";

/// One segment file and where each of its records starts.
#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// `offsets[i]` is where the record of index `first + i` starts.
    offsets: Vec<u64>,
    /// Bytes of whole records (the file's length once written).
    len: u64,
}

impl Segment {
    /// One past the last index it holds.
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    fn record_len(&self, i: usize) -> u64 {
        let next = self.offsets.get(i + 1).copied().unwrap_or(self.len);
        next - self.offsets[i]
    }
}

/// The write-ahead log: entries `first()..end()`, contiguous.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    /// Oldest first; the last one is the active segment appends go to.
    segments: VecDeque<Segment>,
    segment_bytes: u64,
    /// Entries below this index are purged: never read, even while a segment still holds them.
    floor: u64,
}

impl Wal {
    /// Opens the log in `dir` (created if missing) and recovers its segments.
    pub fn open(dir: &Path) -> io::Result<Wal> {
        Wal::open_with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with another segment size (tests use small segments).
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = name.strip_suffix(SUFFIX) {
                let first = first
                    .parse::<u64>()
                    .map_err(|_| corrupt(format!("unexpected file {name} in {}", dir.display())))?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_owned(),
            segments: VecDeque::new(),
            segment_bytes,
            floor: 0,
        };
        let count = firsts.len();
        for (n, first) in firsts.into_iter().enumerate() {
            let segment = recover(&wal.segment_path(first), first, n + 1 == count)?;
            if let Some(prev) = wal.segments.back()
                && prev.end() != first
            {
                return Err(corrupt(format!(
                    "segment {} does not follow segment {} (ends at {})",
                    first,
                    prev.first,
                    prev.end()
                )));
            }
            wal.segments.push_back(segment);
        }
        Ok(wal)
    }

    /// Index of the first entry held and not purged, if any.
    pub fn first(&self) -> Option<u64> {
        let first = self.segments.front()?.first.max(self.floor);
        (first < self.physical_end()?).then_some(first)
    }

    /// One past the last index held; `None` when nothing unpurged is held.
    pub fn end(&self) -> Option<u64> {
        self.first().and(self.physical_end())
    }

    /// One past the last index in the segments, purged or not.
    fn physical_end(&self) -> Option<u64> {
        self.segments.back().map(Segment::end)
    }

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Appends records for indexes `index, index + 1, …`. `index` must be [`Wal::end`] (any
    /// index when everything held is purged). Written, not yet durable: see [`Wal::sync`].
    pub fn append<'a>(
        &mut self,
        index: u64,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<()> {
        if let Some(end) = self.physical_end()
            && end != index
        {
            if self.end().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("append at {index}, but the log ends before {end}"),
                ));
            }
            // Everything held is purged (a snapshot moved past it): start afresh at `index`.
            self.remove_segments_below(u64::MAX)?;
        }
        let roll = match self.segments.back() {
            None => true,
            Some(active) => active.len >= self.segment_bytes,
        };
        if roll {
            self.start_segment(index)?;
        }
        let active = self.segments.back_mut().expect("an active segment");
        let mut buf = Vec::new();
        for payload in payloads {
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|len| *len <= MAX_PAYLOAD)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "entry too large"))?;
            active.offsets.push(active.len + buf.len() as u64);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            buf.extend_from_slice(payload);
        }
        if let Err(e) = active.file.write_all_at(&buf, active.len) {
            // Forget the records we failed to write; the next append overwrites the bytes.
            active.offsets.truncate(
                active
                    .offsets
                    .partition_point(|offset| *offset < active.len),
            );
            return Err(e);
        }
        active.len += buf.len() as u64;
        Ok(())
    }

    /// The active segment's file: `fdatasync` on it makes every append so far durable (full
    /// segments were synced when they were closed).
    pub fn active_file(&self) -> Option<Arc<File>> {
        self.segments.back().map(|s| s.file.clone())
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> io::Result<()> {
        match self.active_file() {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// The payload of `index`; `None` outside `first()..end()`.
    pub fn read(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(segment) = self.segment_of(index).filter(|_| index >= self.floor) else {
            return Ok(None);
        };
        let i = (index - segment.first) as usize;
        let mut record = vec![0; segment.record_len(i) as usize];
        segment
            .file
            .read_exact_at(&mut record, segment.offsets[i])?;
        if check_record(&record).is_none() {
            return Err(corrupt(format!(
                "record {index} in {} fails its check",
                segment.path.display()
            )));
        }
        // Keep the one buffer: drop the header in place.
        record.drain(..HEADER);
        Ok(Some(record))
    }

    /// Removes every entry from `index` on (a conflicting suffix); durable when it returns.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        // Newest first, so a crash in between leaves a shorter log, never a hole.
        while let Some(last) = self.segments.back() {
            if last.first < index {
                break;
            }
            let last = self.segments.pop_back().expect("checked");
            fs::remove_file(&last.path)?;
        }
        if let Some(last) = self.segments.back_mut()
            && last.end() > index
        {
            let keep = (index - last.first) as usize;
            last.len = last.offsets[keep];
            last.offsets.truncate(keep);
            last.file.set_len(last.len)?;
            last.file.sync_all()?;
        }
        sync_dir(&self.dir)
    }

    /// Forgets every entry `<= index` (the caller has made durable that they are purged):
    /// they are never read again, and segments holding only such entries are deleted. Also
    /// how the caller restores its purge point after a restart.
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        self.floor = self.floor.max(index.saturating_add(1));
        self.remove_segments_below(self.floor)
    }

    /// Deletes, oldest first, every segment that ends at or before `floor`.
    fn remove_segments_below(&mut self, floor: u64) -> io::Result<()> {
        let mut removed = false;
        while let Some(oldest) = self.segments.front() {
            if oldest.end() > floor {
                break;
            }
            let oldest = self.segments.pop_front().expect("checked");
            fs::remove_file(&oldest.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}{SUFFIX}"))
    }

    fn segment_of(&self, index: u64) -> Option<&Segment> {
        let at = self.segments.partition_point(|s| s.end() <= index);
        self.segments
            .get(at)
            .filter(|s| s.first <= index && index < s.end())
    }

    /// Closes the active segment (synced) and starts a new, empty one at `first`.
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        if let Some(active) = self.segments.back() {
            active.file.sync_data()?;
        }
        let path = self.segment_path(first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            len: 0,
        });
        Ok(())
    }
}

/// Reads a segment's records. In the last segment a bad tail (torn write) is cut off; in any
/// other segment it is corruption.
fn recover(path: &Path, first: u64, last: bool) -> io::Result<Segment> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let bytes = fs::read(path)?;
    let mut offsets = Vec::new();
    let mut at = 0usize;
    let damage = loop {
        if at == bytes.len() {
            break None;
        }
        let rest = &bytes[at..];
        // A zero length ends the data: a zero-filled tail, never a record.
        if rest.len() >= 4 && rest[..4] == [0; 4] {
            break Some(Damage::ZeroLength);
        }
        match (
            record_len(rest),
            record_len(rest).and_then(|n| check_record(&rest[..n])),
        ) {
            (Some(len), Some(_)) => {
                offsets.push(at as u64);
                at += len;
            }
            (Some(len), None) => break Some(Damage::Crc { next: at + len }),
            (None, _) => break Some(Damage::Header),
        }
    };
    if let Some(damage) = damage {
        let damaged = |what: &str| {
            corrupt(format!(
                "{} is damaged at byte {at} of {} ({what}); the data is left as it is",
                path.display(),
                bytes.len()
            ))
        };
        if !last {
            return Err(damaged("not the last segment"));
        }
        match damage {
            Damage::ZeroLength if bytes[at..].iter().any(|b| *b != 0) => {
                return Err(damaged("a zero length followed by data"));
            }
            Damage::ZeroLength => {}
            Damage::Crc { next } if valid_record_at(&bytes, next) => {
                return Err(damaged(
                    "a record fails its checksum and valid records follow it",
                ));
            }
            // The header holds, so the record's end is known and nothing valid follows it.
            Damage::Crc { .. } => {}
            // The header itself is cut short or wrong: look for a record past it.
            Damage::Header => {
                if let Some(found) = valid_record_within(&bytes, at + 1, SCAN_BYTES) {
                    return Err(damaged(&format!(
                        "a damaged record, and a valid one at byte {found} after it"
                    )));
                }
            }
        }
        // What is left is a write that never completed (a crash before its sync): it was
        // never acknowledged, so it is cut off.
        tracing::warn!(
            segment = %path.display(),
            valid_bytes = at,
            dropped_bytes = bytes.len() - at,
            "cutting a torn write off the end of the log"
        );
        file.set_len(at as u64)?;
        file.sync_all()?;
    }
    Ok(Segment {
        first,
        path: path.to_owned(),
        file: Arc::new(file),
        offsets,
        len: at as u64,
    })
}

/// What stopped recovery at a byte of the last segment.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Four zero bytes where a record's length belongs.
    ZeroLength,
    /// A whole record whose payload fails its checksum; the next record would start at `next`.
    Crc {
        /// Where the next record would start.
        next: usize,
    },
    /// A header that is cut short or claims more bytes than follow.
    Header,
}

/// How far past a damaged record a valid one is looked for: a record is at most the request
/// limit plus its encoding, so one that follows damage starts within this.
const SCAN_BYTES: usize = 4 << 20;

/// Whether a valid, non-empty record starts at `at`.
fn valid_record_at(bytes: &[u8], at: usize) -> bool {
    let Some(rest) = bytes.get(at..) else {
        return false;
    };
    rest.get(..4).is_some_and(|l| l != [0; 4])
        && record_len(rest).is_some_and(|n| check_record(&rest[..n]).is_some())
}

/// The first offset in `from..from + limit` where a valid, non-empty record starts.
fn valid_record_within(bytes: &[u8], from: usize, limit: usize) -> Option<usize> {
    let end = bytes.len().min(from.saturating_add(limit));
    (from..end).find(|at| valid_record_at(bytes, *at))
}

/// Length of the whole record at the start of `bytes`, if its header fits and claims a
/// payload that does.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return None;
    }
    let total = HEADER + len as usize;
    (bytes.len() >= total).then_some(total)
}

/// The payload of a whole record, if its CRC matches.
fn check_record(record: &[u8]) -> Option<&[u8]> {
    let total = record_len(record)?;
    let crc = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
    let payload = &record[HEADER..total];
    (crc32fast::hash(payload) == crc).then_some(payload)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the small file `name` in `dir` with `contents` so that a crash leaves the old
/// contents or the new, never a mix: written to a temporary file, fsynced, renamed over it, and
/// the directory fsynced.
pub(crate) fn replace_file(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, contents)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests;
