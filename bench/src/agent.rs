//! `mesh-bench agent`: the node agent against a store holding 1,000 global services in this
//! cluster and 1,000 in a remote one with 100 endpoints each (100,000 remote endpoints, each
//! with its ipcache entry): how long the initial programming takes, the agent's memory per
//! remote endpoint, and how long a store change takes to reach the maps.
//!
//! The agent runs as its own process (the release `node-agent` next to `mesh-bench`) against a
//! one-member `mesh-apiserver`, its programs attached to an empty cgroup of the benchmark's.
//! Memory per endpoint is the agent's RSS with the data minus its RSS with an empty store, over
//! the number of remote endpoints. A change is one Txn rewriting one remote slice with one
//! endpoint fewer or more; its latency runs from the write (sent, and acknowledged) to the
//! service's slot count in the pinned map changing, polled with one map lookup at a time.
//! Cilium's agent, for comparison, is documented at about 5 KB per endpoint (CFP-39876); it
//! cannot run here (no Kubernetes API server).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{Client, Txn, TxnOp};
use lab::cgroup::Cgroup;
use lab::process::Process;
use mesh_api::records::*;
use mesh_api::{Key, Kind, Record, SCHEMA};
use node_agent::datapath::{KernelMaps, Pins};
use node_agent::maps::{Frontend, PROTO_TCP};
use serde_json::json;
use testkit::localcluster::{Cluster, Flavor, Spec};

use crate::kv::workloads::rss_bytes;
use crate::machine::Machine;
use crate::stats::Samples;

/// `mesh-bench agent`'s options.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Global services in each of the two clusters.
    #[arg(long, default_value_t = 1_000)]
    pub services: u32,
    /// Endpoints of each remote service (at most 100: one slice).
    #[arg(long, default_value_t = 100)]
    pub endpoints: u32,
    /// Store changes timed.
    #[arg(long, default_value_t = 300)]
    pub changes: u32,
    /// Directory for agent-<services>x<endpoints>.md and .json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000 + 1 + i) // 10.96.0.1 …
}

fn remote_pod(service: u32, e: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a02_0000 + service * 128 + e + 1) // 10.2.0.0/16 onwards
}

fn cluster_records(name: &str, id: u32) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        Key::Cluster {
            cluster: name.into(),
        }
        .to_string(),
        Record::Cluster(ClusterRecord {
            schema: SCHEMA,
            name: name.into(),
            id,
            ..Default::default()
        })
        .encode(),
    )];
    for kind in Kind::SYNCED {
        out.push((
            Key::Synced {
                cluster: name.into(),
                kind,
            }
            .to_string(),
            Record::Synced(SyncedRecord { schema: SCHEMA }).encode(),
        ));
    }
    out
}

fn service(cluster: &str, i: u32) -> (String, Vec<u8>) {
    global_service(cluster, &format!("svc-{i}"), vec![vip(i).to_string()])
}

/// A global, shared Service record `bench/<name>` of `cluster` (port 80/TCP) and its key.
pub(crate) fn global_service(
    cluster: &str,
    name: &str,
    cluster_ips: Vec<String>,
) -> (String, Vec<u8>) {
    (
        Key::Service {
            cluster: cluster.into(),
            namespace: "bench".into(),
            name: name.into(),
        }
        .to_string(),
        Record::Service(ServiceRecord {
            schema: SCHEMA,
            namespace: "bench".into(),
            name: name.into(),
            cluster_ips,
            ports: vec![Port {
                name: "http".into(),
                port: 80,
                protocol: "TCP".into(),
            }],
            global: true,
            shared: true,
            affinity: Affinity::None as i32,
            ..Default::default()
        })
        .encode(),
    )
}

