//! Convergence after the faults end: every cluster's mirror of each remote equals what the
//! remote holds, and every agent's maps equal what its cluster's records say they should be.
//!
//! The mirrors are compared key by key and byte by byte (`mesh/v1/<origin>/` in the origin's
//! store against the same prefix in each other cluster's store). The maps are read from the
//! agents' pins and compared with `node_agent::desired::tables` of the records listed from
//! the agent's cluster at one revision: the agent's own rules applied to the store's
//! contents, so what is checked is that the agent caught up, not that the rules are right
//! (their own tests say that). Backends are compared as sets per frontend: slot order is the
//! agent's to keep.
//!
//! The services are checked a second time against an expectation that owes nothing to the
//! store or to the agent's code: [`expected_services`] works out each global service's
//! backends from the lab's spec (the manifests the lab wrote: pods, their readiness and
//! labels, services' selectors, ports and annotations) and the addresses the lab plan gives
//! pods and services. Neither comparison passes on nothing: an origin with no records, or a
//! spec that expects no services, is a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use std::net::Ipv4Addr;

use etcd_client::{Client, GetOptions};
use lab::plan::Plan;
use lab::spec::LabSpec;
use mesh_api::keys::cluster_prefix;
use node_agent::datapath::{KernelMaps, Pins};
use node_agent::desired::{self, Local};
use node_agent::maps::{Frontend, PROTO_TCP, PROTO_UDP, Tables};
use serde::Serialize;

/// How one mirror differs from its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorDiff {
    /// The cluster the records come from.
    pub origin: String,
    /// The cluster mirroring them.
    pub mirror: String,
    /// Keys the origin has and the mirror lacks.
    pub missing: usize,
    /// Keys the mirror has and the origin does not (deletions not applied).
    pub extra: usize,
    /// Keys whose values differ.
    pub different: usize,
    /// A few of the keys involved, for the report.
    pub examples: Vec<String>,
}

/// Every key and value under `prefix`.
pub async fn read_prefix(
    c: &mut Client,
    prefix: &str,
) -> Result<BTreeMap<String, Vec<u8>>, etcd_client::Error> {
    let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    Ok(r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect())
}

/// Compares the origin's records with a mirror's; `None` when they are equal. An origin with
/// no records is a difference whatever the mirror holds: every cluster publishes at least its
/// cluster record, so it is a broken publisher, not agreement.
pub fn mirror_diff(
    origin: &str,
    mirror: &str,
    at_origin: &BTreeMap<String, Vec<u8>>,
    at_mirror: &BTreeMap<String, Vec<u8>>,
) -> Option<MirrorDiff> {
    let mut d = MirrorDiff {
        origin: origin.to_owned(),
        mirror: mirror.to_owned(),
        missing: 0,
        extra: 0,
        different: 0,
        examples: Vec::new(),
    };
    if at_origin.is_empty() {
        d.missing = 1;
        d.examples.push(format!("{origin} has no records"));
        return Some(d);
    }
    let keys: BTreeSet<&String> = at_origin.keys().chain(at_mirror.keys()).collect();
    for k in keys {
        match (at_origin.get(k), at_mirror.get(k)) {
            (Some(_), None) => d.missing += 1,
            (None, Some(_)) => d.extra += 1,
            (Some(a), Some(b)) if a != b => d.different += 1,
            _ => continue,
        }
        if d.examples.len() < 5 {
            d.examples.push(k.clone());
        }
    }
    (d.missing + d.extra + d.different > 0).then_some(d)
}

/// Reads cluster `origin`'s records from `clients[origin]` and from every other cluster's
/// store: the mirrors that differ.
pub async fn mirrors(
    clients: &mut BTreeMap<String, Client>,
) -> Result<Vec<MirrorDiff>, etcd_client::Error> {
    let names: Vec<String> = clients.keys().cloned().collect();
    let mut out = Vec::new();
    for origin in &names {
        let prefix = cluster_prefix(origin);
        let at_origin = read_prefix(clients.get_mut(origin).expect("named"), &prefix).await?;
        for mirror in names.iter().filter(|m| *m != origin) {
            let at_mirror = read_prefix(clients.get_mut(mirror).expect("named"), &prefix).await?;
            out.extend(mirror_diff(origin, mirror, &at_origin, &at_mirror));
        }
    }
    Ok(out)
}

/// How one agent's maps differ from what its cluster's records say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapsDiff {
    /// `cluster/node`.
    pub agent: String,
    /// Frontends whose backend sets differ (or that one side lacks).
    pub services: usize,
    /// ipcache prefixes that differ.
    pub ipcache: usize,
    /// Enforced identities and rules that differ.
    pub policy: usize,
    /// Frontends whose backend sets differ from what the lab's spec says (or that one side
    /// lacks).
    pub against_spec: usize,
    /// The maps could not be read.
    pub unreadable: Option<String>,
}

