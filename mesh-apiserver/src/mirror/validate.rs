//! What a remote cluster may make this cluster store: only well-formed records of its own,
//! under its own prefix, naming only its own identities and addresses, with node addresses
//! that a node can have (no loopback, link-local, multicast, …). Whether a node address
//! collides with another cluster's ranges depends on every connected cluster and changes as
//! they come and go, so the agents check that, against everything they know
//! (`node-agent`'s `desired::refused_node_ip`).
//!
//! The facts a record is checked against (the remote's id and pod CIDRs) come from the
//! connection's configuration, which an admin wrote with `meshctl connect`, never from the
//! remote's own claims: a remote that rewrote its cluster record to claim another id or a
//! neighbour's pod range would otherwise validate its own lies.

use std::net::IpAddr;

use mesh_api::cidr::Cidr;
use mesh_api::codec::DecodeError;
use mesh_api::keys::cluster_prefix;
use mesh_api::{Key, Record};

/// The largest record mirrored (key and value): mesh records are a few KiB (a slice of 100
/// endpoints is 1.9 KiB), and a batch of the largest must stay under the request limit.
pub const MAX_RECORD_BYTES: usize = 512 << 10;

/// Why a remote record is not mirrored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Larger than [`MAX_RECORD_BYTES`], or a value larger than its kind's
    /// ([`mesh_api::Kind::max_value_bytes`]).
    #[error("{key:?}: {bytes} bytes, more than such a record may have ({limit})")]
    TooLarge {
        /// The key, lossily as text.
        key: String,
        /// Key and value bytes, or value bytes.
        bytes: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The key is outside the remote's prefix or does not follow the layout.
    #[error("{key:?}: {reason}")]
    Layout {
        /// The key, lossily as text.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The value is not the record its key calls for.
    #[error("{key}: {source}")]
    Value {
        /// The key.
        key: String,
        /// The decoder's complaint.
        source: DecodeError,
    },
    /// An identity (key or ipcache entry) of another cluster.
    #[error("{key}: identity {identity} belongs to cluster id {}, not {expected}", identity >> 16)]
    ForeignIdentity {
        /// The key.
        key: String,
        /// The identity.
        identity: u32,
        /// The remote's id.
        expected: u32,
    },
    /// A pod address or pod CIDR outside the remote's pod CIDRs.
    #[error("{key}: {what} {address} is outside the cluster's pod CIDRs {cidrs:?}")]
    ForeignAddress {
        /// The key.
        key: String,
        /// What it is (pod IP, endpoint address, node pod CIDR).
        what: &'static str,
        /// The address or CIDR.
        address: String,
        /// The remote's pod CIDRs, as configured.
        cidrs: Vec<String>,
    },
    /// A node address that no node may have (loopback, link-local, multicast, …), or that is
    /// not an address at all.
    #[error("{key}: node address {address:?} is refused: {reason}")]
    NodeAddress {
        /// The key.
        key: String,
        /// The address as written.
        address: String,
        /// Why.
        reason: &'static str,
    },
    /// A pod address mapped to a reserved identity (its cluster's nodes', `world`, …).
    #[error("{key}: identity {identity} is reserved; a pod address cannot have it")]
    ReservedIdentity {
        /// The key.
        key: String,
        /// The identity.
        identity: u32,
    },
    /// The cluster record names another cluster or id.
    #[error(
        "{key}: the cluster record says {name} id {id}, but this connection is to {expected} id {expected_id}"
    )]
    ForeignCluster {
        /// The key.
        key: String,
        /// The name it claims.
        name: String,
        /// The id it claims.
        id: u32,
        /// The remote's name.
        expected: String,
        /// The remote's id.
        expected_id: u32,
    },
}

impl Rejection {
    /// Every value [`Rejection::reason`] gives (the mirror starts each remote's counters at 0
    /// for all of them).
    pub const REASONS: [&'static str; 8] = [
        "too-large",
        "layout",
        "value",
        "foreign-identity",
        "foreign-address",
        "foreign-cluster",
        "node-address",
        "reserved-identity",
    ];

    /// A short reason, for a metric label (one of [`Rejection::REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too-large",
            Rejection::Layout { .. } => "layout",
            Rejection::Value { .. } => "value",
            Rejection::ForeignIdentity { .. } => "foreign-identity",
            Rejection::ForeignAddress { .. } => "foreign-address",
            Rejection::ForeignCluster { .. } => "foreign-cluster",
            Rejection::NodeAddress { .. } => "node-address",
            Rejection::ReservedIdentity { .. } => "reserved-identity",
        }
    }
}

/// The checks for one remote cluster.
#[derive(Debug, Clone)]
pub struct Validator {
    cluster: String,
    id: u32,
    pod_cidrs: Vec<Cidr>,
    prefix: String,
}

impl Validator {
    /// Checks for records of `cluster`, whose id is `id` and whose pods live in `pod_cidrs`.
    pub fn new(cluster: &str, id: u32, pod_cidrs: Vec<Cidr>) -> Self {
        Self {
            cluster: cluster.to_owned(),
            id,
            pod_cidrs,
            prefix: cluster_prefix(cluster),
        }
    }