fn slice(i: u32, endpoints: u32) -> (String, Vec<u8>) {
    (
        Key::Endpoints {
            cluster: "infra".into(),
            namespace: "bench".into(),
            service: format!("svc-{i}"),
            slice: "s".into(),
        }
        .to_string(),
        Record::Endpoints(EndpointsRecord {
            schema: SCHEMA,
            ports: vec![Port {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            endpoints: (0..endpoints)
                .map(|e| Endpoint {
                    addresses: vec![remote_pod(i, e).octets().to_vec()],
                    ready: true,
                    serving: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .encode(),
    )
}

/// Puts `kvs`, 100 to a Txn.
pub(crate) async fn put_all(client: &mut Client, kvs: Vec<(String, Vec<u8>)>) -> Result<()> {
    for chunk in kvs.chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
            .collect();
        client.txn(Txn::new().and_then(ops)).await?;
    }
    Ok(())
}

/// A node agent run by a benchmark, stopped and unpinned when dropped.
pub(crate) struct Agent {
    pub(crate) process: Process,
    pub(crate) pins: Pins,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.terminate();
        let _ = self.pins.uninstall();
    }
}

/// Starts the agent `bin` as node `node` of `cluster` against the plaintext store at
/// `endpoints`, its programs attached to `cgroup` and pinned under `/sys/fs/bpf/<id>`, logging
/// to `log`; WireGuard off.
pub(crate) fn start_agent(
    bin: &Path,
    (node, cluster): (&str, &str),
    endpoints: &str,
    cgroup: &Cgroup,
    id: &str,
    log: &Path,
) -> Result<Agent> {
    let pins = Pins::new(PathBuf::from("/sys/fs/bpf").join(id));
    let mut cmd = Command::new(bin);
    cmd.args([
        "--node",
        node,
        "--cluster",
        cluster,
        "--endpoints",
        endpoints,
    ])
    .args(["--insecure-plaintext", "--listen-metrics", "127.0.0.1:0"])
    .arg("--cgroup-root")
    .arg(cgroup.path())
    .arg("--bpffs")
    .arg(pins.root())
    .arg("--state-dir")
    .arg(log.with_extension("state"))
    // On the host's namespace: no pod interfaces of its own, and the host's veths (a
    // container engine's) are not the benchmark's to touch.
    .args([
        "--pod-interfaces",
        "prefix",
        "--pod-interface-prefix",
        "rmbnone",
    ])
    .args(["--wg-backend", "none"]);
    Ok(Agent {
        process: Process::spawn(cmd, Some(log))?,
        pins,
    })
}

/// The `node-agent` and `mesh-apiserver` next to this `mesh-bench`, which must exist.
pub(crate) fn binaries() -> Result<(PathBuf, PathBuf)> {
    let here = std::env::current_exe()?;
    let agent_bin = here.with_file_name("node-agent");
    let server_bin = here.with_file_name("mesh-apiserver");
    for b in [&agent_bin, &server_bin] {
        ensure!(
            b.is_file(),
            "{} is missing (cargo build --release --workspace)",
            b.display()
        );
    }
    Ok((agent_bin, server_bin))
}

/// Waits until the maps hold `frontends` frontends and `backends` slots; returns when.
fn wait_programmed(
    pins: &Pins,
    frontends: usize,
    backends: usize,
    patience: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(maps) = KernelMaps::open(pins)
            && let Ok((t, _)) = maps.read()
            && t.services.len() == frontends
            && t.backends() == backends
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the agent did not program {frontends} frontends / {backends} backends in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn run(args: AgentArgs, command: String) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "mesh-bench agent needs root (eBPF)"
    );
    ensure!(
        args.endpoints <= 100,
        "--endpoints: at most 100 (one slice)"
    );
    let (agent_bin, server_bin) = binaries()?;
    lab::ensure_bpffs()?;
    let machine = Machine::read([("raftmesh", server_bin.as_path())]);
    let cluster =
        Cluster::start(Flavor::Raftmesh(server_bin.clone()), Spec::with_members(1)).await?;
    let endpoints = cluster.client_urls().join(",");
    let mut client = cluster.client().await?;
    let id = lab::unique("rmb");
    let cgroup = Cgroup::new(&lab::cgroup2_root()?, &id)?;
    let logs = tempfile::tempdir()?;

    // The agent's memory with nothing to program.
    let mut kvs = cluster_records("apps", 1);
    kvs.extend(cluster_records("infra", 2));
    put_all(&mut client, kvs).await?;
    let empty_rss = {
        let agent = start_agent(
            &agent_bin,
            ("bench-1", "apps"),
            &endpoints,
            &cgroup,
            &format!("{id}e"),
            &logs.path().join("empty.log"),
        )?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss_bytes(agent.process.pid())?
    };

    eprintln!(
        "agent: writing {} services per cluster, {} remote endpoints",
        args.services,
        args.services * args.endpoints
    );
    let mut kvs = Vec::new();
    for i in 0..args.services {
        kvs.push(service("apps", i));
        kvs.push(service("infra", i));
        kvs.push(slice(i, args.endpoints));
        for e in 0..args.endpoints {
            kvs.push((
                Key::IpCache {
                    cluster: "infra".into(),
                    ip: remote_pod(i, e).into(),
                }
                .to_string(),
                Record::IpCache(IpCacheRecord {
                    schema: SCHEMA,
                    identity: 2 << 16 | (256 + i),
                    node_ip: "192.168.2.1".into(),
                    pod: format!("bench/svc-{i}-{e}"),
                })
                .encode(),
            ));
        }
    }
    let keys = kvs.len();
    put_all(&mut client, kvs).await?;

    eprintln!("agent: initial programming");
    let frontends = args.services as usize;
    let backends = (args.services * args.endpoints) as usize;
    let started = Instant::now();
    let agent = start_agent(
        &agent_bin,
        ("bench-1", "apps"),
        &endpoints,
        &cgroup,
        &format!("{id}f"),
        &logs.path().join("full.log"),
    )?;
    let done = tokio::task::block_in_place(|| {
        wait_programmed(&agent.pins, frontends, backends, Duration::from_secs(300))
    })?;
    let initial = done - started;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full_rss = rss_bytes(agent.process.pid())?;

    eprintln!("agent: {} changes", args.changes);
    let maps = KernelMaps::open(&agent.pins)?;
    let mut from_sent = Samples::with_capacity(args.changes as usize);
    let mut from_acked = Samples::with_capacity(args.changes as usize);
    for c in 0..args.changes {
        let i = c % args.services;
        let f = Frontend {
            vip: vip(i),
            port: 80,
            proto: PROTO_TCP,
        };
        let before = maps.slot_count(&f).context("frontend programmed")?;
        let n = if before == args.endpoints {
            args.endpoints - 1
        } else {
            args.endpoints
        };
        let (k, v) = slice(i, n);
        let sent = Instant::now();
        client.put(k, v, None).await?;
        let acked = Instant::now();
        let seen = tokio::task::block_in_place(|| {
            loop {
                if maps.slot_count(&f) == Some(n) {
                    return Ok(Instant::now());
                }
                if sent.elapsed() > Duration::from_secs(10) {
                    bail!("change {c} never reached the maps");
                }
                std::hint::spin_loop();
            }
        })?;
        from_sent.record(seen - sent);
        from_acked.record(seen - acked);
    }
    let sent = from_sent.summary().context("samples")?;
    let acked = from_acked.summary().context("samples")?;
    let remote_endpoints = args.services * args.endpoints;
    let per_endpoint = full_rss.saturating_sub(empty_rss) as f64 / f64::from(remote_endpoints);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let md = format!(
        "# mesh-bench agent\n\nCommand: `{command}`\n\n- Machine: {machine}\n- Store: one mesh-apiserver member; {} global services in `apps` (this node's cluster) and {} in `infra`, each of infra's with one slice of {} ready endpoints and an ipcache entry per endpoint ({} keys); the agent programs {} frontends with {} backend slots.\n- Memory: agent RSS with the data minus RSS with an empty store, over {} remote endpoints. Cilium's agent is documented at about 5 KB per endpoint (CFP-39876; not runnable here).\n- Change latency: one slice rewritten (one endpoint fewer or more) → the slot count in the pinned map changed; {} changes.\n\n| measure | value |\n|---|---:|\n| initial programming (agent start → every slot in the maps) | {:.2} s |\n| agent RSS, empty store | {:.1} MiB |\n| agent RSS, {} remote endpoints | {:.1} MiB |\n| bytes per remote endpoint | {:.0} B |\n| change → map, from the write sent: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n| change → map, from the write acknowledged: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n",
        args.services,
        args.services,
        args.endpoints,
        keys,
        frontends,
        backends,
        remote_endpoints,
        args.changes,
        initial.as_secs_f64(),
        mib(empty_rss),
        remote_endpoints,
        mib(full_rss),
        per_endpoint,
        sent.p50_ms,
        sent.p99_ms,
        sent.max_ms,
        acked.p50_ms,
        acked.p99_ms,
        acked.max_ms,
    );
    let raw = json!({
        "command": command,
        "machine": machine.to_string(),
        "services_per_cluster": args.services,
        "remote_endpoints": remote_endpoints,
        "keys": keys,
        "initial_programming_seconds": initial.as_secs_f64(),
        "rss_empty_bytes": empty_rss,
        "rss_full_bytes": full_rss,
        "bytes_per_remote_endpoint": per_endpoint,
        "change_from_sent_ms": {"p50": sent.p50_ms, "p99": sent.p99_ms, "max": sent.max_ms},
        "change_from_acked_ms": {"p50": acked.p50_ms, "p99": acked.p99_ms, "max": acked.max_ms},
    });
    drop(agent);
    crate::report::write_table(
        &args.out,
        &format!("agent-{}x{}", args.services, args.endpoints),
        &md,
        &raw,
    )
}
