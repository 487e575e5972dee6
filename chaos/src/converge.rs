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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions};
use mesh_api::keys::cluster_prefix;
use node_agent::datapath::{KernelMaps, Pins};
use node_agent::desired::{self, Local};
use node_agent::maps::Tables;
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

/// Compares the origin's records with a mirror's; `None` when they are equal.
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
        unreadable: None,
    })
}

/// Lists `cluster`'s store through `client` and compares every node's maps (pins in
/// `pins_of(node)`) with the desired tables of agents running with `limits`: the agents that
/// differ.
pub async fn maps(
    client: &mut Client,
    cluster: &str,
    nodes: &[String],
    stale_after_ms: i64,
    limits: desired::Limits,
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
            Ok((read, _)) => out.extend(maps_diff(&agent, &read, &want)),
            Err(e) => out.push(MapsDiff {
                agent,
                services: 0,
                ipcache: 0,
                policy: 0,
                unreadable: Some(e.to_string()),
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
