//! The records of remote-cluster connections: `mesh/config/remotes/<c>` (how this cluster
//! reaches remote `<c>`, written by `meshctl connect`, readable by admins only since it holds
//! a private key) and `mesh/status/remotes/<c>` (how the mirror of `<c>` is doing, written by
//! the API server's leader). Protobuf like every record; field 1 is the schema version.
//!
//! `mesh/status/current/<c>` holds no record: it exists while the mirror is current with `<c>`,
//! bound to a lease of [`CURRENT_TTL_SECONDS`] that the mirror renews on every answer from the
//! remote. Renewals are the leader's memory, not Raft writes, so readers learn the freshness
//! to the second ([`lease_freshness`]) without a write per second per remote; the key goes when
//! the mirror stops answering for the lease's TTL or records a disconnect.

use prost::Message;
use serde_json::{Value, json};

use crate::SCHEMA;

/// `mesh/config/remotes/<c>`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoteConfigRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The remote cluster's name (the `<c>` of the key).
    #[prost(string, tag = "2")]
    pub cluster: String,
    /// Its id, as its cluster record said when connecting: identities mirrored from it must
    /// carry it.
    #[prost(uint32, tag = "3")]
    pub id: u32,
    /// Where its API server is reached (`https://host:port`; host names are resolved on every
    /// connection attempt).
    #[prost(string, repeated, tag = "4")]
    pub endpoints: Vec<String>,
    /// Its CA bundle (PEM): the only CAs trusted for it.
    #[prost(string, tag = "5")]
    pub ca_pem: String,
    /// A `remote` client certificate issued by its CA for this cluster (PEM).
    #[prost(string, tag = "6")]
    pub cert_pem: String,
    /// The certificate's private key (PEM). Secret.
    #[prost(string, tag = "7")]
    pub key_pem: String,
    /// Its pod CIDRs, as its cluster record said when connecting: mirrored pod addresses and
    /// node pod CIDRs must lie inside them.
    #[prost(string, repeated, tag = "8")]
    pub pod_cidrs: Vec<String>,
}

/// The TTL of the lease behind `mesh/status/current/<c>`, in seconds: the mirror renews it on
/// every answer from the remote (about every second), so it lapses after about this long
/// without one.
pub const CURRENT_TTL_SECONDS: i64 = 3;

/// The value of `mesh/status/current/<c>`, for people reading the store.
pub const CURRENT_VALUE: &str = "the mirror is current with this remote while this key lives; freshness: at most the lease's granted TTL minus its remaining TTL";

/// How long ago the mirror was last current at most, in whole seconds, from the lease of
/// `mesh/status/current/<c>` as LeaseTimeToLive reports it: `granted_ttl - ttl`, since `ttl` is
/// the remaining time rounded down (as etcd reports it), so the last renewal was between one
/// second less and this long ago. `None` once the lease has run out (`ttl` ≤ 0).
pub fn lease_freshness(granted_ttl: i64, ttl: i64) -> Option<f64> {
    (ttl > 0).then(|| (granted_ttl - ttl).max(0) as f64)
}

