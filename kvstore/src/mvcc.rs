//! The multi-version key space: etcd's MVCC semantics, deterministic and in memory.
//!
//! Every member applies the same committed commands to its own [`Mvcc`] in log order, so the
//! engine must be a pure function of the commands: no clocks, no randomness. Durability is
//! the log's and the snapshot's job (see `state_machine.rs`); this type only has to serialize.
//!
//! One global revision counts mutating requests (a txn that writes counts once, a delete that
//! deletes nothing does not count). Each key keeps its versions since the compacted revision,
//! so reads at an old revision and watches from an old revision are answered from here.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::request::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyRange, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What one stored version costs beyond its key and value, for [`Mvcc::bytes`]: its four
/// numbers, the history slot and the change-index entry.
pub const VERSION_OVERHEAD: u64 = 64;

/// One version of a key. A version of 0 marks a deletion (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    mod_revision: i64,
    create_revision: i64,
    version: i64,
    value: Bytes,
    lease: i64,
}

impl Version {
    fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    fn to_kv(&self, key: &Bytes) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

/// A lease as the state machine knows it. When it expires is not state-machine state: the
/// leader decides expiry and revokes through the log (see `lessor.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The TTL granted, in seconds.
    pub ttl: i64,
    /// Keys attached to the lease.
    pub keys: BTreeSet<Bytes>,
    /// Who granted it, when that was a caller limited to its own leases (an agent's
    /// identity); `None` for admins and members. Kept beside the key space in snapshots
    /// ([`Mvcc::lease_owners`]), so snapshots of the earlier format still read.
    #[serde(skip)]
    pub owner: Option<String>,
}

/// The key space with its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mvcc {
    /// The current revision; 1 for an empty store, as in etcd.
    revision: i64,
    /// Reads and watches below this revision fail with [`Error::Compacted`].
    compacted: i64,
    /// Versions of each key, oldest first, since the compacted revision.
    keys: BTreeMap<Bytes, Vec<Version>>,
    /// Keys changed at each revision since the compacted one, in the order they changed: the
    /// index watchers replay from.
    changes: BTreeMap<i64, Vec<Bytes>>,
    /// Live leases by id.
    leases: BTreeMap<i64, Lease>,
    /// What the stored versions take, by [`Mvcc::bytes`]' count; not serialized (recounted).
    #[serde(skip)]
    bytes: u64,
}

impl Default for Mvcc {
    fn default() -> Self {
        Self {
            revision: 1,
            compacted: 0,
            keys: BTreeMap::new(),
            changes: BTreeMap::new(),
            leases: BTreeMap::new(),
            bytes: 0,
        }
    }
}

/// What `key`'s version `v` counts for in [`Mvcc::bytes`].
fn cost(key: &[u8], v: &Version) -> u64 {
    (key.len() + v.value.len()) as u64 + VERSION_OVERHEAD
}

/// Which branch each txn in a request takes, decided before any of its operations run (as
/// etcd does), so that nested compares see the state before the txn.
#[derive(Debug)]
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

impl Mvcc {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compacted revision (0 when never compacted).
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// The size the storage quota counts: every stored version (live, overwritten or deleted,
    /// until compaction drops it) at its key's and value's length plus [`VERSION_OVERHEAD`].
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Recounts [`Mvcc::bytes`] (after deserializing, which does not carry it).
    pub fn recount(&mut self) {
        self.bytes = self
            .keys
            .iter()
            .flat_map(|(k, h)| h.iter().map(move |v| cost(k, v)))
            .sum();
    }

    /// Number of live keys.
    pub fn key_count(&self) -> usize {
        self.keys
            .values()
            .filter(|v| v.last().is_some_and(|v| !v.is_tombstone()))
            .count()
    }

    fn latest(&self, key: &[u8]) -> Option<&Version> {
        self.keys
            .get(key)
            .and_then(|h| h.last())
            .filter(|v| !v.is_tombstone())
    }

    fn read_revision(&self, requested: i64, current: i64) -> Result<i64> {
        if requested <= 0 {
            return Ok(current);
        }
        if requested > current {
            return Err(Error::FutureRev);
        }
        if requested < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(requested)
    }

