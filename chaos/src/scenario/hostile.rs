//! The `hostile-remote` scenario's parts: a third cluster, `hostile`, connected to apps (and
//! infra) that attacks through its own records — the only thing a remote controls — while apps
//! runs its usual workloads; and the checks that nothing it did reached further than the trust
//! boundary allows.
//!
//! What it does, in its own store, as its own admin:
//! - claims apps' client pod address and an apps node's address as its node's addresses, and
//!   infra's echo pod as another node's, with a link-local ExternalIP beside it;
//! - labels its reserved identities (`remote-node`, `world`) as apps' client pods, and maps
//!   a pod address to its `remote-node` identity;
//! - copies an apps node's WireGuard public key;
//! - floods its ipcache with [`FLOOD`] pod addresses, more than apps' agents take from one
//!   remote (the scenario's `--remote-pod-limit`);
//! - rewrites a few records with [`CHURN_VALUE`]-byte values without pause, faster than apps
//!   takes from one remote (the scenario's `--remote-write-mib-per-minute`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use etcd_client::{Txn, TxnOp};
use lab::spec::{ClusterSpec, LabSpec, PolicySpec};
use mesh_api::identity::{REMOTE_NODE, WORLD, identity};
use mesh_api::records::{IdentityRecord, IpCacheRecord, NodeRecord};
use mesh_api::{Key, Record, SCHEMA};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::workload::Connect;

/// The hostile cluster's name and id.
pub const NAME: &str = "hostile";
/// Its id.
pub const ID: u8 = 3;
/// Pod addresses it floods its ipcache with.
pub const FLOOD: u32 = 1_200;
/// The pod addresses apps' agents take from one remote in this scenario.
pub const POD_LIMIT: u32 = 1_000;
/// What one remote may write in apps per minute here (MiB), after a burst of
/// [`HELD_MIB`].
pub const WRITE_MIB_PER_MINUTE: u64 = 2;
/// What one remote may hold in apps here (MiB), and the write burst.
pub const HELD_MIB: u64 = 1;
/// The size of each rewrite of its churned record (under the 64 KiB an identity may have).
pub const CHURN_VALUE: usize = 48 << 10;
/// Where every member serves its metrics (the lab's port).
pub const METRICS_PORT: u16 = lab::instance::APISERVER_METRICS_PORT;
/// Bytes apps' store may grow by during the faults besides what the rate allows: its own
/// workloads' versions (KV load, service churn) over a short run.
const OWN_GROWTH: f64 = 8.0 * 1_048_576.0;

/// The lab for `hostile-remote`: the chaos lab with `hostile` (a copy of infra's layout, one
/// member) and the tighter per-remote bounds that make a short run reach them.
pub fn spec(mut spec: LabSpec) -> LabSpec {
    let mut hostile: ClusterSpec = spec
        .cluster("infra")
        .cloned()
        .expect("the chaos lab has infra");
    hostile.name = NAME.to_owned();
    hostile.id = ID;
    hostile.members = 1;
    hostile.policies.clear();
    // Its services are its own: apps' clients reach only apps' and infra's echo pods, so a
    // failed connection of theirs is a tunnel to infra broken, not hostile's own doing.
    for s in &mut hostile.services {
        s.shared = false;
    }
    spec.clusters.push(hostile);
    spec.apiserver_args = [
        "--remote-max-mib".to_owned(),
        HELD_MIB.to_string(),
        "--remote-write-mib-per-minute".to_owned(),
        WRITE_MIB_PER_MINUTE.to_string(),
    ]
    .to_vec();
    spec.agent_args = vec!["--remote-pod-limit".to_owned(), POD_LIMIT.to_string()];
    spec
}

/// The policy apps gets before the attack (after the lab is up, whose check has every client
/// reach every cluster's echo pods): its echo pods admit apps' and infra's clients only.
pub fn policy() -> PolicySpec {
    PolicySpec {
        name: "echo-from-clients".to_owned(),
        namespace: "demo".to_owned(),
        spec: serde_yaml::to_value(json!({
            "endpointSelector": {"matchLabels": {"app": "echo"}},
            "ingress": [{
                "fromClusters": ["apps", "infra"],
                "fromEndpoints": {"matchLabels": {"app": "client"}},
                "ports": [{"port": 8080, "protocol": "TCP"}],
            }],
        }))
        .expect("JSON is YAML"),
    }
}

