//! `meshctl services`: the global services a cluster knows, with their backends per cluster,
//! read from that cluster's own store (its records and its mirrors of every remote).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use etcd_client::{Client, GetOptions};
use mesh_api::Record;
use mesh_api::codec::address;
use mesh_api::keys::{CONFIG_REMOTES, Key, Kind, kind_prefix};
use mesh_api::records::{Affinity, EndpointsRecord, ServiceRecord};
use serde_json::{Value, json};

use crate::Failure;
use crate::output::{Output, print, render};
use mesh_client::contexts::ConfigFile;

/// Show the global services and their backends in every cluster (ready, serving,
/// terminating), as the cluster's own store holds them.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// The cluster's context (default: the current context).
    #[arg(long)]
    context: Option<String>,
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
    print(args.output, &value, || table(&value)).map_err(Failure::Other)
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

/// Global services by `namespace/name`, each with one entry per cluster that has it.
async fn services(client: &mut Client, own: Option<String>) -> anyhow::Result<Value> {
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for cluster in clusters(client, own).await? {
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
    Ok(json!(
        by_name
            .into_iter()
            .map(|(name, clusters)| json!({ "service": name, "clusters": clusters }))
            .collect::<Vec<_>>()
    ))
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
        return "no global services\n".to_owned();
    }
    let mut rows = vec![
        [
            "SERVICE",
            "CLUSTER",
            "SHARED",
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
            rows.push(vec![
                if i == 0 {
                    s["service"].as_str().unwrap_or("?").to_owned()
                } else {
                    String::new()
                },
                c["cluster"].as_str().unwrap_or("?").to_owned(),
                if c["shared"] == true { "yes" } else { "no" }.to_owned(),
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