/// Compares maps read from an agent with the desired tables; `None` when they agree.
pub fn maps_diff(agent: &str, read: &Tables, want: &Tables) -> Option<MapsDiff> {
    let sets = |t: &Tables| -> BTreeMap<_, BTreeSet<_>> {
        t.services
            .iter()
            .map(|(f, b)| (*f, b.iter().copied().collect()))
            .collect()
    };
    let (a, b) = (sets(read), sets(want));
    let frontends: BTreeSet<_> = a.keys().chain(b.keys()).collect();
    let services = frontends.iter().filter(|f| a.get(f) != b.get(f)).count();
    let prefixes: BTreeSet<_> = read.ipcache.keys().chain(want.ipcache.keys()).collect();
    let ipcache = prefixes
        .iter()
        .filter(|p| read.ipcache.get(p) != want.ipcache.get(p))
        .count();
    let policy = read.enforced.symmetric_difference(&want.enforced).count()
        + read.rules.symmetric_difference(&want.rules).count();
    (services + ipcache + policy > 0).then(|| MapsDiff {
        agent: agent.to_owned(),
        services,
        ipcache,
        policy,
        against_spec: 0,
        unreadable: None,
    })
}

/// Backends by frontend, as (address, port) sets.
pub type ServiceSets = BTreeMap<Frontend, BTreeSet<(Ipv4Addr, u16)>>;

/// The backends the agents of `cluster` should have for each global service once everything
/// has converged and no remote is stale, worked out from the lab's spec alone (every cluster
/// of a lab is connected to every other):
/// - a global service's frontends are its VIP on each TCP and UDP port;
/// - candidates are the ready pods its selector matches in its namespace in this cluster, and
///   in every other cluster with a global, shared service of the same name and namespace, at
///   the target port of that cluster's port of the same name and protocol;
/// - affinity `local` keeps only the local candidates if there are any, `remote` only the
///   remote ones if there are any, `none` keeps all.
pub fn expected_services(spec: &LabSpec, plan: &Plan, cluster: &str) -> ServiceSets {
    let mut out = ServiceSets::new();
    let Some(own) = spec.cluster(cluster) else {
        return out;
    };
    let proto = |p: &str| match p {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    };
    for (index, svc) in own.services.iter().enumerate().filter(|(_, s)| s.global) {
        let vip = Plan::vip(own, index);
        for port in &svc.ports {
            let Some(p) = proto(&port.protocol) else {
                continue;
            };
            let (mut local, mut remote) = (BTreeSet::new(), BTreeSet::new());
            for c in &spec.clusters {
                let is_local = c.name == cluster;
                let Some(theirs) = c.services.iter().find(|s| {
                    s.name == svc.name
                        && s.namespace == svc.namespace
                        && (is_local || (s.global && s.shared))
                }) else {
                    continue;
                };
                let Some(target) = theirs
                    .ports
                    .iter()
                    .find(|tp| tp.name == port.name && tp.protocol == port.protocol)
                else {
                    continue;
                };
                for pod in plan.pods(c) {
                    let selected = pod.spec.namespace == theirs.namespace
                        && theirs
                            .selector
                            .iter()
                            .all(|(k, v)| pod.spec.labels.get(k) == Some(v));
                    if selected && pod.spec.ready {
                        let set = if is_local { &mut local } else { &mut remote };
                        set.insert((pod.ip, target.target_port));
                    }
                }
            }
            let backends = match svc.affinity.as_str() {
                "local" if !local.is_empty() => local,
                "remote" if !remote.is_empty() => remote,
                _ => local.into_iter().chain(remote).collect(),
            };
            out.insert(
                Frontend {
                    vip,
                    port: port.port,
                    proto: p,
                },
                backends,
            );
        }
    }
    out
}

/// Frontends whose backend sets in `read` differ from `expected` (or that one side lacks).
pub fn spec_diff(read: &Tables, expected: &ServiceSets) -> usize {
    let read: ServiceSets = read
        .services
        .iter()
        .map(|(f, b)| (*f, b.iter().map(|b| (b.ip, b.port)).collect()))
        .collect();
    let frontends: BTreeSet<&Frontend> = read.keys().chain(expected.keys()).collect();
    frontends
        .into_iter()
        .filter(|f| read.get(f) != expected.get(f))
        .count()
}

/// Lists `cluster`'s store through `client` and compares every node's maps (pins in
/// `pins_of(node)`) with the desired tables of agents running with `limits`, and their
/// services with `expected` (from [`expected_services`]): the agents that differ.
pub async fn maps(
    client: &mut Client,
    cluster: &str,
    nodes: &[String],
    stale_after_ms: i64,
    limits: desired::Limits,
    expected: &ServiceSets,
    pins_of: impl Fn(&str) -> std::path::PathBuf,
) -> Result<Vec<MapsDiff>, node_agent::source::Error> {
    let (state, _) = node_agent::source::list(client).await?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out = Vec::new();
    for node in nodes {
        let agent = format!("{cluster}/{node}");
        let local = Local {
            cluster: cluster.to_owned(),
            node: node.clone(),
            stale_after_ms,
            limits,
        };
        let want = desired::tables(&state, &local, now_ms);
        match KernelMaps::open(&Pins::new(pins_of(node))).and_then(|m| m.read()) {
            Ok((read, _)) => {
                // A spec that expects nothing would make any agent agree with it.
                let against_spec = spec_diff(&read, expected).max(usize::from(expected.is_empty()));
                match maps_diff(&agent, &read, &want) {
                    Some(d) => out.push(MapsDiff { against_spec, ..d }),
                    None if against_spec > 0 => out.push(MapsDiff {
                        agent,
                        services: 0,
                        ipcache: 0,
                        policy: 0,
                        against_spec,
                        unreadable: None,
                    }),
                    None => {}
                }
            }
            Err(e) => out.push(MapsDiff {
                agent,
                services: 0,
                ipcache: 0,
                policy: 0,
                against_spec: 0,
                unreadable: Some(e.to_string()),
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