    /// The prefix every record must lie under: `mesh/v1/<cluster>/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `value` may be mirrored at `key`.
    pub fn check(&self, key: &[u8], value: &[u8]) -> Result<(), Rejection> {
        let layout = |reason: &str| Rejection::Layout {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_owned(),
        };
        if key.len() + value.len() > MAX_RECORD_BYTES {
            return Err(Rejection::TooLarge {
                key: String::from_utf8_lossy(&key[..key.len().min(200)]).into_owned(),
                bytes: key.len() + value.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let text = std::str::from_utf8(key).map_err(|_| layout("not UTF-8"))?;
        if !text.starts_with(&self.prefix) {
            return Err(layout(&format!("outside {}", self.prefix)));
        }
        let kind = text.parse::<Key>().ok().and_then(|k| k.kind());
        if let Some(limit) = kind.map(mesh_api::Kind::max_value_bytes)
            && value.len() > limit
        {
            return Err(Rejection::TooLarge {
                key: text.to_owned(),
                bytes: value.len(),
                limit,
            });
        }
        let (parsed, record) = Record::decode_at(text, value).map_err(|e| match e {
            DecodeError::Key(k) => layout(&k.reason),
            source => Rejection::Value {
                key: text.to_owned(),
                source,
            },
        })?;
        self.check_record(text, &parsed, &record)
    }

    fn check_record(&self, key: &str, parsed: &Key, record: &Record) -> Result<(), Rejection> {
        match (parsed, record) {
            (Key::Identity { id, .. }, _) => self.identity(key, *id),
            (Key::IpCache { ip, .. }, Record::IpCache(r)) => {
                self.address(key, "pod IP", *ip)?;
                self.identity(key, r.identity)?;
                if mesh_api::identity::is_reserved(r.identity) {
                    return Err(Rejection::ReservedIdentity {
                        key: key.to_owned(),
                        identity: r.identity,
                    });
                }
                Ok(())
            }
            (_, Record::Endpoints(r)) => {
                // A hostname becomes a DNS name in every cluster (`clusterset.local`).
                if let Some(e) = r
                    .endpoints
                    .iter()
                    .find(|e| !e.hostname.is_empty() && !mesh_api::keys::is_label(&e.hostname))
                {
                    return Err(Rejection::Value {
                        key: key.to_owned(),
                        source: DecodeError::Malformed {
                            kind: mesh_api::Kind::Endpoints,
                            reason: format!("hostname {:?} is not a DNS-1123 label", e.hostname),
                        },
                    });
                }
                for a in r.endpoints.iter().flat_map(|e| &e.addresses) {
                    let ip = match a.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(a.as_slice()).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(a.as_slice()).expect("16 bytes")),
                        n => {
                            return Err(Rejection::Value {
                                key: key.to_owned(),
                                source: DecodeError::Malformed {
                                    kind: mesh_api::Kind::Endpoints,
                                    reason: format!("an address of {n} bytes"),
                                },
                            });
                        }
                    };
                    self.address(key, "endpoint address", ip)?;
                }
                Ok(())
            }
            (_, Record::Node(r)) => {
                for text in r.internal_ips.iter().chain(&r.external_ips) {
                    let refused = |reason| Rejection::NodeAddress {
                        key: key.to_owned(),
                        address: text.clone(),
                        reason,
                    };
                    let ip: IpAddr = text.parse().map_err(|_| refused("not an IP address"))?;
                    if let Some(special) = mesh_api::cidr::special(ip) {
                        return Err(refused(special));
                    }
                }
                self.cidrs(key, "node pod CIDR", &r.pod_cidrs)
            }
            (_, Record::Cluster(r)) => {
                if r.name != self.cluster || r.id != self.id {
                    return Err(Rejection::ForeignCluster {
                        key: key.to_owned(),
                        name: r.name.clone(),
                        id: r.id,
                        expected: self.cluster.clone(),
                        expected_id: self.id,
                    });
                }
                self.cidrs(key, "cluster pod CIDR", &r.pod_cidrs)
            }
            _ => Ok(()),
        }
    }

    fn identity(&self, key: &str, identity: u32) -> Result<(), Rejection> {
        if identity >> 16 == self.id {
            Ok(())
        } else {
            Err(Rejection::ForeignIdentity {
                key: key.to_owned(),
                identity,
                expected: self.id,
            })
        }
    }

    fn foreign(&self, key: &str, what: &'static str, address: String) -> Rejection {
        Rejection::ForeignAddress {
            key: key.to_owned(),
            what,
            address,
            cidrs: self.pod_cidrs.iter().map(ToString::to_string).collect(),
        }
    }

    fn address(&self, key: &str, what: &'static str, ip: IpAddr) -> Result<(), Rejection> {
        if mesh_api::cidr::any_contains(&self.pod_cidrs, ip) {
            Ok(())
        } else {
            Err(self.foreign(key, what, ip.to_string()))
        }
    }

    fn cidrs(&self, key: &str, what: &'static str, cidrs: &[String]) -> Result<(), Rejection> {
        for text in cidrs {
            let covered = text
                .parse::<Cidr>()
                .is_ok_and(|c| self.pod_cidrs.iter().any(|p| p.covers(&c)));
            if !covered {
                return Err(self.foreign(key, what, text.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
