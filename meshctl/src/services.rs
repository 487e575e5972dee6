//! `meshctl services`: the global services a cluster knows, with their backends per cluster,
//! and the Multi-Cluster Services imports (every service exported anywhere: type,
//! ClusterSetIP, merged ports, exporting clusters, conflicts), read from that cluster's own
//! store (its records and its mirrors of every remote) and computed as its agents and its
//! MCS controller compute them ([`mesh_api::clusterset`]).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use etcd_client::{Client, GetOptions};
use mesh_api::Record;
use mesh_api::cidr::Cidr;
use mesh_api::clusterset::{self, Export};
use mesh_api::codec::address;
use mesh_api::keys::{CONFIG_REMOTES, Key, Kind, kind_prefix};
use mesh_api::records::{Affinity, EndpointsRecord, ServiceRecord};
use serde_json::{Value, json};

use crate::Failure;
use crate::output::{Output, print, render};
use mesh_client::contexts::ConfigFile;

/// Show the global services and their backends in every cluster (ready, serving,
/// terminating), whether each cluster exports them (a ServiceExport), and the import every
/// exported service has (its ClusterSetIP, the same in every cluster), as the cluster's own
/// store holds them.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// The cluster's context (default: the current context).
    #[arg(long)]
    context: Option<String>,
    /// Show the clusterset's imports instead (the Multi-Cluster Services API): every service
    /// exported by any cluster, its type, ClusterSetIP and ports, the clusters exporting it,
    /// and where their exports conflict.
    #[arg(long)]
    clusterset: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Runs `meshctl services`.
pub fn run(args: ServicesArgs) -> Result<(), Failure> {
    let (_, file) = ConfigFile::load().map_err(Failure::BadInput)?;
    let ctx = file
        .resolve(args.context.as_deref())
        .map_err(Failure::BadInput)?;
    let runtime = crate::runtime()?;
    let value = runtime
        .block_on(async {
            let own = ctx.cluster().ok();
            let mut client = ctx.client(Duration::from_secs(10)).await?;
            services(&mut client, own).await
        })
        .map_err(Failure::Other)?;
    if args.clusterset {
        let imports = value["imports"].clone();
        return print(args.output, &imports, || imports_table(&imports)).map_err(Failure::Other);
    }
    let services = value["services"].clone();
    print(args.output, &services, || table(&services)).map_err(Failure::Other)
}

/// The clusters whose records this store holds: its own and every configured remote.
async fn clusters(client: &mut Client, own: Option<String>) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = own.into_iter().collect();
    let configs = client
        .get(
            CONFIG_REMOTES,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .context("reading mesh/config/remotes/")?;
    for kv in configs.kvs() {
        if let Ok(Key::RemoteConfig { cluster }) = String::from_utf8_lossy(kv.key()).parse() {
            out.push(cluster);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

async fn records(client: &mut Client, prefix: &str) -> anyhow::Result<Vec<(Key, Record)>> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("reading {prefix}"))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| Record::decode_at(&String::from_utf8_lossy(kv.key()), kv.value()).ok())
        .collect())
}

/// `{"services": […], "imports": […]}`: global and exported services by `namespace/name`,
/// each with one entry per cluster that has it; and every import.
async fn services(client: &mut Client, own: Option<String>) -> anyhow::Result<Value> {
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut exports: BTreeMap<(String, String), Vec<Export>> = BTreeMap::new();
    let mut range: Option<Cidr> = None;
    for cluster in clusters(client, own.clone()).await? {
        if own.as_deref() == Some(cluster.as_str()) {
            let key = Key::Cluster {
                cluster: cluster.clone(),
            }
            .to_string();
            for (_, record) in records(client, &key).await? {
                if let Record::Cluster(c) = record {
                    range = c.clusterset_cidr.parse().ok();
                }
            }
        }
        let mut slices: BTreeMap<(String, String), Vec<EndpointsRecord>> = BTreeMap::new();
        for (key, record) in records(client, &kind_prefix(&cluster, Kind::Endpoints)).await? {
            if let (
                Key::Endpoints {
                    namespace, service, ..
                },
                Record::Endpoints(r),
            ) = (key, record)
            {
                slices.entry((namespace, service)).or_default().push(r);
            }
        }
        for (_, record) in records(client, &kind_prefix(&cluster, Kind::Service)).await? {
            let Record::Service(s) = record else { continue };
            if s.exported {
                exports
                    .entry((s.namespace.clone(), s.name.clone()))
                    .or_default()
                    .push(Export::of_record(&cluster, &s));
            }
            if !s.global {
                continue;
            }
            let empty = Vec::new();
            let backends = slices
                .get(&(s.namespace.clone(), s.name.clone()))
                .unwrap_or(&empty);
            by_name
                .entry(format!("{}/{}", s.namespace, s.name))
                .or_default()
                .push(entry(&cluster, &s, backends));
        }
    }
    let imports = imports(&exports, range.as_ref());
    let services: Vec<Value> = by_name
        .into_iter()
        .map(|(name, clusters)| {
            let mut v = json!({ "service": name, "clusters": clusters });
            if let Some(i) = imports.iter().find(|i| i["service"] == name.as_str()) {
                v["import"] = i.clone();
            }
            v
        })
        .collect();
    Ok(json!({ "services": services, "imports": imports }))
}

