//! Every key of the layout (ARCHITECTURE.md, "Key layout and records"), built and parsed in one place.
//!
//! A cluster's records all live under `mesh/v1/<cluster>/`, so a cluster's whole export is
//! one prefix and a remote mirrors it with one watch. Parsing is strict: a key that does not
//! follow the layout exactly is an error naming what is wrong, never a best guess.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The root of every cluster's records.
pub const ROOT: &str = "mesh/v1/";
/// Remote-cluster connections (written by meshctl, admin only).
pub const CONFIG_REMOTES: &str = "mesh/config/remotes/";
/// Remote-cluster status (written by the API server's leader).
pub const STATUS_REMOTES: &str = "mesh/status/remotes/";
/// Remote clusters the leader's mirror is current with: one key per remote, bound to a lease
/// the mirror renews on every answer from the remote (see `remote::CURRENT_TTL_SECONDS`).
pub const STATUS_CURRENT: &str = "mesh/status/current/";
/// What each node's agent finds unreachable among the remote nodes it probes:
/// `mesh/status/reach/<cluster>/<node>`, written by the node's agent under its node key's
/// lease (see [`crate::remote::ReachRecord`]). Local: never mirrored, never watched by agents.
pub const STATUS_REACH: &str = "mesh/status/reach/";

/// The kinds of records under a cluster's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `mesh/v1/<c>/cluster`.
    Cluster,
    /// `mesh/v1/<c>/nodes/<node>`.
    Node,
    /// `mesh/v1/<c>/nodekeys/<node>`.
    NodeKey,
    /// `mesh/v1/<c>/identities/<id>`.
    Identity,
    /// `mesh/v1/<c>/ipcache/<ip>`.
    IpCache,
    /// `mesh/v1/<c>/services/<ns>/<name>`.
    Service,
    /// `mesh/v1/<c>/endpoints/<ns>/<name>/<slice>`.
    Endpoints,
    /// `mesh/v1/<c>/policies/<ns>/<name>`.
    Policy,
    /// `mesh/v1/<c>/synced/<kind>`.
    Synced,
}

impl Kind {
    /// Kinds that have a `synced/<kind>` marker, in the order they are synced.
    pub const SYNCED: [Kind; 6] = [
        Kind::Node,
        Kind::Identity,
        Kind::IpCache,
        Kind::Service,
        Kind::Endpoints,
        Kind::Policy,
    ];

    /// The largest value of the kind that is accepted from a remote (or, for node keys, from
    /// an agent): several times what the publisher writes at its largest (a slice of 100
    /// dual-stack endpoints with node and zone names is under 8 KiB, a node key record about
    /// 100 bytes), so only a broken or hostile writer reaches it, and a remote rewriting its
    /// records grows every member's history by at most this per write.
    pub fn max_value_bytes(self) -> usize {
        match self {
            Kind::NodeKey | Kind::IpCache | Kind::Synced => 1 << 10,
            Kind::Cluster | Kind::Node => 16 << 10,
            Kind::Identity | Kind::Service | Kind::Endpoints => 64 << 10,
            Kind::Policy => 256 << 10,
        }
    }

    /// The path segment under the cluster prefix.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Node => "nodes",
            Kind::NodeKey => "nodekeys",
            Kind::Identity => "identities",
            Kind::IpCache => "ipcache",
            Kind::Service => "services",
            Kind::Endpoints => "endpoints",
            Kind::Policy => "policies",
            Kind::Synced => "synced",
        }
    }

    fn from_segment(s: &str) -> Option<Kind> {
        [
            Kind::Cluster,
            Kind::Node,
            Kind::NodeKey,
            Kind::Identity,
            Kind::IpCache,
            Kind::Service,
            Kind::Endpoints,
            Kind::Policy,
            Kind::Synced,
        ]
        .into_iter()
        .find(|k| k.segment() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())
    }
}

