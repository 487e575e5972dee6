//! Writing records to the store: a reconcile by diff in batched, guarded Txns, and identity
//! allocation that gives every label set exactly one id however many writers race.
//!
//! Both speak the etcd API (an `etcd_client::Client`), so they work through any member and
//! against etcd itself. Every write is guarded by a compare on what was read, so a writer that
//! read stale state (a deposed leader's controller, a concurrent allocator) changes nothing
//! and reads again.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use mesh_api::keys::{Kind, kind_prefix};
use mesh_api::records::IdentityRecord;
use mesh_api::{Key, Record, SCHEMA};

use super::convert::{FIRST_LOCAL_ID, identity};

/// Most operations (and compares) in one Txn: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Rounds of read-diff-write before giving up on a contended write.
const ATTEMPTS: usize = 10;

/// What a store operation failed on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request failed.
    #[error("store: {0}")]
    Client(#[from] etcd_client::Error),
    /// Writers kept changing the same keys.
    #[error("gave up after {ATTEMPTS} contended attempts")]
    Contended,
    /// Every local identity id is taken.
    #[error("no free identity id left in cluster {cluster}")]
    Exhausted {
        /// The cluster.
        cluster: String,
    },
}

/// What a reconcile changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys created or updated.
    pub puts: usize,
    /// Keys deleted.
    pub deletes: usize,
    /// Txns that found the store changed under them and were redone.
    pub conflicts: usize,
}

/// A key as read: its value and mod revision.
type Current = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

async fn read_prefix(client: &mut Client, prefix: &str) -> Result<Current, StoreError> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision())))
        .collect())
}

/// Makes the keys under `prefixes` exactly `desired` (keys outside the prefixes are ignored):
/// puts what differs, deletes what is not desired, in Txns of at most [`MAX_TXN_OPS`] each
/// guarded by the mod revision read. Nothing is written when nothing differs.
pub async fn reconcile(
    client: &mut Client,
    prefixes: &[String],
    desired: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<Changes, StoreError> {
    write_diff(client, prefixes, desired, true).await
}

/// Like [`reconcile`], but never deletes: keys under `prefix` that `desired` does not name
/// stay.
pub async fn ensure(
    client: &mut Client,
    prefix: &str,
    desired: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<Changes, StoreError> {
    write_diff(client, &[prefix.to_owned()], desired, false).await
}

/// Deletes each key whose mod revision is still the one given (one Txn each, so one changed
/// key does not keep the others); a key changed since is kept.
pub async fn delete_unchanged(
    client: &mut Client,
    keys: &[(Vec<u8>, i64)],
) -> Result<Changes, StoreError> {
    let mut changes = Changes::default();
    for (key, rev) in keys {
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)])
            .and_then([TxnOp::delete(key.clone(), None)]);
        if client.txn(txn).await?.succeeded() {
            changes.deletes += 1;
        } else {
            changes.conflicts += 1;
        }
    }
    Ok(changes)
}

async fn write_diff(
    client: &mut Client,
    prefixes: &[String],
    desired: &BTreeMap<Vec<u8>, Vec<u8>>,
    delete_missing: bool,
) -> Result<Changes, StoreError> {
    let mut changes = Changes::default();
    for _ in 0..ATTEMPTS {
        let mut current = Current::new();
        for p in prefixes {
            current.extend(read_prefix(client, p).await?);
        }
        let mut batches: Vec<(Vec<Compare>, Vec<TxnOp>, usize, usize)> = Vec::new();
        let mut batch = (Vec::new(), Vec::new(), 0, 0);
        let mut push = |cmp: Compare, op: TxnOp, put: bool| {
            batch.0.push(cmp);
            batch.1.push(op);
            if put {
                batch.2 += 1;
            } else {
                batch.3 += 1;
            }
            if batch.1.len() == MAX_TXN_OPS {
                batches.push(std::mem::take(&mut batch));
            }
        };
        for (key, value) in desired {
            if !prefixes.iter().any(|p| key.starts_with(p.as_bytes())) {
                continue;
            }
            match current.get(key) {
                Some((now, _)) if now == value => {}
                Some((_, rev)) => push(
                    Compare::mod_revision(key.clone(), CompareOp::Equal, *rev),
                    TxnOp::put(key.clone(), value.clone(), None),
                    true,
                ),
                None => push(
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    TxnOp::put(key.clone(), value.clone(), None),
                    true,
                ),
            }
        }
        for (key, (_, rev)) in &current {
            if delete_missing && !desired.contains_key(key) {
                push(
                    Compare::mod_revision(key.clone(), CompareOp::Equal, *rev),
                    TxnOp::delete(key.clone(), None),
                    false,
                );
            }
        }
        if !batch.1.is_empty() {
            batches.push(batch);
        }
        if batches.is_empty() {
            return Ok(changes);
        }
        let mut conflicted = false;
        for (compares, ops, puts, deletes) in batches {
            let resp = client.txn(Txn::new().when(compares).and_then(ops)).await?;
            if resp.succeeded() {
                changes.puts += puts;
                changes.deletes += deletes;
            } else {
                changes.conflicts += 1;
                conflicted = true;
            }
        }
        if !conflicted {
            return Ok(changes);
        }
    }
    Err(StoreError::Contended)
}

/// The identities of cluster `cluster` (`cluster_id`) as stored: label set → id.
pub async fn identities(
    client: &mut Client,
    cluster: &str,
) -> Result<BTreeMap<Vec<String>, u32>, StoreError> {
    let (by_id, _) = read_identities(client, cluster).await?;
    Ok(by_id
        .into_iter()
        .map(|(id, (labels, _))| (labels, id))
        .collect())
}