/// Every import, with its ClusterSetIP from `range` (this cluster's).
fn imports(exports: &BTreeMap<(String, String), Vec<Export>>, range: Option<&Cidr>) -> Vec<Value> {
    clusterset::imports(exports, range)
        .iter()
        .map(|((ns, name), (i, ip))| {
            json!({
                "service": format!("{ns}/{name}"),
                "type": i.type_.as_str(),
                "clustersetIP": ip.map(|ip| ip.to_string()),
                "ports": i.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
                "sessionAffinity": i.session_affinity.as_str(),
                "clusters": i.clusters,
                "decidedBy": i.decided_by,
                "conflicts": i.conflicts.iter().map(|c| json!({"reason": c.reason.reason(), "cluster": c.cluster, "message": c.message})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The `--clusterset` table: one row per import.
fn imports_table(v: &Value) -> String {
    let imports = v.as_array().cloned().unwrap_or_default();
    if imports.is_empty() {
        return "no service is exported in the clusterset\n".to_owned();
    }
    let mut rows = vec![
        [
            "SERVICE",
            "TYPE",
            "CLUSTERSET-IP",
            "PORTS",
            "CLUSTERS",
            "CONFLICTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in &imports {
        let ports: Vec<String> = i["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or_default();
                let number = format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("?"));
                if name.is_empty() {
                    number
                } else {
                    format!("{name}:{number}")
                }
            })
            .collect();
        let clusters: Vec<&str> = i["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let conflicts: Vec<String> = i["conflicts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["reason"].as_str().unwrap_or("?"),
                    c["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        rows.push(vec![
            i["service"].as_str().unwrap_or("?").to_owned(),
            i["type"].as_str().unwrap_or("?").to_owned(),
            i["clustersetIP"].as_str().unwrap_or("-").to_owned(),
            ports.join(","),
            clusters.join(","),
            if conflicts.is_empty() {
                "-".to_owned()
            } else {
                conflicts.join("; ")
            },
        ]);
    }
    render(&rows)
}

fn entry(cluster: &str, s: &ServiceRecord, slices: &[EndpointsRecord]) -> Value {
    let mut backends = Vec::new();
    let (mut ready, mut serving, mut terminating) = (0, 0, 0);
    for slice in slices {
        let ports: Vec<u32> = slice.ports.iter().map(|p| p.port).collect();
        for e in &slice.endpoints {
            ready += usize::from(e.ready);
            serving += usize::from(e.serving);
            terminating += usize::from(e.terminating);
            let node = (e.node as usize)
                .checked_sub(1)
                .and_then(|i| slice.nodes.get(i))
                .cloned()
                .unwrap_or_default();
            for a in &e.addresses {
                backends.push(json!({
                    "address": address(a),
                    "ports": ports,
                    "node": node,
                    "ready": e.ready,
                    "serving": e.serving,
                    "terminating": e.terminating,
                }));
            }
        }
    }
    json!({
        "cluster": cluster,
        "clusterIPs": s.cluster_ips,
        "shared": s.shared,
        "exported": s.exported,
        "affinity": match Affinity::try_from(s.affinity) {
            Ok(Affinity::Local) => "local",
            Ok(Affinity::Remote) => "remote",
            _ => "none",
        },
        "ready": ready,
        "serving": serving,
        "terminating": terminating,
        "backends": backends,
    })
}

fn table(v: &Value) -> String {
    let services = v.as_array().cloned().unwrap_or_default();
    if services.is_empty() {
        return "no global or exported services\n".to_owned();
    }
    let mut rows = vec![
        [
            "SERVICE",
            "CLUSTERSET-IP",
            "CLUSTER",
            "SHARED",
            "EXPORTED",
            "AFFINITY",
            "READY",
            "SERVING",
            "TERMINATING",
            "BACKENDS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in &services {
        for (i, c) in s["clusters"].as_array().into_iter().flatten().enumerate() {
            let backends: Vec<String> = c["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let port = b["ports"][0]
                        .as_u64()
                        .map_or(String::new(), |p| format!(":{p}"));
                    let state = if b["ready"] == true {
                        ""
                    } else if b["terminating"] == true {
                        " (terminating)"
                    } else {
                        " (not ready)"
                    };
                    format!("{}{port}{state}", b["address"].as_str().unwrap_or("?"))
                })
                .collect();
            let import = match (&s["import"]["clustersetIP"], &s["import"]["type"]) {
                (Value::String(ip), _) => ip.clone(),
                (_, Value::String(t)) if t == "Headless" => "headless".to_owned(),
                (_, Value::String(_)) => "(no range)".to_owned(),
                _ => "-".to_owned(),
            };
            rows.push(vec![
                if i == 0 {
                    s["service"].as_str().unwrap_or("?").to_owned()
                } else {
                    String::new()
                },
                if i == 0 { import } else { String::new() },
                c["cluster"].as_str().unwrap_or("?").to_owned(),
                if c["shared"] == true { "yes" } else { "no" }.to_owned(),
                if c["exported"] == true { "yes" } else { "no" }.to_owned(),
                c["affinity"].as_str().unwrap_or("none").to_owned(),
                c["ready"].to_string(),
                c["serving"].to_string(),
                c["terminating"].to_string(),
                if backends.is_empty() {
                    "-".to_owned()
                } else {
                    backends.join(",")
                },
            ]);
        }
    }
    render(&rows)
}
