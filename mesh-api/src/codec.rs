//! Encoding and decoding records, checked against the key they live at, and the form people
//! read (`meshctl` prints it as JSON or YAML).

use std::net::IpAddr;

use prost::Message;
use serde_json::{Value, json};

use crate::SCHEMA;
use crate::keys::{Key, KeyError, Kind};
use crate::records::{
    Affinity, ClusterRecord, EndpointsRecord, IdentityRecord, IpCacheRecord, NodeKeyRecord,
    NodeRecord, PolicyRecord, Port, ServiceRecord, SyncedRecord,
};

/// Encoded size of the slice described in the crate docs (100 ready IPv4 endpoints, 10
/// nodes, 3 zones, one port), measured by `codec::tests`.
pub const SLICE_100_BYTES: usize = 1_925;

/// Any record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// At [`Key::Cluster`].
    Cluster(ClusterRecord),
    /// At [`Key::Node`].
    Node(NodeRecord),
    /// At [`Key::NodeKey`].
    NodeKey(NodeKeyRecord),
    /// At [`Key::Identity`].
    Identity(IdentityRecord),
    /// At [`Key::IpCache`].
    IpCache(IpCacheRecord),
    /// At [`Key::Service`].
    Service(ServiceRecord),
    /// At [`Key::Endpoints`].
    Endpoints(EndpointsRecord),
    /// At [`Key::Policy`].
    Policy(PolicyRecord),
    /// At [`Key::Synced`].
    Synced(SyncedRecord),
}

/// A value that is not a record of its key's kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The key is not in the layout.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The key holds no record this crate knows (e.g. remote configuration).
    #[error("{key} holds no mesh/v1 record")]
    NotARecord {
        /// The key.
        key: String,
    },
    /// The bytes are not the protobuf message of the kind.
    #[error("{kind} record: {reason}")]
    Malformed {
        /// The kind expected.
        kind: Kind,
        /// The decoder's complaint.
        reason: String,
    },
    /// Written by a newer raftmesh: reading it could misread it.
    #[error("{kind} record has schema {schema}; this build reads up to {SCHEMA}")]
    NewerSchema {
        /// The kind.
        kind: Kind,
        /// The record's schema.
        schema: u32,
    },
    /// No schema version (field 1 missing).
    #[error("{kind} record has no schema version")]
    NoSchema {
        /// The kind.
        kind: Kind,
    },
}

impl Record {
    /// The kind of key it belongs at.
    pub fn kind(&self) -> Kind {
        match self {
            Record::Cluster(_) => Kind::Cluster,
            Record::Node(_) => Kind::Node,
            Record::NodeKey(_) => Kind::NodeKey,
            Record::Identity(_) => Kind::Identity,
            Record::IpCache(_) => Kind::IpCache,
            Record::Service(_) => Kind::Service,
            Record::Endpoints(_) => Kind::Endpoints,
            Record::Policy(_) => Kind::Policy,
            Record::Synced(_) => Kind::Synced,
        }
    }

    fn schema(&self) -> u32 {
        match self {
            Record::Cluster(r) => r.schema,
            Record::Node(r) => r.schema,
            Record::NodeKey(r) => r.schema,
            Record::Identity(r) => r.schema,
            Record::IpCache(r) => r.schema,
            Record::Service(r) => r.schema,
            Record::Endpoints(r) => r.schema,
            Record::Policy(r) => r.schema,
            Record::Synced(r) => r.schema,
        }
    }