/// Addresses the attack claims.
#[derive(Debug, Clone)]
pub struct Targets {
    /// apps' client pod.
    pub apps_client: Ipv4Addr,
    /// An apps node.
    pub apps_node: Ipv4Addr,
    /// infra's first echo pod.
    pub infra_pod: Ipv4Addr,
    /// hostile's own nodes' addresses (its to claim).
    pub hostile_nodes: Vec<Ipv4Addr>,
}

fn put(key: Key, record: Record) -> TxnOp {
    TxnOp::put(key.to_string(), record.encode(), None)
}

/// The one-off records of the attack, written in `hostile`'s store; `apps_key` is the value
/// of an apps node's key record (copied whole).
pub async fn attack(hostile: &Connect, t: &Targets, apps_key: Vec<u8>) -> Result<()> {
    let mut c = hostile.client(0).await?;
    let node = |name: &str, internal: Ipv4Addr, external: &str| {
        put(
            Key::Node {
                cluster: NAME.to_owned(),
                node: name.to_owned(),
            },
            Record::Node(NodeRecord {
                schema: SCHEMA,
                name: name.to_owned(),
                internal_ips: vec![internal.to_string()],
                external_ips: vec![external.to_owned()],
                ..Default::default()
            }),
        )
    };
    let relabel = |local: u16| {
        put(
            Key::Identity {
                cluster: NAME.to_owned(),
                id: identity(u16::from(ID), local),
            },
            Record::Identity(IdentityRecord {
                schema: SCHEMA,
                labels: vec![
                    "app=client".to_owned(),
                    "io.kubernetes.pod.namespace=demo".to_owned(),
                ],
            }),
        )
    };
    let ops = vec![
        node("evil-1", t.apps_client, &t.apps_node.to_string()),
        node("evil-2", t.infra_pod, "169.254.169.254"),
        relabel(REMOTE_NODE),
        relabel(WORLD),
        pod(
            Ipv4Addr::new(10, ID, 250, 1),
            identity(u16::from(ID), REMOTE_NODE),
        ),
        TxnOp::put(
            Key::NodeKey {
                cluster: NAME.to_owned(),
                node: "evil-1".to_owned(),
            }
            .to_string(),
            apps_key,
            None,
        ),
    ];
    c.txn(Txn::new().and_then(ops))
        .await
        .context("writing the claims")?;
    // The flood, in transactions of 100.
    let flood: Vec<TxnOp> = (0..FLOOD)
        .map(|i| {
            pod(
                Ipv4Addr::new(10, ID, 100 + (i / 250) as u8, (i % 250) as u8 + 1),
                identity(u16::from(ID), 300),
            )
        })
        .collect();
    for chunk in flood.chunks(100) {
        c.txn(Txn::new().and_then(chunk.to_vec()))
            .await
            .context("flooding the ipcache")?;
    }
    Ok(())
}

fn pod(ip: Ipv4Addr, id: u32) -> TxnOp {
    put(
        Key::IpCache {
            cluster: NAME.to_owned(),
            ip: ip.into(),
        },
        Record::IpCache(IpCacheRecord {
            schema: SCHEMA,
            identity: id,
            node_ip: String::new(),
            pod: String::new(),
        }),
    )
}

/// Rewrites [`CHURN_KEYS`] identity records of `hostile` in turn, from two writers, until
/// `stop`; the number of rewrites. Several keys, because a mirror batch carries one version
/// per key: rewrites of a single key in quick succession reach apps as fewer writes.
pub async fn churn(hostile: Connect, stop: CancellationToken) -> u64 {
    let writers: Vec<_> = (0..2u32)
        .map(|w| tokio::spawn(churn_one(hostile.clone(), stop.clone(), w)))
        .collect();
    let mut n = 0;
    for w in writers {
        n += w.await.unwrap_or(0);
    }
    n
}