    /// The live keys of `range` at revision `rev`, in key order.
    fn visit_at<'a>(
        &'a self,
        range: &KeyRange,
        rev: i64,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Version)> + 'a {
        let iter = range.bounds().map(|b| self.keys.range::<[u8], _>(b));
        iter.into_iter().flatten().filter_map(move |(k, history)| {
            let at = history.partition_point(|v| v.mod_revision <= rev);
            let v = history.get(at.checked_sub(1)?)?;
            (!v.is_tombstone()).then_some((k, v))
        })
    }

    /// Executes a range read, with etcd's order of limit, filters and sort.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        self.range_as_of(req, self.revision)
    }

    /// A range read where `current` is the newest revision visible (inside a writing txn,
    /// the txn's own revision once it has written).
    fn range_as_of(&self, req: &RangeRequest, current: i64) -> Result<RangeResponse> {
        let rev = self.read_revision(req.revision, current)?;
        let range = KeyRange::new(req.key.clone(), req.range_end.clone());
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        let ascending_by_key = matches!(order, SortOrder::None | SortOrder::Ascend)
            && req.sort_target == SortTarget::Key;
        let limit = usize::try_from(req.limit).unwrap_or(0);

        let mut count = 0i64;
        let mut kvs = Vec::new();
        for (key, v) in self.visit_at(&range, rev) {
            count += 1;
            if req.count_only {
                continue;
            }
            // Key order is map order: without filters or another sort, stop collecting at
            // the limit (+1 to know there are more) but keep counting.
            if ascending_by_key && !filtered && limit > 0 && kvs.len() > limit {
                continue;
            }
            kvs.push(v.to_kv(key));
        }

        if filtered {
            kvs.retain(|kv| {
                (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision == 0
                        || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision == 0
                        || kv.create_revision <= req.max_create_revision)
            });
        }
        if !ascending_by_key {
            sort_kvs(&mut kvs, req.sort_target, order);
        }
        let more = limit > 0 && kvs.len() > limit;
        if more {
            kvs.truncate(limit);
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }

    /// Applies a put as its own revision.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        self.check_put(req)?;
        let rev = self.revision + 1;
        let resp = self.apply_put(req, rev);
        self.revision = rev;
        Ok(resp)
    }

    /// Applies a delete as its own revision; a delete that deletes nothing changes nothing.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let rev = self.revision + 1;
        let resp = self.apply_delete(req, rev);
        if resp.deleted > 0 {
            self.revision = rev;
        }
        Ok(resp)
    }

    /// Applies a txn: all compares decided first, every operation of the chosen branches
    /// checked, then applied as one revision (or none, if nothing was written).
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse> {
        let path = self.txn_path(req);
        self.check_txn(req, &path)?;
        let rev = self.revision + 1;
        let before = self.changes_at(rev);
        let resp = self.apply_txn(req, &path, rev);
        if self.changes_at(rev) > before {
            self.revision = rev;
        }
        Ok(resp)
    }

    /// Read-only txn (no branch writes): evaluated against the current state.
    pub fn txn_read(&self, req: &TxnRequest) -> Result<TxnResponse> {
        debug_assert!(req.is_read_only());
        let path = self.txn_path(req);
        self.check_txn(req, &path)?;
        self.read_txn(req, &path)
    }

    fn read_txn(&self, req: &TxnRequest, path: &TxnPath) -> Result<TxnResponse> {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Txn(t) => {
                    let p = nested
                        .next()
                        .expect("txn path has one entry per nested txn");
                    ResponseOp::Txn(self.read_txn(t, p)?)
                }
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    unreachable!("read_txn runs read-only txns only")
                }
            });
        }
        Ok(TxnResponse {
            succeeded: path.succeeded,
            responses,
        })
    }

    /// The keys revision `rev` changed (empty once compacted away).
    pub fn keys_changed_at(&self, rev: i64) -> &[Bytes] {
        self.changes.get(&rev).map_or(&[], Vec::as_slice)
    }

    fn changes_at(&self, rev: i64) -> usize {
        self.changes.get(&rev).map_or(0, Vec::len)
    }

    fn txn_path(&self, req: &TxnRequest) -> TxnPath {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let nested = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::Txn(t) => Some(self.txn_path(t)),
                _ => None,
            })
            .collect();
        TxnPath { succeeded, nested }
    }

    fn check_txn(&self, req: &TxnRequest, path: &TxnPath) -> Result<()> {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match op {
                RequestOp::Range(r) => {
                    self.read_revision(r.revision, self.revision)?;
                }
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => {
                    let p = nested
                        .next()
                        .expect("txn path has one entry per nested txn");
                    self.check_txn(t, p)?;
                }
            }
        }
        Ok(())
    }

    fn apply_txn(&mut self, req: &TxnRequest, path: &TxnPath, rev: i64) -> TxnResponse {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    // Reads inside a writing txn see the txn's earlier writes, as in etcd.
                    let current = if self.changes_at(rev) > 0 {
                        rev
                    } else {
                        self.revision
                    };
                    let resp = self.range_as_of(r, current);
                    ResponseOp::Range(resp.expect("range checked before the txn applied"))
                }
                RequestOp::Put(p) => ResponseOp::Put(self.apply_put(p, rev)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.apply_delete(d, rev)),
                RequestOp::Txn(t) => {
                    let p = nested
                        .next()
                        .expect("txn path has one entry per nested txn");
                    ResponseOp::Txn(self.apply_txn(t, p, rev))
                }
            });
        }
        TxnResponse {
            succeeded: path.succeeded,
            responses,
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        let range = KeyRange::new(c.key.clone(), c.range_end.clone());
        let mut any = false;
        for (_, v) in self.visit_at(&range, self.revision) {
            any = true;
            if !compare_version(c, Some(v)) {
                return false;
            }
        }
        any || compare_version(c, None)
    }

    fn check_put(&self, req: &PutRequest) -> Result<()> {
        if (req.ignore_value || req.ignore_lease) && self.latest(&req.key).is_none() {
            return Err(Error::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    fn apply_put(&mut self, req: &PutRequest, rev: i64) -> PutResponse {
        let prev = self.latest(&req.key).cloned();
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        if let Some(p) = &prev
            && p.lease != lease
        {
            self.detach(p.lease, &req.key);
        }
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(req.key.clone());
        }
        self.push_version(
            req.key.clone(),
            Version {
                mod_revision: rev,
                create_revision,
                version,
                value,
                lease,
            },
        );
        PutResponse {
            prev_kv: prev.filter(|_| req.prev_kv).map(|p| p.to_kv(&req.key)),
        }
    }

    fn apply_delete(&mut self, req: &DeleteRangeRequest, rev: i64) -> DeleteRangeResponse {
        let range = KeyRange::new(req.key.clone(), req.range_end.clone());
        let doomed: Vec<(Bytes, Version)> = self
            .visit_at(&range, rev)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, v) in &doomed {
            self.detach(v.lease, key);
            if req.prev_kv {
                prev_kvs.push(v.to_kv(key));
            }
            self.push_version(
                key.clone(),
                Version {
                    mod_revision: rev,
                    create_revision: 0,
                    version: 0,
                    value: Bytes::new(),
                    lease: 0,
                },
            );
        }
        DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn push_version(&mut self, key: Bytes, v: Version) {
        let rev = v.mod_revision;
        let added = cost(&key, &v);
        let history = self.keys.entry(key.clone()).or_default();
        match history.last_mut() {
            // One change per key per revision: a second write in the same revision replaces.
            Some(last) if last.mod_revision == rev => {
                self.bytes -= cost(&key, last);
                *last = v;
            }
            _ => {
                history.push(v);
                self.changes.entry(rev).or_default().push(key);
            }
        }
        self.bytes += added;
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if lease == 0 {
            return;
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.remove(key);
        }
    }

    /// Compacts the history up to `revision`: reads and watches below it fail afterwards.
    pub fn compact(&mut self, revision: i64) -> Result<()> {
        if revision <= self.compacted {
            return Err(Error::Compacted);
        }
        if revision > self.revision {
            return Err(Error::FutureRev);
        }
        self.compacted = revision;
        let mut freed = 0;
        self.keys.retain(|key, history| {
            // Keep the version visible at `revision` and everything after it; a tombstone
            // older than `revision` has nothing left to hide.
            let at = history.partition_point(|v| v.mod_revision <= revision);
            let mut keep_from = at.saturating_sub(1);
            if let Some(v) = history.get(keep_from)
                && v.is_tombstone()
                && v.mod_revision < revision
            {
                keep_from += 1;
            }
            freed += history
                .drain(..keep_from)
                .map(|v| cost(key, &v))
                .sum::<u64>();
            !history.is_empty()
        });
        self.bytes -= freed;
        self.changes = self.changes.split_off(&revision);
        Ok(())
    }

    /// The owner of every owned lease, for snapshots.
    pub fn lease_owners(&self) -> BTreeMap<i64, String> {
        self.leases
            .iter()
            .filter_map(|(id, l)| l.owner.clone().map(|o| (*id, o)))
            .collect()
    }

    /// Restores lease owners read from a snapshot.
    pub fn set_lease_owners(&mut self, owners: BTreeMap<i64, String>) {
        for (id, owner) in owners {
            if let Some(l) = self.leases.get_mut(&id) {
                l.owner = Some(owner);
            }
        }
    }

    /// Grants a lease, owned by `owner` when given. Granting does not change the revision.
    pub fn lease_grant(&mut self, id: i64, ttl: i64, owner: Option<String>) -> Result<()> {
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        if id <= 0 {
            return Err(Error::LeaseNotFound);
        }
        if self.leases.contains_key(&id) {
            return Err(Error::LeaseExist);
        }
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
                owner,
            },
        );
        Ok(())
    }

    /// Revokes a lease and deletes its keys, in one revision (none if it had no keys).
    pub fn lease_revoke(&mut self, id: i64) -> Result<()> {
        let lease = self.leases.remove(&id).ok_or(Error::LeaseNotFound)?;
        let rev = self.revision + 1;
        let mut deleted = 0;
        for key in lease.keys {
            let req = DeleteRangeRequest {
                key,
                range_end: Bytes::new(),
                prev_kv: false,
            };
            deleted += self.apply_delete(&req, rev).deleted;
        }
        if deleted > 0 {
            self.revision = rev;
        }
        Ok(())
    }

    /// etcd's HashKV: a CRC-32 over every stored version with a revision at or below
    /// `revision` (0: the current one), in key then revision order — equal on every member
    /// that applied the same log — with the compacted revision it starts from.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64)> {
        let revision = self.read_revision(revision, self.revision)?;
        let mut h = crc32fast::Hasher::new();
        for (key, history) in &self.keys {
            for v in history.iter().take_while(|v| v.mod_revision <= revision) {
                h.update(&(key.len() as u64).to_le_bytes());
                h.update(key);
                for n in [v.mod_revision, v.create_revision, v.version, v.lease] {
                    h.update(&n.to_le_bytes());
                }
                h.update(&(v.value.len() as u64).to_le_bytes());
                h.update(&v.value);
            }
        }
        Ok((h.finalize(), self.compacted))
    }

    /// Number of live leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Live leases granted by `owner` (a walk of the leases: grants by limited callers are
    /// rare, one per agent start).
    pub fn leases_of(&self, owner: &str) -> usize {
        self.leases
            .values()
            .filter(|l| l.owner.as_deref() == Some(owner))
            .count()
    }

    /// A live lease.
    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every live lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// Events on `range` in revisions `from..=to`, in revision order, and in each revision
    /// in the order the keys changed. `from` must be ≥ the compacted revision.
    pub fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        prev_kv: bool,
    ) -> Result<Vec<Event>> {
        if from < self.compacted {
            return Err(Error::Compacted);
        }
        let mut events = Vec::new();
        if from > to {
            return Ok(events);
        }
        for (&rev, keys) in self.changes.range(from..=to) {
            for key in keys.iter().filter(|k| range.contains(k)) {
                let history = &self.keys[key];
                let at = history.partition_point(|v| v.mod_revision <= rev);
                let Some(v) = at.checked_sub(1).and_then(|i| history.get(i)) else {
                    continue;
                };
                debug_assert_eq!(v.mod_revision, rev);
                let prev = at
                    .checked_sub(2)
                    .and_then(|i| history.get(i))
                    .filter(|p| prev_kv && !p.is_tombstone())
                    .map(|p| p.to_kv(key));
                let (kind, kv) = if v.is_tombstone() {
                    let kv = KeyValue {
                        key: key.clone(),
                        mod_revision: rev,
                        ..KeyValue::default()
                    };
                    (EventKind::Delete, kv)
                } else {
                    (EventKind::Put, v.to_kv(key))
                };
                events.push(Event {
                    kind,
                    kv,
                    prev_kv: prev,
                });
            }
        }
        Ok(events)
    }
}

fn compare_version(c: &Compare, v: Option<&Version>) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(x) => v.map_or(0, |v| v.version).cmp(x),
        CompareTarget::Create(x) => v.map_or(0, |v| v.create_revision).cmp(x),
        CompareTarget::Mod(x) => v.map_or(0, |v| v.mod_revision).cmp(x),
        CompareTarget::Lease(x) => v.map_or(0, |v| v.lease).cmp(x),
        CompareTarget::Value(x) => match v {
            // A missing key has no value to compare: the compare fails, as in etcd.
            None => return false,
            Some(v) => v.value.as_ref().cmp(x.as_ref()),
        },
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

fn sort_kvs(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    // Stable sort: ties keep key order, as etcd's sort.Stable does.
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

#[cfg(test)]
mod tests;
