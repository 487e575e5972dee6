//! Backups: what `etcdctl snapshot save` receives (Maintenance.Snapshot) and what
//! `mesh-apiserver --restore-from FILE` starts a new cluster from.
//!
//! A backup is the key space alone — every key with its history since the compacted
//! revision, the revision, the leases (with their owners) — not the membership, the cluster
//! id or alarms, which belong to the cluster it came from:
//!
//! `RAFTMESH-BACKUP-1\n` · state length (u64 LE) · the state as [`encode_data`] writes it ·
//! zeros to a multiple of 512 bytes · SHA-256 of everything before it. The shape is etcd's
//! (etcdctl 3.4's `snapshot save` insists on a SHA-256 trailer after 512-byte blocks); the
//! contents are not a bolt database, so etcd's own tools cannot read it.
//!
//! Restoring writes the state into a fresh data directory as the seed of its state machine
//! ([`SEED_FILE`]): every founding member of the new cluster restores the same file (as with
//! `etcdctl snapshot restore`), so all start from the same state before the first entry.

use std::io::{self, Write};
use std::path::Path;

use crate::data::{Data, decode_data, encode_data};

/// The first bytes of every backup.
pub const MAGIC: &[u8] = b"RAFTMESH-BACKUP-1\n";
/// Block size the backup is padded to, before its SHA-256.
const BLOCK: usize = 512;
/// Length of a SHA-256.
const SHA256_LEN: usize = 32;
/// The seed in a restored member's snapshot directory: the state before its first entry.
pub const SEED_FILE: &str = "restored";

/// The backup of `data`'s key space.
pub fn encode(data: &Data) -> io::Result<Vec<u8>> {
    let keyspace = Data {
        mvcc: data.mvcc.clone(),
        ..Data::default()
    };
    let state = encode_data(&keyspace)?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + state.len() + BLOCK + SHA256_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.extend_from_slice(&state);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
    let sum = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    Ok(out)
}

/// The state in a backup, after checking that it is one and whole.
pub fn decode(bytes: &[u8]) -> io::Result<Data> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    if !bytes.starts_with(MAGIC) {
        return Err(invalid(
            "not a raftmesh backup (made by etcdctl snapshot save of a raftmesh member)",
        ));
    }
    let (body, sum) = bytes
        .split_at_checked(bytes.len().saturating_sub(SHA256_LEN))
        .filter(|(body, _)| body.len() % BLOCK == 0 && body.len() >= MAGIC.len() + 8)
        .ok_or_else(|| invalid("backup cut short"))?;
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != sum {
        return Err(invalid("backup damaged: SHA-256 mismatch"));
    }
    let (len, rest) = body[MAGIC.len()..].split_at(8);
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
    let state = rest
        .get(..len)
        .ok_or_else(|| invalid("backup damaged: length past the end"))?;
    decode_data(state)
}

/// Checks the backup at `file` and writes its state as the seed of the member whose
/// snapshot directory is `snap_dir`. Returns the revision and key count restored.
pub fn seed(file: &Path, snap_dir: &Path) -> io::Result<(i64, usize)> {
    let bytes = std::fs::read(file)?;
    let data = decode(&bytes)?;
    std::fs::create_dir_all(snap_dir)?;
    let tmp = snap_dir.join(format!("{SEED_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&encode_data(&data)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, snap_dir.join(SEED_FILE))?;
    std::fs::File::open(snap_dir)?.sync_all()?;
    Ok((data.mvcc.revision(), data.mvcc.key_count()))
}

/// The seed of the member whose snapshot directory is `snap_dir`, if it was restored.
pub fn read_seed(snap_dir: &Path) -> io::Result<Option<Data>> {
    match std::fs::read(snap_dir.join(SEED_FILE)) {
        Ok(bytes) => decode_data(&bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::Command;
    use crate::request::PutRequest;

    #[test]
    fn a_backup_round_trips_and_damage_is_refused() {
        let mut data = Data::default();
        data.apply(&Command::LeaseGrantOwned {
            id: 5,
            ttl: 60,
            owner: "spiffe://raftmesh/cluster/apps/agent/n1".into(),
        });
        data.apply(&Command::Put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            lease: 5,
            ..PutRequest::default()
        }));
        data.cluster_id = 42;
        let bytes = encode(&data).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.mvcc, data.mvcc);
        assert_eq!(back.mvcc.lease_owners(), data.mvcc.lease_owners());
        assert_eq!(back.cluster_id, 0, "the cluster id stays with its cluster");

        let mut damaged = bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        assert!(decode(&damaged).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"bolt db bytes").is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");
        std::fs::write(&file, &bytes).unwrap();
        let snap = dir.path().join("snap");
        assert_eq!(seed(&file, &snap).unwrap(), (data.mvcc.revision(), 1));
        assert_eq!(read_seed(&snap).unwrap().unwrap().mvcc, data.mvcc);
    }
}