/// id → (labels, mod revision), and the revision of the read.
pub type Slots = BTreeMap<u32, (Vec<String>, i64)>;

/// The stored identities of `cluster`: id → (labels, mod revision), and the read's revision.
pub async fn read_identities(
    client: &mut Client,
    cluster: &str,
) -> Result<(Slots, i64), StoreError> {
    let prefix = kind_prefix(cluster, Kind::Identity);
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut slots = Slots::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        // A key or record that does not decode is left alone: it still occupies its id.
        let labels = match Record::decode_at(&key, kv.value()) {
            Ok((_, Record::Identity(r))) => r.labels,
            _ => Vec::new(),
        };
        if let Ok(Key::Identity { id, .. }) = key.parse::<Key>() {
            slots.insert(id, (labels, kv.mod_revision()));
        }
    }
    Ok((slots, revision))
}

/// Where the search for a free id for `labels` starts: a stable hash of the label set, so
/// every writer looking for an id for the same set probes the same ids in the same order.
fn first_candidate(labels: &[String]) -> u16 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for label in labels {
        for b in label.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let span = 65_536 - u64::from(FIRST_LOCAL_ID);
    (u64::from(FIRST_LOCAL_ID) + h % span) as u16
}

/// The local ids probed for a label set, starting at [`first_candidate`] and wrapping within
/// the unreserved range.
fn probe(labels: &[String]) -> impl Iterator<Item = u16> {
    let start = first_candidate(labels);
    let first = FIRST_LOCAL_ID as u16;
    (start..=u16::MAX).chain(first..start)
}

/// Gives every label set in `wanted` an id, allocating the missing ones, and returns the id of
/// each.
///
/// Allocation is race-free without any lock: a set's id is the first id of its probe sequence
/// that is free or already holds the set. The Txn that creates it compares every id it skipped
/// (unchanged since read) and the id it takes (still absent), so two writers allocating the
/// same set either agree or one's Txn fails and it reads the other's result.
pub async fn allocate(
    client: &mut Client,
    cluster: &str,
    cluster_id: u16,
    wanted: &BTreeSet<Vec<String>>,
) -> Result<BTreeMap<Vec<String>, u32>, StoreError> {
    for _ in 0..ATTEMPTS {
        let (slots, _) = read_identities(client, cluster).await?;
        let mut have: BTreeMap<Vec<String>, u32> = slots
            .iter()
            .filter(|(_, (labels, _))| !labels.is_empty())
            .map(|(id, (labels, _))| (labels.clone(), *id))
            .collect();
        let missing: Vec<&Vec<String>> = wanted.iter().filter(|s| !have.contains_key(*s)).collect();
        if missing.is_empty() {
            return Ok(wanted.iter().map(|s| (s.clone(), have[s])).collect());
        }
        // Ids this round takes, so two new sets of one Txn do not pick the same one.
        let mut taken: BTreeSet<u32> = BTreeSet::new();
        let mut txn: (Vec<Compare>, Vec<TxnOp>) = (Vec::new(), Vec::new());
        let mut conflicted = false;
        for labels in missing {
            let mut compares = Vec::new();
            let mut chosen = None;
            for local in probe(labels) {
                let id = identity(cluster_id, local);
                let key = Key::Identity {
                    cluster: cluster.to_owned(),
                    id,
                }
                .to_string();
                if taken.contains(&id) {
                    continue;
                }
                match slots.get(&id) {
                    Some((_, rev)) => {
                        compares.push(Compare::mod_revision(key, CompareOp::Equal, *rev))
                    }
                    None => {
                        compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                        chosen = Some((id, key));
                        break;
                    }
                }
            }
            let Some((id, key)) = chosen else {
                return Err(StoreError::Exhausted {
                    cluster: cluster.to_owned(),
                });
            };
            let full = txn.0.len() + compares.len() > MAX_TXN_OPS || txn.1.len() == MAX_TXN_OPS;
            // Later sets may have skipped ids a failed Txn did not take: on failure, read
            // again rather than commit a choice made on a wrong assumption.
            if full && !commit(client, std::mem::take(&mut txn)).await? {
                conflicted = true;
                break;
            }
            let record = Record::Identity(IdentityRecord {
                schema: SCHEMA,
                labels: labels.clone(),
            });
            txn.0.extend(compares);
            txn.1.push(TxnOp::put(key, record.encode(), None));
            taken.insert(id);
            have.insert(labels.clone(), id);
        }
        if !conflicted && !txn.1.is_empty() {
            conflicted = !commit(client, txn).await?;
        }
        if !conflicted {
            return Ok(wanted.iter().map(|s| (s.clone(), have[s])).collect());
        }
    }
    Err(StoreError::Contended)
}

async fn commit(
    client: &mut Client,
    (compares, ops): (Vec<Compare>, Vec<TxnOp>),
) -> Result<bool, StoreError> {
    Ok(client
        .txn(Txn::new().when(compares).and_then(ops))
        .await?
        .succeeded())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_is_stable_and_stays_in_the_unreserved_range() {
        let set = vec![
            "app=web".to_owned(),
            "io.kubernetes.pod.namespace=shop".to_owned(),
        ];
        let a: Vec<u16> = probe(&set).take(3).collect();
        let b: Vec<u16> = probe(&set).take(3).collect();
        assert_eq!(a, b);
        assert_eq!(probe(&set).count(), 65_536 - FIRST_LOCAL_ID as usize);
        assert!(probe(&set).all(|id| u32::from(id) >= FIRST_LOCAL_ID));
        // The same labels split differently are a different set.
        assert_ne!(
            first_candidate(&["a=bc".into()]),
            first_candidate(&["a=b".into(), "c".into()])
        );
    }
}