/// One key of the layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// The cluster's own record.
    Cluster {
        /// Owning cluster.
        cluster: String,
    },
    /// A Kubernetes node.
    Node {
        /// Owning cluster.
        cluster: String,
        /// Node name.
        node: String,
    },
    /// A node's WireGuard key, written by its agent.
    NodeKey {
        /// Owning cluster.
        cluster: String,
        /// Node name.
        node: String,
    },
    /// A security identity.
    Identity {
        /// Owning cluster.
        cluster: String,
        /// `cluster_id << 16 | local_id`.
        id: u32,
    },
    /// Pod IP → identity.
    IpCache {
        /// Owning cluster.
        cluster: String,
        /// The pod IP.
        ip: IpAddr,
    },
    /// A Kubernetes Service.
    Service {
        /// Owning cluster.
        cluster: String,
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
    /// At most 100 endpoints of a Service.
    Endpoints {
        /// Owning cluster.
        cluster: String,
        /// Namespace.
        namespace: String,
        /// Service name.
        service: String,
        /// Slice name (unique within the service).
        slice: String,
    },
    /// A cross-cluster policy.
    Policy {
        /// Owning cluster.
        cluster: String,
        /// Namespace.
        namespace: String,
        /// Policy name.
        name: String,
    },
    /// Marker: the initial sync of `kind` is complete.
    Synced {
        /// Owning cluster.
        cluster: String,
        /// The kind synced.
        kind: Kind,
    },
    /// How to reach a remote cluster.
    RemoteConfig {
        /// The remote cluster.
        cluster: String,
    },
    /// How the connection to a remote cluster is doing.
    RemoteStatus {
        /// The remote cluster.
        cluster: String,
    },
    /// Present while the mirror is current with a remote cluster (bound to a lease).
    RemoteCurrent {
        /// The remote cluster.
        cluster: String,
    },
    /// What a node's agent finds unreachable, written by that agent.
    NodeReach {
        /// The node's (this) cluster.
        cluster: String,
        /// Node name.
        node: String,
    },
}

/// A key that does not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key:?} is not a raftmesh key: {reason}")]
pub struct KeyError {
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Key {
    /// The cluster that owns the record (for remote keys: the remote cluster).
    pub fn cluster(&self) -> &str {
        match self {
            Key::Cluster { cluster }
            | Key::Node { cluster, .. }
            | Key::NodeKey { cluster, .. }
            | Key::Identity { cluster, .. }
            | Key::IpCache { cluster, .. }
            | Key::Service { cluster, .. }
            | Key::Endpoints { cluster, .. }
            | Key::Policy { cluster, .. }
            | Key::Synced { cluster, .. }
            | Key::RemoteConfig { cluster }
            | Key::RemoteStatus { cluster }
            | Key::RemoteCurrent { cluster }
            | Key::NodeReach { cluster, .. } => cluster,
        }
    }

    /// The kind of record, for keys under `mesh/v1/`.
    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            Key::Cluster { .. } => Kind::Cluster,
            Key::Node { .. } => Kind::Node,
            Key::NodeKey { .. } => Kind::NodeKey,
            Key::Identity { .. } => Kind::Identity,
            Key::IpCache { .. } => Kind::IpCache,
            Key::Service { .. } => Kind::Service,
            Key::Endpoints { .. } => Kind::Endpoints,
            Key::Policy { .. } => Kind::Policy,
            Key::Synced { .. } => Kind::Synced,
            Key::RemoteConfig { .. }
            | Key::RemoteStatus { .. }
            | Key::RemoteCurrent { .. }
            | Key::NodeReach { .. } => return None,
        })
    }
}

/// `mesh/v1/<cluster>/`: everything a cluster exports.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{ROOT}{cluster}/")
}

/// `mesh/v1/<cluster>/<kind>/` (for [`Kind::Cluster`], the cluster record's key itself).
pub fn kind_prefix(cluster: &str, kind: Kind) -> String {
    match kind {
        Kind::Cluster => format!("{ROOT}{cluster}/cluster"),
        _ => format!("{ROOT}{cluster}/{}/", kind.segment()),
    }
}

