//! The Multi-Cluster Services API's derived state (KEP-1645, `sigs.k8s.io/mcs-api`): what a
//! `ServiceImport` says, given every cluster's export of one service, and the ClusterSetIP of
//! every import. Pure and deterministic: the API server's leader (which writes
//! `ServiceImport`s and the exports' conditions) and every node agent (which programs the
//! ClusterSetIP and answers `clusterset.local` DNS) compute the same result from the same
//! mirrored records, in every cluster.
//!
//! # Merging exports ([`merge`])
//! The exports of one `namespace/name` are ordered oldest first (the `ServiceExport`'s creation
//! time, then the cluster name), and the oldest decides, as the KEP's conflict resolution
//! says: its type (ClusterSetIP or Headless), its session affinity, `internalTrafficPolicy` and
//! `trafficDistribution` are the import's, and every property on which an export differs is a
//! [`Conflict`] with the mcs-api reason (`TypeConflict`, `SessionAffinityConflict`,
//! `SessionAffinityConfigConflict`, `InternalTrafficPolicyConflict`,
//! `TrafficDistributionConflict`). Ports are the
//! union of every export's ports, merged by name, then by number and protocol; a port whose
//! name an older export already uses for another number or protocol, or whose number and
//! protocol an older export uses under another name, is left out. Exports whose ports differ
//! at all (a port left out, or ports the others lack) are a `PortConflict`, as the KEP and the
//! conformance suite have it. A conflict is reported on every export of the service (the
//! KEP's recommendation, which the conformance suite checks), and never removes the import nor
//! any endpoint: it changes what the import looks like, not which pods serve it.
//!
//! # ClusterSetIPs ([`allocate`])
//! A ClusterSetIP is the same address in every cluster, with no coordination: it is computed
//! from the import's `namespace/name`. Candidate `k` of a service is
//!
//! ```text
//! first + fnv1a64("<namespace>/<name>#<k>") mod (usable addresses)
//! ```
//!
//! where `first` is the range's first usable address (the network and broadcast addresses are
//! skipped in ranges larger than /31). Imports take addresses in order of their oldest export
//! (creation time, then `namespace/name`), each taking its first candidate not already taken;
//! after 64 hashed candidates an import scans upward from its first. So an import's address
//! depends only on the older imports whose candidates it collided with: a newer import never
//! moves an older one, and an import that goes away moves only the newer imports that had
//! collided with it. All clusters must allocate from the same range (their cluster records say
//! which they use).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::cidr::Cidr;

/// A port of an export or an import.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImportPort {
    /// Port name (may be empty for a single-port service).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

impl ImportPort {
    /// A record's port; `None` for a number that is no port.
    pub fn of_record(p: &crate::records::Port) -> Option<ImportPort> {
        Some(ImportPort {
            name: p.name.clone(),
            port: u16::try_from(p.port).ok()?,
            protocol: p.protocol.clone(),
        })
    }
}

/// Session affinity of an export or an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum SessionAffinity {
    /// `None`.
    #[default]
    None,
    /// `ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds` (0: Kubernetes'
    /// default, 10800).
    ClientIp {
        /// Timeout in seconds.
        timeout: u32,
    },
}

impl SessionAffinity {
    /// `None` or `ClientIP`, as the Kubernetes field spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAffinity::None => "None",
            SessionAffinity::ClientIp { .. } => "ClientIP",
        }
    }
}

/// The type of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImportType {
    /// Reached through one ClusterSetIP.
    ClusterSetIp,
    /// Headless: DNS names the pods.
    Headless,
}

impl ImportType {
    /// `ClusterSetIP` or `Headless`, as the `ServiceImport`'s `type` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportType::ClusterSetIp => "ClusterSetIP",
            ImportType::Headless => "Headless",
        }
    }
}

/// One cluster's export of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The exporting cluster.
    pub cluster: String,
    /// The `ServiceExport`'s creation time (Unix seconds).
    pub created: i64,
    /// The exported Service is headless.
    pub headless: bool,
    /// Its ports.
    pub ports: Vec<ImportPort>,
    /// Its session affinity.
    pub session_affinity: SessionAffinity,
    /// Its `internalTrafficPolicy` (`Cluster` or `Local`), if set.
    pub internal_traffic_policy: Option<String>,
    /// Its `trafficDistribution` (e.g. `PreferClose`), if set.
    pub traffic_distribution: Option<String>,
}