/// The identity records [`churn`] rewrites, per writer.
pub const CHURN_KEYS: u32 = 4;

async fn churn_one(hostile: Connect, stop: CancellationToken, writer: u32) -> u64 {
    let mut n = 0u64;
    let mut member = 0;
    while !stop.is_cancelled() {
        let Ok(mut c) = hostile.client(member).await else {
            member += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.is_cancelled() {
            let key = Key::Identity {
                cluster: NAME.to_owned(),
                id: identity(
                    u16::from(ID),
                    301 + (writer * CHURN_KEYS + n as u32 % CHURN_KEYS) as u16,
                ),
            }
            .to_string();
            let value = Record::Identity(IdentityRecord {
                schema: SCHEMA,
                labels: vec![format!("churn={writer}-{n}-{}", "x".repeat(CHURN_VALUE))],
            })
            .encode();
            if c.put(key.as_str(), value, None).await.is_err() {
                break;
            }
            n += 1;
        }
        member += 1;
    }
    n
}

/// What apps' status of hostile showed while the faults lasted.
#[derive(Debug, Default)]
pub struct Seen {
    /// Paused (over budget) at some point.
    pub paused: AtomicBool,
    /// The most records refused.
    pub rejected: AtomicU64,
}

/// Polls apps' status record of hostile every half second until `stop`.
pub async fn watch_status(apps: Connect, seen: Arc<Seen>, stop: CancellationToken) {
    let key = Key::RemoteStatus {
        cluster: NAME.to_owned(),
    }
    .to_string();
    let mut member = 0;
    while !stop.is_cancelled() {
        if let Ok(mut c) = apps.client(member).await
            && let Ok(resp) = c.get(key.as_str(), None).await
            && let Some(kv) = resp.kvs().first()
            && let Ok(s) = mesh_api::remote::RemoteStatusRecord::decode_checked(kv.value())
        {
            if s.over_budget {
                seen.paused.store(true, Ordering::Relaxed);
            }
            seen.rejected.fetch_max(s.rejected, Ordering::Relaxed);
        } else {
            member += 1;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// `raftmesh_mvcc_bytes` of the member whose metrics are at `host`.
pub async fn mvcc_bytes(host: Ipv4Addr) -> Result<f64> {
    metric(host, "raftmesh_mvcc_bytes ").await
}

/// How often the member whose metrics are at `host` paused its mirror of hostile
/// (`raftmesh_remote_paused_total{cluster="hostile"}`; only a leader's mirror counts, 0 when
/// the member never mirrored). A counter, so a pause short enough to fall between two polls
/// of the status record is still seen.
pub async fn pauses(host: Ipv4Addr) -> Result<f64> {
    match metric(
        host,
        &format!("raftmesh_remote_paused_total{{cluster=\"{NAME}\"}} "),
    )
    .await
    {
        Ok(n) => Ok(n),
        Err(e) if e.to_string().starts_with("no ") => Ok(0.0),
        Err(e) => Err(e),
    }
}

/// The value of the sample whose line starts with `prefix` (name, labels and a space) in the
/// metrics of the member at `host`.
async fn metric(host: Ipv4Addr, prefix: &str) -> Result<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = format!("{host}:{METRICS_PORT}");
    let mut tcp = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .context("connecting")??;
    tcp.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_string(&mut body))
        .await
        .context("reading")??;
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {} at {addr}", prefix.trim_end()))
}

/// One apps agent's maps, as far as the checks need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// Enforced identities and rules.
    pub policy: (BTreeSet<u32>, BTreeSet<node_agent::maps::Rule>),
    /// ipcache: address → (identity, cluster id).
    pub ipcache: BTreeMap<Ipv4Addr, (u32, u16)>,
}

/// Reads the maps pinned at `pins`.
pub fn agent_view(pins: &std::path::Path) -> Result<AgentView> {
    let maps = node_agent::datapath::KernelMaps::open(&node_agent::datapath::Pins::new(
        pins.to_path_buf(),
    ))?;
    let (t, _) = maps.read()?;
    Ok(AgentView {
        policy: (t.enforced, t.rules),
        ipcache: t
            .ipcache
            .iter()
            .map(|(p, i)| (p.ip, (i.identity, i.cluster_id)))
            .collect(),
    })
}

/// The violations in what apps' agents and store show after the attack.
pub fn check(
    t: &Targets,
    before: &BTreeMap<String, AgentView>,
    after: &BTreeMap<String, AgentView>,
    seen: &Seen,
    growth: Option<(f64, f64)>,
    key_conflicts: &Value,
) -> Vec<Value> {
    let mut out = Vec::new();
    if !seen.paused.load(Ordering::Relaxed) {
        out.push(json!({"problem": "apps never paused hostile's rewrites"}));
    }
    if seen.rejected.load(Ordering::Relaxed) == 0 {
        out.push(json!({"problem": "apps refused none of hostile's records (a link-local node address, a pod with a reserved identity)"}));
    }
    match growth {
        Some((grown, allowed)) if grown > allowed => out.push(json!({
            "problem": "apps' store grew past what one remote may write",
            "grown_bytes": grown,
            "allowed_bytes": allowed,
        })),
        Some(_) => {}
        None => out.push(json!({"problem": "apps' store size could not be read"})),
    }
    let holder_ok = key_conflicts.as_array().is_some_and(|list| {
        list.iter().any(|c| {
            c["holder"].as_str().is_some_and(|h| h.starts_with("apps/"))
                && c["refused"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|n| n == "hostile/evil-1"))
        })
    });
    if !holder_ok {
        out.push(json!({"problem": "meshctl status does not report the copied key with apps' node as its holder", "keyConflicts": key_conflicts}));
    }
    let hostile_range = |ip: &Ipv4Addr| ip.octets()[0] == 10 && ip.octets()[1] == ID;
    for (node, view) in after {
        let id_of = |ip: &Ipv4Addr| view.ipcache.get(ip).map(|(_, c)| *c);
        for (what, ip, owner) in [
            ("apps' client", t.apps_client, 1),
            ("an apps node", t.apps_node, 1),
            ("infra's echo pod", t.infra_pod, 2),
        ] {
            if id_of(&ip) != Some(owner) {
                out.push(json!({"agent": node, "problem": format!("{what} {ip} is not cluster {owner}'s"), "entry": view.ipcache.get(&ip)}));
            }
        }
        let hostile: Vec<&Ipv4Addr> = view
            .ipcache
            .iter()
            .filter(|(_, (_, c))| *c == u16::from(ID))
            .map(|(ip, _)| ip)
            .collect();
        if let Some(ip) = hostile
            .iter()
            .find(|ip| !hostile_range(ip) && !t.hostile_nodes.contains(ip))
        {
            out.push(json!({"agent": node, "problem": format!("hostile holds {ip}, neither its pods' nor its nodes'")}));
        }
        if hostile.len() as u32 >= POD_LIMIT {
            out.push(json!({"agent": node, "problem": format!("{} of hostile's addresses programmed, past the limit of {POD_LIMIT}", hostile.len())}));
        }
        if view.policy.1.iter().any(|r| r.peer >> 16 == u32::from(ID)) {
            out.push(
                json!({"agent": node, "problem": "a rule admits one of hostile's identities"}),
            );
        }
        match before.get(node) {
            Some(b) if b.policy != view.policy => out.push(json!({
                "agent": node,
                "problem": "the policy tables changed",
                "rules_before": b.policy.1.len(),
                "rules_after": view.policy.1.len(),
            })),
            Some(_) => {}
            None => out.push(json!({"agent": node, "problem": "no maps read before the faults"})),
        }
    }
    out
}

/// What one remote may have grown apps' store by over `seconds`, with apps' own workloads.
pub fn allowed_growth(seconds: f64) -> f64 {
    let mib = 1_048_576.0;
    HELD_MIB as f64 * mib + seconds * WRITE_MIB_PER_MINUTE as f64 * mib / 60.0 + OWN_GROWTH
}
