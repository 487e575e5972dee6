//! The state machine's snapshot file: one writer at a time, never an older snapshot over a
//! newer one, a checksum over every byte.
//!
//! A snapshot is built by the state machine (from a copy of its state) while openraft may
//! install one received from the leader; both end in this file. Each write goes to its own
//! temporary file (so two writers never share one), is fsynced and renamed over the file
//! under a lock that also remembers the last log id written: a snapshot covering less than
//! the current file is dropped instead of written, since the log it would need may be purged
//! already.
//!
//! # Format
//! `RMSNAP01`, then bincode of `(meta, data)`, then the CRC-32 of everything before it
//! (little endian). A file without the magic is the earlier format (bincode of `(meta,
//! data)` only) and is read as such. A file whose checksum fails is an error: the member
//! refuses to start rather than load damaged state.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use openraft::LogId;

use crate::raft_types::{Meta, NodeId};

/// The file's name in the snapshot directory.
pub const FILE: &str = "snapshot.bin";
/// What a file in the current format starts with.
const MAGIC: &[u8; 8] = b"RMSNAP01";
/// What temporary files start with (left-over ones are removed on open).
const TEMP: &str = "snapshot.bin.tmp";

/// A snapshot as the file holds it: its meta and the serialized state.
pub type Stored = (Meta, Vec<u8>);

/// The snapshot file of one member.
#[derive(Debug)]
pub struct SnapshotFile {
    dir: PathBuf,
    /// The log id of the snapshot in the file; held while writing, so writes are one at a time.
    last: Mutex<Option<LogId<NodeId>>>,
    /// Distinguishes temporary files of this process.
    temps: AtomicU64,
}

/// Why a snapshot file cannot be read.
fn damaged(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("snapshot {} is damaged: {what}", path.display()),
    )
}

impl SnapshotFile {
    /// The snapshot file in `dir` and its contents, if any; removes temporary files a crash
    /// left behind.
    pub fn open(dir: &Path) -> std::io::Result<(SnapshotFile, Option<Stored>)> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP) {
                std::fs::remove_file(entry.path())?;
            }
        }
        let file = SnapshotFile {
            dir: dir.to_owned(),
            last: Mutex::new(None),
            temps: AtomicU64::new(0),
        };
        let found = file.read()?;
        *file.last.lock().unwrap_or_else(PoisonError::into_inner) =
            found.as_ref().and_then(|(meta, _)| meta.last_log_id);
        Ok((file, found))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Bytes of the file, for `dbSize`.
    pub fn size(&self) -> u64 {
        std::fs::metadata(self.path()).map_or(0, |m| m.len())
    }

    /// The snapshot in the file, checked.
    pub fn read(&self) -> std::io::Result<Option<Stored>> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let body = match bytes.strip_prefix(MAGIC.as_slice()) {
            Some(rest) => {
                let Some(split) = rest.len().checked_sub(4) else {
                    return Err(damaged(&path, "too short"));
                };
                let (body, crc) = rest.split_at(split);
                let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
                if crc32fast::hash(&bytes[..MAGIC.len() + split]) != want {
                    return Err(damaged(&path, "checksum mismatch"));
                }
                body
            }
            // The earlier format, without magic or checksum.
            None => &bytes[..],
        };
        let (meta, data): (Meta, Vec<u8>) =
            bincode::deserialize(body).map_err(|e| damaged(&path, &e.to_string()))?;
        Ok(Some((meta, data)))
    }

    /// Writes a snapshot durably, unless the file already holds one at least as recent;
    /// returns whether it wrote.
    pub fn write(&self, meta: &Meta, data: &[u8]) -> std::io::Result<bool> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = *last
            && meta.last_log_id.is_none_or(|new| new <= current)
        {
            tracing::info!(
                current = ?current,
                offered = ?meta.last_log_id,
                "not replacing the snapshot with an older one"
            );
            return Ok(false);
        }
        let mut bytes = MAGIC.to_vec();
        bincode::serialize_into(&mut bytes, &(meta, data)).map_err(std::io::Error::other)?;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let n = self.temps.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{TEMP}.{}.{n}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path())?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        *last = meta.last_log_id;
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