impl Export {
    /// `cluster`'s export as its service record says it (the record must be `exported`).
    pub fn of_record(cluster: &str, s: &crate::records::ServiceRecord) -> Export {
        Export {
            cluster: cluster.to_owned(),
            created: s.export_created,
            headless: s.headless,
            ports: s.ports.iter().filter_map(ImportPort::of_record).collect(),
            session_affinity: if s.client_ip_affinity {
                SessionAffinity::ClientIp {
                    timeout: s.affinity_timeout,
                }
            } else {
                SessionAffinity::None
            },
            internal_traffic_policy: Some(s.internal_traffic_policy.clone())
                .filter(|p| p == "Cluster" || p == "Local"),
            traffic_distribution: Some(s.traffic_distribution.clone()).filter(|d| {
                (1..=63).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_alphanumeric())
            }),
        }
    }
}

/// What exports of one service disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictReason {
    /// Their ports differ (the import has their union, the oldest export's where they clash).
    Port,
    /// Headless where the oldest export is not, or the other way round.
    Type,
    /// Another `sessionAffinity`.
    SessionAffinity,
    /// Another ClientIP timeout.
    SessionAffinityConfig,
    /// Another `internalTrafficPolicy`.
    InternalTrafficPolicy,
    /// Another `trafficDistribution`.
    TrafficDistribution,
}

impl ConflictReason {
    /// The condition reason mcs-api defines for it.
    pub fn reason(self) -> &'static str {
        match self {
            ConflictReason::Port => "PortConflict",
            ConflictReason::Type => "TypeConflict",
            ConflictReason::SessionAffinity => "SessionAffinityConflict",
            ConflictReason::SessionAffinityConfig => "SessionAffinityConfigConflict",
            ConflictReason::InternalTrafficPolicy => "InternalTrafficPolicyConflict",
            ConflictReason::TrafficDistribution => "TrafficDistributionConflict",
        }
    }
}

/// One disagreement of an export with the oldest: the reason, the cluster whose export
/// disagrees, and what differs, in words.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Conflict {
    /// The reason.
    pub reason: ConflictReason,
    /// The cluster whose export disagrees.
    pub cluster: String,
    /// What differs, e.g. `port "http": 8080/TCP in apps, 80/TCP in infra (exported first)`.
    pub message: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.reason(), self.message)
    }
}

/// What the `ServiceImport` of one service says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Its type (the oldest export's).
    pub type_: ImportType,
    /// The merged ports, sorted by name, number and protocol.
    pub ports: Vec<ImportPort>,
    /// Session affinity (the oldest export's).
    pub session_affinity: SessionAffinity,
    /// `internalTrafficPolicy` (the oldest export's).
    pub internal_traffic_policy: Option<String>,
    /// `trafficDistribution` (the oldest export's).
    pub traffic_distribution: Option<String>,
    /// The exporting clusters, sorted.
    pub clusters: Vec<String>,
    /// The oldest export's creation time: the import's place in ClusterSetIP allocation.
    pub created: i64,
    /// The cluster whose export decides (the oldest).
    pub decided_by: String,
    /// Every disagreement, in the order of the exports (oldest first); empty when they agree.
    pub conflicts: Vec<Conflict>,
}

