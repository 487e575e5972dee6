//! `mesh-bench publish`: how long the leader takes to publish a cluster of a given size from
//! `--manifests-dir`, and what the records cost in the store.
//!
//! No anchor runs beside it: nothing else publishes these records (Cilium's
//! clustermesh-apiserver needs a Kubernetes API server, which this machine does not have), so
//! the figures stand alone, with the command and machine facts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::GetOptions;
use mesh_apiserver::publish::convert::{Settings, desired};
use mesh_apiserver::publish::objects::Objects;
use serde_json::json;
use testkit::localcluster::{Cluster, Flavor, Spec};
use tokio::time::Instant;

use crate::kv::workloads::{allocated_bytes, rss_bytes};
use crate::machine::Machine;
use crate::synthetic::Shape;

/// `mesh-bench publish`'s options.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Services (each with one EndpointSlice).
    #[arg(long, default_value_t = 1_000)]
    pub services: usize,
    /// Pods (a multiple of --services).
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Nodes.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Directory for publish-<services>x<pods>.md and .json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// The mesh-apiserver binary [default: next to mesh-bench].
    #[arg(long)]
    pub raftmesh_bin: Option<PathBuf>,
}

/// The keys a complete publish of `yaml` holds: the records, one identity per label set, the
/// eight reserved identities, one ipcache entry per pod, the cluster record and six markers.
pub fn expected_keys(yaml: &str, cluster: &str, cluster_id: u16) -> Result<i64> {
    let mut objects = Objects::default();
    objects.add_yaml(yaml)?;
    let d = desired(
        &Settings {
            cluster: cluster.into(),
            cluster_id,
        },
        &objects,
    );
    ensure!(d.problems.is_empty(), "the synthetic cluster has problems");
    Ok((d.records.len() + d.label_sets().len() + 8 + d.workloads.len() + 1 + 6) as i64)
}

pub async fn run(args: PublishArgs, command: String) -> Result<()> {
    ensure!(
        args.services > 0 && args.pods.is_multiple_of(args.services),
        "--pods must be a multiple of --services"
    );
    let bin = match args.raftmesh_bin {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("mesh-apiserver"),
    };
    ensure!(
        bin.is_file(),
        "mesh-apiserver binary {} not found",
        bin.display()
    );
    let machine = Machine::read([("raftmesh", bin.as_path())]);
    eprintln!("mesh-bench publish: {machine}");
    let shape = Shape {
        nodes: args.nodes,
        services: args.services,
        pods: args.pods,
    };
    let yaml = shape.manifests();

    let dir = tempfile::tempdir()?;
    let mut spec = Spec::with_members(3);
    spec.extra_args = [
        "--cluster-name",
        "bench",
        "--cluster-id",
        "9",
        "--manifests-dir",
    ]
    .map(String::from)
    .to_vec();
    spec.extra_args.push(dir.path().display().to_string());
    let cluster = Cluster::start(Flavor::Raftmesh(bin), spec).await?;
    let leader = cluster.leader().await?;
    let mut client = cluster.client_for(leader).await?;

    // The leader published the empty directory as soon as it led; wait for that, then
    // measure the sync of the manifests to the complete key count.
    let empty = 8 + 1 + 6;
    let count = async |client: &mut etcd_client::Client| -> Result<i64> {
        Ok(client
            .get(
                "mesh/v1/bench/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .count())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&mut client).await? < empty {
        ensure!(
            Instant::now() < deadline,
            "the empty cluster was not published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The markers are the empty publish's last writes: none of it counts below.
    let start_revision = client
        .get("x", None)
        .await?
        .header()
        .context("header")?
        .revision();
    let want = expected_keys(&yaml, "bench", 9)?;
    eprintln!(
        "[raftmesh] publishing {} objects ({} bytes of YAML, {want} keys)",
        shape.objects(),
        yaml.len()
    );
    std::fs::write(dir.path().join("cluster.yaml"), &yaml)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut first_key = None;
    loop {
        let keys = count(&mut client).await?;
        if keys > empty && first_key.is_none() {
            first_key = Some(started.elapsed());
        }
        if keys == want {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not published after 10 minutes ({keys} of {want} keys)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let synced = started.elapsed();
    let all = client
        .get("mesh/v1/bench/", Some(GetOptions::new().with_prefix()))
        .await?;
    let keys = all.kvs().len();
    let value_bytes: usize = all.kvs().iter().map(|kv| kv.value().len()).sum();
    let key_bytes: usize = all.kvs().iter().map(|kv| kv.key().len()).sum();
    let endpoint_bytes: usize = all
        .kvs()
        .iter()
        .filter(|kv| kv.key().starts_with(b"mesh/v1/bench/endpoints/"))
        .map(|kv| kv.value().len())
        .sum();
    let revision = all.header().context("header")?.revision();
    let disk = allocated_bytes(&cluster.member_config(leader).data_dir)?;
    let rss = cluster.pid(leader).map(rss_bytes).transpose()?.unwrap_or(0);

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let md = format!(
        "# mesh-bench publish\n\nCommand: `{command}`\n\n- Machine: {machine}\n- Cluster: 3 members, {} nodes, {} services (one {}-endpoint slice each), {} pods in {} label sets\n\n| measure | value |\n|---|---:|\n| time to the first key | {:.2} s |\n| time to every key (initial sync) | {:.2} s |\n| write Txns (revisions) | {} |\n| keys | {} |\n| key + value bytes | {:.2} MiB |\n| endpoint slice bytes | {:.2} MiB ({} B a slice) |\n| leader data dir | {:.1} MiB |\n| leader RSS | {:.1} MiB |\n",
        shape.nodes,
        shape.services,
        shape.pods / shape.services,
        shape.pods,
        shape.services,
        first_key.unwrap_or_default().as_secs_f64(),
        synced.as_secs_f64(),
        revision - start_revision,
        keys,
        mib((key_bytes + value_bytes) as u64),
        mib(endpoint_bytes as u64),
        endpoint_bytes / shape.services,
        mib(disk),
        mib(rss),
    );
    let raw = json!({
        "command": command,
        "machine": machine.to_string(),
        "shape": {"nodes": shape.nodes, "services": shape.services, "pods": shape.pods},
        "first_key_seconds": first_key.unwrap_or_default().as_secs_f64(),
        "synced_seconds": synced.as_secs_f64(),
        "write_txns": revision - start_revision,
        "keys": keys,
        "key_bytes": key_bytes,
        "value_bytes": value_bytes,
        "endpoint_bytes": endpoint_bytes,
        "leader_data_dir_bytes": disk,
        "leader_rss_bytes": rss,
    });
    crate::report::write_table(
        &args.out,
        &format!("publish-{}x{}", shape.services, shape.pods),
        &md,
        &raw,
    )?;
    Ok(())
}