/// The end of the etcd range of every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Cluster { cluster } => write!(f, "{ROOT}{cluster}/cluster"),
            Key::Node { cluster, node } => write!(f, "{ROOT}{cluster}/nodes/{node}"),
            Key::NodeKey { cluster, node } => write!(f, "{ROOT}{cluster}/nodekeys/{node}"),
            Key::Identity { cluster, id } => write!(f, "{ROOT}{cluster}/identities/{id}"),
            Key::IpCache { cluster, ip } => write!(f, "{ROOT}{cluster}/ipcache/{ip}"),
            Key::Service {
                cluster,
                namespace,
                name,
            } => write!(f, "{ROOT}{cluster}/services/{namespace}/{name}"),
            Key::Endpoints {
                cluster,
                namespace,
                service,
                slice,
            } => write!(f, "{ROOT}{cluster}/endpoints/{namespace}/{service}/{slice}"),
            Key::Policy {
                cluster,
                namespace,
                name,
            } => write!(f, "{ROOT}{cluster}/policies/{namespace}/{name}"),
            Key::Synced { cluster, kind } => write!(f, "{ROOT}{cluster}/synced/{kind}"),
            Key::RemoteConfig { cluster } => write!(f, "{CONFIG_REMOTES}{cluster}"),
            Key::RemoteStatus { cluster } => write!(f, "{STATUS_REMOTES}{cluster}"),
            Key::RemoteCurrent { cluster } => write!(f, "{STATUS_CURRENT}{cluster}"),
            Key::NodeReach { cluster, node } => write!(f, "{STATUS_REACH}{cluster}/{node}"),
        }
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(key: &str) -> Result<Key, KeyError> {
        let bad = |reason: &str| KeyError {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(c) = key.strip_prefix(CONFIG_REMOTES) {
            return Ok(Key::RemoteConfig {
                cluster: name(c).map_err(|r| bad(&r))?,
            });
        }
        if let Some(c) = key.strip_prefix(STATUS_REMOTES) {
            return Ok(Key::RemoteStatus {
                cluster: name(c).map_err(|r| bad(&r))?,
            });
        }
        if let Some(c) = key.strip_prefix(STATUS_CURRENT) {
            return Ok(Key::RemoteCurrent {
                cluster: name(c).map_err(|r| bad(&r))?,
            });
        }
        if let Some(rest) = key.strip_prefix(STATUS_REACH) {
            let Some((cluster, node)) = rest.split_once('/') else {
                return Err(bad("reach keys are mesh/status/reach/<cluster>/<node>"));
            };
            return Ok(Key::NodeReach {
                cluster: name(cluster).map_err(|r| bad(&format!("cluster: {r}")))?,
                node: name(node).map_err(|r| bad(&format!("node: {r}")))?,
            });
        }
        let rest = key.strip_prefix(ROOT).ok_or_else(|| {
            bad(
                "does not start with mesh/v1/, mesh/config/remotes/, mesh/status/remotes/, mesh/status/current/ or mesh/status/reach/",
            )
        })?;
        let parts: Vec<&str> = rest.split('/').collect();
        let cluster = name(parts[0]).map_err(|r| bad(&format!("cluster: {r}")))?;
        let kind = parts
            .get(1)
            .and_then(|s| Kind::from_segment(s))
            .ok_or_else(|| bad("unknown record kind after the cluster"))?;
        let args = &parts[2..];
        let want = match kind {
            Kind::Cluster => 0,
            Kind::Service | Kind::Policy => 2,
            Kind::Endpoints => 3,
            _ => 1,
        };
        if args.len() != want {
            return Err(bad(&format!(
                "{kind} keys have {want} segment(s) after {kind}, not {}",
                args.len()
            )));
        }
        let n = |i: usize, what: &str| name(args[i]).map_err(|r| bad(&format!("{what}: {r}")));
        Ok(match kind {
            Kind::Cluster => Key::Cluster { cluster },
            Kind::Node => Key::Node {
                cluster,
                node: n(0, "node")?,
            },
            Kind::NodeKey => Key::NodeKey {
                cluster,
                node: n(0, "node")?,
            },
            Kind::Identity => Key::Identity {
                cluster,
                id: args[0]
                    .parse()
                    .ok()
                    .filter(|id: &u32| args[0] == id.to_string())
                    .ok_or_else(|| bad("identity: not a canonical u32"))?,
            },
            Kind::IpCache => Key::IpCache {
                cluster,
                ip: args[0]
                    .parse()
                    .ok()
                    .filter(|ip: &IpAddr| args[0] == ip.to_string())
                    .ok_or_else(|| bad("ipcache: not a canonical IP address"))?,
            },
            Kind::Service => Key::Service {
                cluster,
                namespace: n(0, "namespace")?,
                name: n(1, "name")?,
            },
            Kind::Endpoints => Key::Endpoints {
                cluster,
                namespace: n(0, "namespace")?,
                service: n(1, "service")?,
                slice: n(2, "slice")?,
            },
            Kind::Policy => Key::Policy {
                cluster,
                namespace: n(0, "namespace")?,
                name: n(1, "name")?,
            },
            Kind::Synced => Key::Synced {
                cluster,
                kind: Kind::from_segment(args[0])
                    .filter(|k| Kind::SYNCED.contains(k))
                    .ok_or_else(|| bad("synced: not a synced kind"))?,
            },
        })
    }
}

/// Whether `s` can be a name segment of a key (cluster, node, namespace, object name): a
/// DNS-1123 subdomain, as Kubernetes names are.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// Whether `s` is a DNS-1123 label (a pod's hostname, one label of a DNS name): at most 63
/// lowercase letters, digits and `-`, not starting or ending with `-`.
pub fn is_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_name(s)
}

fn name(s: &str) -> Result<String, String> {
    let ok = is_name(s);
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a DNS-1123 name"))
    }
}

#[cfg(test)]
mod tests;