impl Import {
    /// The `Conflict` condition's reason: the reasons of every conflict, comma-separated
    /// (as mcs-api allows), each once, in [`ConflictReason`] order.
    pub fn conflict_reasons(&self) -> String {
        let reasons: BTreeSet<ConflictReason> = self.conflicts.iter().map(|c| c.reason).collect();
        reasons
            .iter()
            .map(|r| r.reason())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The import of the service whose exports are `exports` (any order); `None` when there are
/// none.
pub fn merge(exports: &[Export]) -> Option<Import> {
    let mut ordered: Vec<&Export> = exports.iter().collect();
    ordered.sort_by(|a, b| (a.created, &a.cluster).cmp(&(b.created, &b.cluster)));
    let oldest = *ordered.first()?;
    let type_ = if oldest.headless {
        ImportType::Headless
    } else {
        ImportType::ClusterSetIp
    };
    let mut import = Import {
        type_,
        ports: Vec::new(),
        session_affinity: oldest.session_affinity,
        internal_traffic_policy: oldest.internal_traffic_policy.clone(),
        traffic_distribution: oldest.traffic_distribution.clone(),
        clusters: ordered.iter().map(|e| e.cluster.clone()).collect(),
        created: oldest.created,
        decided_by: oldest.cluster.clone(),
        conflicts: Vec::new(),
    };
    import.clusters.sort();
    import.clusters.dedup();
    let first = format!("in {} (exported first)", oldest.cluster);
    // Port name → (port, cluster) and (number, protocol) → (name, cluster), first come.
    let mut by_name: BTreeMap<&str, (&ImportPort, &str)> = BTreeMap::new();
    let mut by_number: BTreeMap<(u16, &str), (&str, &str)> = BTreeMap::new();
    for export in &ordered {
        let here = format!("in {}", export.cluster);
        let mut conflict = |reason, message: String| {
            import.conflicts.push(Conflict {
                reason,
                cluster: export.cluster.clone(),
                message,
            })
        };
        if export.headless != oldest.headless {
            let kind = |h: bool| if h { "Headless" } else { "ClusterSetIP" };
            conflict(
                ConflictReason::Type,
                format!(
                    "{} {here}, {} {first}",
                    kind(export.headless),
                    kind(oldest.headless)
                ),
            );
        }
        match (export.session_affinity, oldest.session_affinity) {
            (
                SessionAffinity::ClientIp { timeout: a },
                SessionAffinity::ClientIp { timeout: b },
            ) if a != b => conflict(
                ConflictReason::SessionAffinityConfig,
                format!("ClientIP timeout {a}s {here}, {b}s {first}"),
            ),
            (a, b) if a.as_str() != b.as_str() => conflict(
                ConflictReason::SessionAffinity,
                format!(
                    "sessionAffinity {} {here}, {} {first}",
                    a.as_str(),
                    b.as_str()
                ),
            ),
            _ => {}
        }
        // Copied fields: the oldest export's value stands, any other is a conflict.
        for (reason, field, own, decided) in [
            (
                ConflictReason::InternalTrafficPolicy,
                "internalTrafficPolicy",
                &export.internal_traffic_policy,
                &oldest.internal_traffic_policy,
            ),
            (
                ConflictReason::TrafficDistribution,
                "trafficDistribution",
                &export.traffic_distribution,
                &oldest.traffic_distribution,
            ),
        ] {
            if own != decided {
                let shown = |v: &Option<String>| v.as_deref().unwrap_or("unset").to_owned();
                conflict(
                    reason,
                    format!("{field} {} {here}, {} {first}", shown(own), shown(decided)),
                );
            }
        }
        for port in &export.ports {
            if let Some((taken, owner)) = by_name.get(port.name.as_str()) {
                if (taken.port, &taken.protocol) != (port.port, &port.protocol) {
                    conflict(
                        ConflictReason::Port,
                        format!(
                            "port {:?}: {}/{} {here}, {}/{} in {owner} (exported first)",
                            port.name, port.port, port.protocol, taken.port, taken.protocol
                        ),
                    );
                }
                continue;
            }
            if let Some((name, owner)) = by_number.get(&(port.port, port.protocol.as_str())) {
                conflict(
                    ConflictReason::Port,
                    format!(
                        "port {}/{} is named {:?} {here}, {name:?} in {owner} (exported first)",
                        port.port, port.protocol, port.name
                    ),
                );
                continue;
            }
            by_name.insert(&port.name, (port, &export.cluster));
            by_number.insert((port.port, &port.protocol), (&port.name, &export.cluster));
            import.ports.push(port.clone());
        }
    }
    import.ports.sort();
    // Exports that agree on every shared port but not on the set: the import has the union.
    if !import
        .conflicts
        .iter()
        .any(|c| c.reason == ConflictReason::Port)
    {
        let union: BTreeSet<&ImportPort> = import.ports.iter().collect();
        for export in &ordered {
            let own: BTreeSet<&ImportPort> = export.ports.iter().collect();
            if own != union {
                let missing: Vec<String> = union
                    .difference(&own)
                    .map(|p| format!("{:?} {}/{}", p.name, p.port, p.protocol))
                    .collect();
                import.conflicts.push(Conflict {
                    reason: ConflictReason::Port,
                    cluster: export.cluster.clone(),
                    message: format!(
                        "the export in {} lacks port {}: the import has the union of the exports' ports",
                        export.cluster,
                        missing.join(", ")
                    ),
                });
            }
        }
    }
    Some(import)
}

/// How many hashed candidates an import tries before scanning.
const HASHED_CANDIDATES: u64 = 64;

/// FNV-1a, 64 bits: simple enough to state in the docs and reproduce anywhere.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The usable addresses of an IPv4 range: first address and count.
fn usable(range: &Cidr) -> Option<(u32, u64)> {
    let IpAddr::V4(net) = range.addr() else {
        return None;
    };
    let size = 1u64 << (32 - u32::from(range.bits()));
    if size <= 2 {
        return Some((u32::from(net), size));
    }
    Some((u32::from(net) + 1, size - 2))
}

/// Candidate `k` of `namespace/name` in `range`, as an offset from the first usable address.
fn candidate(namespace: &str, name: &str, k: u64, count: u64) -> u64 {
    fnv1a64(format!("{namespace}/{name}#{k}").as_bytes()) % count
}

/// The ClusterSetIP of each import in `imports` (`(namespace, name)` → the oldest export's
/// creation time), from `range` (IPv4). An import gets no address only when the range is full.
pub fn allocate(
    range: &Cidr,
    imports: &BTreeMap<(String, String), i64>,
) -> BTreeMap<(String, String), Ipv4Addr> {
    let mut out = BTreeMap::new();
    let Some((first, count)) = usable(range) else {
        return out;
    };
    let mut order: Vec<(&i64, &(String, String))> = imports.iter().map(|(k, v)| (v, k)).collect();
    order.sort();
    let mut taken: BTreeSet<u64> = BTreeSet::new();
    for (_, key @ (namespace, name)) in order {
        if taken.len() as u64 >= count {
            break;
        }
        let hashed = (0..HASHED_CANDIDATES)
            .map(|k| candidate(namespace, name, k, count))
            .find(|c| !taken.contains(c));
        let offset = hashed.unwrap_or_else(|| {
            let start = candidate(namespace, name, 0, count);
            (0..count)
                .map(|i| (start + i) % count)
                .find(|c| !taken.contains(c))
                .expect("the range has a free address")
        });
        taken.insert(offset);
        let addr = first + u32::try_from(offset).expect("an IPv4 range's offset fits 32 bits");
        out.insert(key.clone(), Ipv4Addr::from(addr));
    }
    out
}

/// Every import of the clusterset and its ClusterSetIP: the exports of each service merged
/// ([`merge`]), the ClusterSetIP imports given addresses from `range` ([`allocate`]; none
/// without a range).
pub fn imports(
    exports: &BTreeMap<(String, String), Vec<Export>>,
    range: Option<&Cidr>,
) -> BTreeMap<(String, String), (Import, Option<Ipv4Addr>)> {
    let merged: BTreeMap<(String, String), Import> = exports
        .iter()
        .filter_map(|(k, e)| Some((k.clone(), merge(e)?)))
        .collect();
    let ips = range.map_or_else(BTreeMap::new, |r| {
        let set = merged
            .iter()
            .filter(|(_, i)| i.type_ == ImportType::ClusterSetIp)
            .map(|(k, i)| (k.clone(), i.created))
            .collect();
        allocate(r, &set)
    });
    merged
        .into_iter()
        .map(|(k, i)| {
            let ip = ips.get(&k).copied();
            (k, (i, ip))
        })
        .collect()
}

#[cfg(test)]
mod tests;
