//! protobuf ↔ domain conversions of the etcd API, and nowhere else.
//!
//! Enum fields are `i32` in prost; their values are etcd's proto numbers, named below.

use bytes::Bytes;
use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbEvent, PbKeyValue, PbPutRequest, PbPutResponse,
    PbRangeRequest, PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};

use crate::node::Header;
use crate::request::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};

/// `mvccpb.Event.EventType.DELETE`.
const EVENT_DELETE: i32 = 1;

/// A response header.
pub fn header(h: Header) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    })
}

/// A key-value.
pub fn kv(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key.into(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.into(),
        lease: kv.lease,
    }
}

/// A watch event.
pub fn event(e: Event) -> PbEvent {
    PbEvent {
        r#type: match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => EVENT_DELETE,
        },
        kv: Some(kv(e.kv)),
        prev_kv: e.prev_kv.map(kv),
    }
}

/// A Range request.
pub fn range_request(r: PbRangeRequest) -> RangeRequest {
    RangeRequest {
        key: Bytes::from(r.key),
        range_end: Bytes::from(r.range_end),
        limit: r.limit,
        revision: r.revision,
        sort_order: match r.sort_order {
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            _ => SortOrder::None,
        },
        sort_target: match r.sort_target {
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            _ => SortTarget::Key,
        },
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// A Range response with header `h`.
pub fn range_response(r: RangeResponse, h: Header) -> PbRangeResponse {
    PbRangeResponse {
        header: header(h),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn put_request(r: PbPutRequest) -> PutRequest {
    PutRequest {
        key: Bytes::from(r.key),
        value: Bytes::from(r.value),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub(crate) fn put_response(r: PutResponse, h: Header) -> PbPutResponse {
    PbPutResponse {
        header: header(h),
        prev_kv: r.prev_kv.map(kv),
    }
}

pub(crate) fn delete_request(r: PbDeleteRequest) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: Bytes::from(r.key),
        range_end: Bytes::from(r.range_end),
        prev_kv: r.prev_kv,
    }
}

pub(crate) fn delete_response(r: DeleteRangeResponse, h: Header) -> PbDeleteResponse {
    PbDeleteResponse {
        header: header(h),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

fn compare(c: PbCompare) -> Compare {
    let target = match c.target_union {
        Some(PbTargetUnion::Version(v)) => CompareTarget::Version(v),
        Some(PbTargetUnion::CreateRevision(v)) => CompareTarget::Create(v),
        Some(PbTargetUnion::ModRevision(v)) => CompareTarget::Mod(v),
        Some(PbTargetUnion::Value(v)) => CompareTarget::Value(Bytes::from(v)),
        Some(PbTargetUnion::Lease(v)) => CompareTarget::Lease(v),
        // No operand: the operand is the zero value of the named target.
        None => match c.target {
            1 => CompareTarget::Create(0),
            2 => CompareTarget::Mod(0),
            3 => CompareTarget::Value(Bytes::new()),
            4 => CompareTarget::Lease(0),
            _ => CompareTarget::Version(0),
        },
    };
    Compare {
        key: Bytes::from(c.key),
        range_end: Bytes::from(c.range_end),
        result: match c.result {
            1 => CompareResult::Greater,
            2 => CompareResult::Less,
            3 => CompareResult::NotEqual,
            _ => CompareResult::Equal,
        },
        target,
    }
}

fn ops(ops: Vec<etcd_client::proto::PbTxnRequestOp>) -> Vec<RequestOp> {
    ops.into_iter()
        .filter_map(|op| {
            Some(match op.request? {
                PbTxnOpRequest::RequestRange(r) => RequestOp::Range(range_request(r)),
                PbTxnOpRequest::RequestPut(r) => RequestOp::Put(put_request(r)),
                PbTxnOpRequest::RequestDeleteRange(r) => RequestOp::DeleteRange(delete_request(r)),
                PbTxnOpRequest::RequestTxn(r) => RequestOp::Txn(txn_request(r)),
            })
        })
        .collect()
}

pub(crate) fn txn_request(r: PbTxnRequest) -> TxnRequest {
    TxnRequest {
        compare: r.compare.into_iter().map(compare).collect(),
        success: ops(r.success),
        failure: ops(r.failure),
    }
}

pub(crate) fn txn_response(r: TxnResponse, h: Header) -> PbTxnResponse {
    PbTxnResponse {
        header: header(h),
        succeeded: r.succeeded,
        responses: txn_ops(r.responses, h.revision),
    }
}

/// Responses of a txn's operations. As in etcd, their headers carry only the revision.
fn txn_ops(responses: Vec<ResponseOp>, revision: i64) -> Vec<PbResponseOp> {
    let h = || {
        Some(PbResponseHeader {
            revision,
            ..Default::default()
        })
    };
    responses
        .into_iter()
        .map(|op| PbResponseOp {
            response: Some(match op {
                ResponseOp::Range(r) => PbTxnOpResponse::ResponseRange(PbRangeResponse {
                    header: h(),
                    kvs: r.kvs.into_iter().map(kv).collect(),
                    more: r.more,
                    count: r.count,
                }),
                ResponseOp::Put(r) => PbTxnOpResponse::ResponsePut(PbPutResponse {
                    header: h(),
                    prev_kv: r.prev_kv.map(kv),
                }),
                ResponseOp::DeleteRange(r) => {
                    PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                        header: h(),
                        deleted: r.deleted,
                        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
                    })
                }
                ResponseOp::Txn(r) => PbTxnOpResponse::ResponseTxn(PbTxnResponse {
                    header: h(),
                    succeeded: r.succeeded,
                    responses: txn_ops(r.responses, revision),
                }),
            }),
        })
        .collect()
}