    /// The protobuf bytes stored at the key.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Cluster(r) => r.encode_to_vec(),
            Record::Node(r) => r.encode_to_vec(),
            Record::NodeKey(r) => r.encode_to_vec(),
            Record::Identity(r) => r.encode_to_vec(),
            Record::IpCache(r) => r.encode_to_vec(),
            Record::Service(r) => r.encode_to_vec(),
            Record::Endpoints(r) => r.encode_to_vec(),
            Record::Policy(r) => r.encode_to_vec(),
            Record::Synced(r) => r.encode_to_vec(),
        }
    }

    /// Decodes the value of a key of `kind`, refusing newer schemas.
    pub fn decode(kind: Kind, bytes: &[u8]) -> Result<Record, DecodeError> {
        fn msg<M: Message + Default>(kind: Kind, bytes: &[u8]) -> Result<M, DecodeError> {
            M::decode(bytes).map_err(|e| DecodeError::Malformed {
                kind,
                reason: e.to_string(),
            })
        }
        let record = match kind {
            Kind::Cluster => Record::Cluster(msg(kind, bytes)?),
            Kind::Node => Record::Node(msg(kind, bytes)?),
            Kind::NodeKey => Record::NodeKey(msg(kind, bytes)?),
            Kind::Identity => Record::Identity(msg(kind, bytes)?),
            Kind::IpCache => Record::IpCache(msg(kind, bytes)?),
            Kind::Service => Record::Service(msg(kind, bytes)?),
            Kind::Endpoints => Record::Endpoints(msg(kind, bytes)?),
            Kind::Policy => Record::Policy(msg(kind, bytes)?),
            Kind::Synced => Record::Synced(msg(kind, bytes)?),
        };
        match record.schema() {
            0 => Err(DecodeError::NoSchema { kind }),
            s if s > SCHEMA => Err(DecodeError::NewerSchema { kind, schema: s }),
            _ => Ok(record),
        }
    }

    /// Parses `key` and decodes `value` as its record.
    pub fn decode_at(key: &str, value: &[u8]) -> Result<(Key, Record), DecodeError> {
        let parsed: Key = key.parse()?;
        let kind = parsed.kind().ok_or_else(|| DecodeError::NotARecord {
            key: key.to_owned(),
        })?;
        Ok((parsed, Record::decode(kind, value)?))
    }

    /// The record as people read it: field names, IP addresses as text, endpoint node and
    /// zone names resolved.
    pub fn to_json(&self) -> Value {
        match self {
            Record::Cluster(r) => {
                let mut v = json!({
                "schema": r.schema,
                "name": r.name,
                "id": r.id,
                "podCIDRs": r.pod_cidrs,
                "serviceCIDRs": r.service_cidrs,
                "apiEndpoints": r.api_endpoints,
                "caFingerprint": r.ca_fingerprint,
                });
                if !r.clusterset_cidr.is_empty() {
                    v["clustersetCIDR"] = json!(r.clusterset_cidr);
                }
                v
            }
            Record::Node(r) => json!({
                "schema": r.schema,
                "name": r.name,
                "internalIPs": r.internal_ips,
                "externalIPs": r.external_ips,
                "podCIDRs": r.pod_cidrs,
                "labels": r.labels,
                "zone": r.zone,
            }),
            Record::NodeKey(r) => json!({
                "schema": r.schema,
                "publicKey": r.public_key,
                "listenPort": r.listen_port,
                "bootID": r.boot_id,
            }),
            Record::Identity(r) => json!({ "schema": r.schema, "labels": r.labels }),
            Record::IpCache(r) => json!({
                "schema": r.schema,
                "identity": r.identity,
                "nodeIP": r.node_ip,
                "pod": r.pod,
            }),
            Record::Service(r) => {
                let mut v = json!({
                    "schema": r.schema,
                    "namespace": r.namespace,
                    "name": r.name,
                    "clusterIPs": r.cluster_ips,
                    "ports": ports(&r.ports),
                    "global": r.global,
                    "shared": r.shared,
                    "affinity": match Affinity::try_from(r.affinity) {
                        Ok(Affinity::None) => "none".to_owned(),
                        Ok(Affinity::Local) => "local".to_owned(),
                        Ok(Affinity::Remote) => "remote".to_owned(),
                        Err(_) => format!("unknown ({})", r.affinity),
                    },
                });
                if r.exported {
                    v["export"] = json!({
                        "created": r.export_created,
                        "headless": r.headless,
                        "sessionAffinity": if r.client_ip_affinity { "ClientIP" } else { "None" },
                        "affinityTimeoutSeconds": r.affinity_timeout,
                    });
                    if !r.internal_traffic_policy.is_empty() {
                        v["export"]["internalTrafficPolicy"] = json!(r.internal_traffic_policy);
                    }
                    if !r.traffic_distribution.is_empty() {
                        v["export"]["trafficDistribution"] = json!(r.traffic_distribution);
                    }
                }
                v
            }
            Record::Endpoints(r) => {
                let pick = |table: &[String], i: u32| {
                    (i as usize)
                        .checked_sub(1)
                        .and_then(|i| table.get(i))
                        .cloned()
                        .unwrap_or_default()
                };
                let endpoints: Vec<Value> = r
                    .endpoints
                    .iter()
                    .map(|e| {
                        let mut v = json!({
                            "addresses": e.addresses.iter().map(|a| address(a)).collect::<Vec<_>>(),
                            "node": pick(&r.nodes, e.node),
                            "zone": pick(&r.zones, e.zone),
                            "ready": e.ready,
                            "serving": e.serving,
                            "terminating": e.terminating,
                        });
                        if !e.hostname.is_empty() {
                            v["hostname"] = json!(e.hostname);
                        }
                        v
                    })
                    .collect();
                json!({ "schema": r.schema, "ports": ports(&r.ports), "endpoints": endpoints })
            }
            Record::Policy(r) => json!({
                "schema": r.schema,
                "namespace": r.namespace,
                "name": r.name,
                "endpointSelector": r.endpoint_selector,
                "ingress": r.ingress.iter().map(|rule| json!({
                    "fromClusters": rule.from_clusters,
                    "fromLabels": rule.from_labels,
                    "ports": rule.ports.iter().map(|p| json!({"port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
            Record::Synced(r) => json!({ "schema": r.schema }),
        }
    }
}

fn ports(ports: &[Port]) -> Vec<Value> {
    ports
        .iter()
        .map(|p| json!({ "name": p.name, "port": p.port, "protocol": p.protocol }))
        .collect()
}

/// Raw address bytes as text (`"<n bytes>"` when neither IPv4 nor IPv6).
pub fn address(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).to_string(),
        n => format!("<{n} bytes>"),
    }
}

/// An address as the raw bytes endpoints store.
pub fn address_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests;