/// `mesh/status/remotes/<c>`. Written with every batch the mirror applies (the revision
/// reached lives here, in the same Txn as the data it covers) and on every change of state,
/// never for the freshness alone: while connected, readers take the freshness from the lease of
/// `mesh/status/current/<c>`; after a disconnect, from `current_at_ms`, written with it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoteStatusRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Whether the mirror holds a working watch on the remote.
    #[prost(bool, tag = "2")]
    pub connected: bool,
    /// The remote revision whose changes are all mirrored.
    #[prost(int64, tag = "3")]
    pub remote_revision: i64,
    /// How many events of revision `remote_revision + 1` are mirrored already (a remote
    /// revision with more changes than one local Txn holds is applied in parts).
    #[prost(uint32, tag = "4")]
    pub partial_events: u32,
    /// When the mirror last knew it was current (an event or a progress answer from the
    /// remote), in Unix milliseconds. The freshness age is now minus this.
    #[prost(int64, tag = "5")]
    pub current_at_ms: i64,
    /// The last error, empty while connected.
    #[prost(string, tag = "6")]
    pub error: String,
    /// Keys mirrored.
    #[prost(uint64, tag = "7")]
    pub keys: u64,
    /// Bytes (keys and values) mirrored.
    #[prost(uint64, tag = "8")]
    pub bytes: u64,
    /// Full re-lists done because the remote had compacted past `remote_revision`.
    #[prost(uint64, tag = "9")]
    pub resyncs: u64,
    /// Non-zero while a list of the remote at this revision is being applied; a restarted
    /// mirror that finds it set lists again.
    #[prost(int64, tag = "10")]
    pub list_revision: i64,
    /// The remote exceeds this cluster's key or byte budget for it and is not mirrored.
    #[prost(bool, tag = "11")]
    pub over_budget: bool,
    /// When the mirror found the connection removed (`meshctl disconnect`), in Unix
    /// milliseconds; its records go after the disconnect grace. 0 while connected.
    #[prost(int64, tag = "12")]
    pub removed_at_ms: i64,
    /// The endpoint of the current (or last) connection.
    #[prost(string, tag = "13")]
    pub endpoint: String,
    /// When the remote client certificate expires, in Unix milliseconds.
    #[prost(int64, tag = "14")]
    pub cert_not_after_ms: i64,
    /// Records refused since the mirror started (outside the layout, undecodable, wrong
    /// cluster id, addresses outside the pod CIDRs).
    #[prost(uint64, tag = "15")]
    pub rejected: u64,
    /// The remote store's etcd cluster id as its responses carry it: a different one means
    /// the remote was rebuilt, and its revisions start over.
    #[prost(uint64, tag = "16")]
    pub remote_cluster_id: u64,
}

/// A value that is not the record its key calls for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteDecodeError {
    /// Not the protobuf message.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which record.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// Written by a newer raftmesh, or with no schema.
    #[error("{what} has schema {schema}; this build reads 1..={SCHEMA}")]
    Schema {
        /// Which record.
        what: &'static str,
        /// Its schema.
        schema: u32,
    },
}

pub(crate) fn decode<M: Message + Default>(
    what: &'static str,
    bytes: &[u8],
    schema: impl Fn(&M) -> u32,
) -> Result<M, RemoteDecodeError> {
    let m = M::decode(bytes).map_err(|e| RemoteDecodeError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    let s = schema(&m);
    if s == 0 || s > SCHEMA {
        return Err(RemoteDecodeError::Schema { what, schema: s });
    }
    Ok(m)
}

impl RemoteConfigRecord {
    /// Decodes the value of a `mesh/config/remotes/<c>` key.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, RemoteDecodeError> {
        decode("remote config", bytes, |m: &Self| m.schema)
    }

    /// For people: everything but the private key.
    pub fn to_json(&self) -> Value {
        json!({
            "schema": self.schema,
            "cluster": self.cluster,
            "id": self.id,
            "endpoints": self.endpoints,
            "podCIDRs": self.pod_cidrs,
            "caPEM": self.ca_pem,
            "certPEM": self.cert_pem,
            "keyPEM": "<secret>",
        })
    }
}

impl RemoteStatusRecord {
    /// Decodes the value of a `mesh/status/remotes/<c>` key.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, RemoteDecodeError> {
        decode("remote status", bytes, |m: &Self| m.schema)
    }

    /// Seconds since the mirror last knew it was current, at `now_ms` (Unix milliseconds);
    /// `None` if it never was.
    pub fn freshness_age(&self, now_ms: i64) -> Option<f64> {
        (self.current_at_ms > 0).then(|| (now_ms - self.current_at_ms).max(0) as f64 / 1000.0)
    }

    /// For people, with the freshness age at `now_ms`.
    pub fn to_json(&self, now_ms: i64) -> Value {
        json!({
            "schema": self.schema,
            "connected": self.connected,
            "remoteRevision": self.remote_revision,
            "freshnessAgeSeconds": self.freshness_age(now_ms),
            "currentAtMs": self.current_at_ms,
            "keys": self.keys,
            "bytes": self.bytes,
            "resyncs": self.resyncs,
            "rejected": self.rejected,
            "overBudget": self.over_budget,
            "listing": self.list_revision != 0,
            "removedAtMs": self.removed_at_ms,
            "endpoint": self.endpoint,
            "certNotAfterMs": self.cert_not_after_ms,
            "error": self.error,
        })
    }
}
