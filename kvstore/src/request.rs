//! The KV requests and responses of the store, in domain form.
//!
//! They mirror etcd's `etcdserverpb` messages field by field, but are ours: they are what the
//! Raft log carries (serde) and what the MVCC engine executes. Conversion from and to protobuf
//! lives in `api/convert.rs` and nowhere else.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A key at one revision, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Revision of the last creation of the key.
    pub create_revision: i64,
    /// Revision of the last modification of the key.
    pub mod_revision: i64,
    /// 1 on creation, +1 per put, 0 once deleted.
    pub version: i64,
    /// The value.
    pub value: Bytes,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// Order of a range's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order, unless a sort target other than the key is given (then ascending).
    #[default]
    None,
    /// Ascending by the target.
    Ascend,
    /// Descending by the target.
    Descend,
}

/// Field a range is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The key's version.
    Version,
    /// The key's create revision.
    Create,
    /// The key's mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd's `RangeRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key of the range.
    pub key: Bytes,
    /// End of the range, exclusive; empty for the single key, `"\0"` for every key ≥ `key`.
    pub range_end: Bytes,
    /// At most this many keys; 0 for no limit.
    pub limit: i64,
    /// Read at this revision; 0 or less for the current one.
    pub revision: i64,
    /// Order of results.
    pub sort_order: SortOrder,
    /// Field to sort by.
    pub sort_target: SortTarget,
    /// Serve from this member's state without a ReadIndex round.
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep keys with mod revision ≥ this (0: no bound).
    pub min_mod_revision: i64,
    /// Keep keys with mod revision ≤ this (0: no bound).
    pub max_mod_revision: i64,
    /// Keep keys with create revision ≥ this (0: no bound).
    pub min_create_revision: i64,
    /// Keep keys with create revision ≤ this (0: no bound).
    pub max_create_revision: i64,
}

/// etcd's `RangeResponse` without the header.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys, after filters, sort and limit.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` returned.
    pub more: bool,
    /// Number of keys in the range at the revision read, before filters and limit.
    pub count: i64,
}

/// etcd's `PutRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Lease to attach the key to, 0 for none.
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// etcd's `PutResponse` without the header.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutResponse {
    /// The previous key-value, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key of the range.
    pub key: Bytes,
    /// End of the range, as in [`RangeRequest::range_end`].
    pub range_end: Bytes,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// etcd's `DeleteRangeResponse` without the header.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a txn compare looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version.
    Version(i64),
    /// The key's create revision.
    Create(i64),
    /// The key's mod revision.
    Mod(i64),
    /// The key's value.
    Value(Bytes),
    /// The key's lease.
    Lease(i64),
}

/// How a txn compare relates the key's field to the operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// field == operand
    Equal,
    /// field > operand
    Greater,
    /// field < operand
    Less,
    /// field != operand
    NotEqual,
}

/// etcd's `Compare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    pub key: Bytes,
    /// When set, every key in `[key, range_end)` must satisfy the compare.
    pub range_end: Bytes,
    /// The relation.
    pub result: CompareResult,
    /// The field and operand.
    pub target: CompareTarget,
}

/// One operation of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// The result of one txn operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Result of a read.
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested txn.
    Txn(TxnResponse),
}

/// etcd's `TxnRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnRequest {
    /// All must hold for `success` to run; otherwise `failure` runs.
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// Whether either branch, at any depth, writes. A txn that cannot write is served as a read.
    pub fn is_read_only(&self) -> bool {
        fn branch(ops: &[RequestOp]) -> bool {
            ops.iter().all(|op| match op {
                RequestOp::Range(_) => true,
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
                RequestOp::Txn(t) => t.is_read_only(),
            })
        }
        branch(&self.success) && branch(&self.failure)
    }
}

/// etcd's `TxnResponse` without the header.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the compares held.
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A key was created or updated.
    Put,
    /// A key was deleted.
    Delete,
}

/// One change of one key, as etcd's `mvccpb.Event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, key and mod revision only.
    pub kv: KeyValue,
    /// The key before the change, when asked for and still in the history.
    pub prev_kv: Option<KeyValue>,
}

/// Bounds of a key range over a sorted map.
pub type KeyBounds<'a> = (std::ops::Bound<&'a [u8]>, std::ops::Bound<&'a [u8]>);

/// A key range as etcd encodes it: `[key, range_end)`, with the special forms of
/// [`RangeRequest::range_end`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// First key.
    pub key: Bytes,
    /// End, exclusive; empty for the single key; `"\0"` for no end.
    pub range_end: Bytes,
}

impl KeyRange {
    /// The range `[key, range_end)`.
    pub fn new(key: impl Into<Bytes>, range_end: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    /// Whether `k` is inside the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == self.key.as_ref();
        }
        if k < self.key.as_ref() {
            return false;
        }
        self.range_end.as_ref() == b"\0" || k < self.range_end.as_ref()
    }

    /// The range as bounds over a sorted map, or `None` when it is empty.
    pub fn bounds(&self) -> Option<KeyBounds<'_>> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        if self.range_end.is_empty() {
            return Some((Included(self.key.as_ref()), Included(self.key.as_ref())));
        }
        if self.range_end.as_ref() == b"\0" {
            return Some((Included(self.key.as_ref()), Unbounded));
        }
        if self.range_end.as_ref() <= self.key.as_ref() {
            return None;
        }
        Some((
            Included(self.key.as_ref()),
            Excluded(self.range_end.as_ref()),
        ))
    }
}
