//! `mesh-bench scale`: one real cluster mirroring up to 255 remote clusters, with real agents.
//!
//! The local cluster is three real `mesh-apiserver` members (publisher, mirror, MCS
//! controller) and `--agents` real `node-agent`s (host network namespace, their own cgroup and
//! pins, WireGuard off). The remotes are synthetic ([`remotes`]): each a TLS port of this
//! process speaking the etcd API the mirror uses (Range, Watch with progress), with its own CA,
//! certificates and an in-memory store of [`shape`]'s records. They cost little, so the
//! figures are the local cluster's.
//!
//! For each size in `--clusters`, on fresh state:
//! 1. the local cluster publishes a global Service for every remote service (so agents program
//!    them), agents start, baselines are read;
//! 2. the connection records are written (as `meshctl connect` writes them): **initial mirror**
//!    until every remote is connected and every key is in the local store, and until every
//!    agent has programmed every remote backend;
//! 3. **idle** for `--idle-seconds`: the leader's CPU per remote at rest;
//! 4. **churn** for `--churn-seconds`: `--churn` pod replacements per second over all remotes
//!    (one remote revision each), while a probe endpoint is flipped on one remote after another
//!    (`--probe-rate` per second): remote write → local store (the bench's own watch) → every
//!    agent's map (one lookup per millisecond);
//! 5. a **new agent** started under churn, until its maps hold every backend;
//! 6. **restart**: every local member killed (-9) and started again, until a leader, until
//!    every remote is connected again, and until a probe flip on every remote reached every
//!    agent.
//!
//! See ARCHITECTURE.md §9.3 for what the figures mean and where they stop.

pub mod remotes;
pub mod shape;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use lab::cgroup::Cgroup;
use mesh_api::Record;
use mesh_api::keys::{STATUS_CURRENT, STATUS_REMOTES};
use mesh_api::remote::RemoteStatusRecord;
use node_agent::datapath::KernelMaps;
use node_agent::maps::{Frontend, PROTO_TCP};
use serde::Serialize;
use testkit::localcluster::{Cluster, Flavor, Spec};

use crate::agent::{Agent, start_agent};
use crate::kv::workloads::{peak_rss_bytes, rss_bytes};
use crate::machine::Machine;
use crate::mirror::count;
use crate::procfs::{MS_PER_TICK, cpu_ticks};
use crate::stats::{Percentiles, Samples};
use shape::Shape;

/// The local cluster's name and id.
const LOCAL: &str = "local";
/// Bound on every wait.
const PATIENCE: Duration = Duration::from_secs(900);

/// `mesh-bench scale`'s options.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Numbers of remote clusters, one run each (at most 255).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,255")]
    pub clusters: Vec<usize>,
    /// Nodes per remote.
    #[arg(long, default_value_t = 100)]
    pub nodes: u32,
    /// Endpoints per remote (over all its services).
    #[arg(long, default_value_t = 1_000)]
    pub endpoints: u32,
    /// Services per remote.
    #[arg(long, default_value_t = 10)]
    pub services: u32,
    /// Node agents of the local cluster.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// Pod replacements per second, spread over the remotes.
    #[arg(long, default_value_t = 325.0)]
    pub churn: f64,
    /// Probe flips per second (one remote after another) timed to the agents' maps.
    #[arg(long, default_value_t = 5.0)]
    pub probe_rate: f64,
    /// Seconds at rest for the idle CPU figure.
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 120)]
    pub churn_seconds: u64,
    /// Seed of the churn.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for scale.md, scale.json and scale.png.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Only draw scale.png again (into --out) from the scale.json of an earlier run.
    #[arg(long, value_name = "SCALE_JSON")]
    pub replot: Option<PathBuf>,
    /// Only summarize earlier runs (their scale.json files) into `<out>/scale-runs.md`: each
    /// figure's range over the runs that measured the size, the worst against its target.
    #[arg(long, value_name = "SCALE_JSON", num_args = 1.., conflicts_with = "replot")]
    pub summarize: Vec<PathBuf>,
}

/// One size's figures.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Figures {
    pub clusters: usize,
    pub remote_keys: usize,
    pub remote_endpoints: usize,
    pub initial_mirror_s: f64,
    pub initial_programmed_s: f64,
    pub leader_rss_mib: f64,
    pub leader_rss_per_remote_mib: f64,
    pub follower_rss_mib: Vec<f64>,
    /// The largest high-water mark of any member's RSS (`VmHWM`) before the restart: what the
    /// initial mirror, the churn and the new agent's list cost at their peak. Absent in runs
    /// made before it was measured.
    #[serde(default)]
    pub member_peak_rss_mib: Option<f64>,
    /// The leader's CPU at rest before any remote was connected.
    pub leader_cpu_alone_ms_per_s: f64,
    /// Beyond `leader_cpu_alone_ms_per_s`, over the number of remotes.
    pub leader_cpu_idle_ms_per_s_per_remote: f64,
    /// Beyond `leader_cpu_alone_ms_per_s`, over the number of remotes.
    pub leader_cpu_churn_ms_per_s_per_remote: f64,
    pub churn_per_s: f64,
    pub mirror: Option<Percentiles>,
    pub store_to_agent: Option<Percentiles>,
    pub end_to_end: Option<Percentiles>,
    pub probes: usize,
    pub new_agent_s: f64,
    pub agent_rss_mib: f64,
    pub agent_bytes_per_remote_endpoint: f64,
    pub restart_leader_s: f64,
    pub restart_connected_s: f64,
    pub restart_reconverged_s: f64,
    pub mirror_errors: BTreeMap<String, f64>,
}

pub async fn run(args: ScaleArgs, command: String) -> Result<()> {
    if let Some(json) = &args.replot {
        return report::replot(json, &args.out);
    }
    if !args.summarize.is_empty() {
        return report::summarize(&args.summarize, &args.out);
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "mesh-bench scale needs root (the agents' eBPF)"
    );
    let shape = Shape {
        nodes: args.nodes,
        endpoints: args.endpoints,
        services: args.services,
    };
    shape.check()?;
    ensure!(
        args.clusters
            .iter()
            .all(|n| (1..=shape::MAX_REMOTES).contains(n)),
        "--clusters: 1 to {} each",
        shape::MAX_REMOTES
    );
    ensure!(args.agents >= 1, "--agents: at least 1");
    ensure!(
        args.churn > 0.0 && args.probe_rate > 0.0,
        "--churn and --probe-rate must be positive"
    );
    let (agent_bin, server_bin) = crate::agent::binaries()?;
    lab::ensure_bpffs()?;
    let machine = Machine::read([("raftmesh", server_bin.as_path())]);
    eprintln!("mesh-bench scale: {machine}");
    let mut all = Vec::new();
    for &n in &args.clusters {
        eprintln!("[scale {n}] ---- {n} remote clusters ----");
        let figures = one_size(&args, shape, n, &server_bin, &agent_bin)
            .await
            .with_context(|| format!("{n} clusters"))?;
        eprintln!("[scale {n}] {figures:?}");
        all.push(figures);
    }
    report::write(&args, shape, &machine, &command, &all)
}

/// The local cluster, its agents and the remotes of one size.
struct Bench {
    cluster: Cluster,
    agents: Vec<Agent>,
    maps: Vec<KernelMaps>,
    remotes: remotes::Remotes,
    models: Arc<Vec<Mutex<shape::Remote>>>,
    shape: Shape,
}

async fn one_size(
    args: &ScaleArgs,
    shape: Shape,
    n: usize,
    server_bin: &std::path::Path,
    agent_bin: &std::path::Path,
) -> Result<Figures> {
    // With RAFTMESH_KEEP_LOGS set, this directory (agents' logs) and the members' logs stay.
    let dir = lab::workdir("rms")?;
    let say = |what: &str| eprintln!("[scale {n}] {what}");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("services.yaml"),
        shape::local_manifests(n, shape),
    )?;
    let mut spec = Spec::with_members(3);
    spec.metrics = true;
    spec.extra_args = [
        "--cluster-name",
        LOCAL,
        "--cluster-id",
        "1",
        "--pod-cidr",
        "172.16.0.0/16",
        "--manifests-dir",
        manifests.to_str().context("a UTF-8 path")?,
    ]
    .map(String::from)
    .to_vec();
    say("starting the local cluster");
    let cluster = Cluster::start(Flavor::Raftmesh(server_bin.to_owned()), spec).await?;
    let mut client = cluster.client().await?;
    let local_services = n * (shape.services as usize + 1);
    wait_until("the local services published", || {
        let mut client = client.clone();
        async move {
            Ok(
                count(&mut client, &format!("mesh/v1/{LOCAL}/services/")).await?
                    == local_services as i64,
            )
        }
    })
    .await?;

    say("starting the agents");
    let id = lab::unique("rms");
    let cgroup = Cgroup::new(&lab::cgroup2_root()?, &id)?;
    let endpoints = cluster.client_urls().join(",");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut agents = Vec::new();
    for a in 0..args.agents {
        agents.push(start_agent(
            agent_bin,
            (&format!("node-{a}"), LOCAL),
            &endpoints,
            &cgroup,
            &format!("{id}a{a}"),
            &logs.join(format!("agent-{a}.log")),
        )?);
    }
    // Every local frontend programmed (no backends yet): the agents' baseline.
    let maps = wait_for_maps(&agents).await?;
    let probe = |r: usize| Frontend {
        vip: shape::probe_vip(r, shape),
        port: 80,
        proto: PROTO_TCP,
    };
    wait_until("the agents programmed the local services", || {
        let ok = maps
            .iter()
            .all(|m| (0..n).all(|r| m.slot_count(&probe(r)).is_some()));
        async move { Ok(ok) }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_rss_before = rss_bytes(agents[0].process.pid())?;
    let leader = cluster.leader().await?;
    let leader_pid = cluster.pid(leader).context("the leader's pid")?;
    let leader_rss_before = rss_bytes(leader_pid)?;
    say(&format!(
        "the leader at rest without remotes, {} s",
        args.idle_seconds
    ));
    let idle_alone = cpu_ms_per_s(leader_pid, Duration::from_secs(args.idle_seconds)).await?;

    say("starting the synthetic remotes");
    let models: Vec<shape::Remote> = (0..n)
        .map(|r| shape::Remote::new(r, shape, args.seed))
        .collect();
    let remotes = remotes::Remotes::start(&models, LOCAL, &dir.path().join("remotes")).await?;
    let mut bench = Bench {
        cluster,
        agents,
        maps,
        remotes,
        models: Arc::new(models.into_iter().map(Mutex::new).collect()),
        shape,
    };

    say("connecting (initial mirror)");
    let started = Instant::now();
    connect(&mut client, &bench.remotes).await?;
    let want_keys = local_keys(&mut client).await? + n * shape.keys();
    wait_until("every remote mirrored", || {
        let mut client = client.clone();
        async move {
            Ok(count(&mut client, "mesh/v1/").await? as usize == want_keys
                && connected(&mut client, n, 0).await? == n)
        }
    })
    .await?;
    let initial_mirror = started.elapsed();
    say(&format!(
        "mirrored {want_keys} keys in {initial_mirror:.2?}"
    ));
    wait_until("every agent programmed every remote backend", || {
        let ok = bench.programmed();
        async move { Ok(ok) }
    })
    .await?;
    let initial_programmed = started.elapsed();
    say(&format!("programmed in {initial_programmed:.2?}"));

    say(&format!("idle for {} s", args.idle_seconds));
    let idle = cpu_ms_per_s(leader_pid, Duration::from_secs(args.idle_seconds)).await?;

    say(&format!(
        "churn: {}/s for {} s, probes {}/s",
        args.churn, args.churn_seconds, args.probe_rate
    ));
    let churn_for = Duration::from_secs(args.churn_seconds);
    let churner = tokio::spawn(churn(
        bench.remotes.stores(),
        bench.models.clone(),
        args.churn,
        churn_for,
    ));
    let cpu = tokio::spawn(cpu_ms_per_s(leader_pid, churn_for));
    let probes = bench
        .probe_while(&mut client, args.probe_rate, churn_for)
        .await?;
    let churned = churner.await??;
    let busy = cpu.await??;

    say("a new agent under churn");
    let churner = tokio::spawn(churn(
        bench.remotes.stores(),
        bench.models.clone(),
        args.churn,
        Duration::from_secs(600),
    ));
    let started = Instant::now();
    let extra = start_agent(
        agent_bin,
        ("node-new", LOCAL),
        &endpoints,
        &cgroup,
        &format!("{id}n"),
        &logs.join("agent-new.log"),
    )?;
    let extra_maps = wait_for_maps(std::slice::from_ref(&extra)).await?;
    wait_until("the new agent programmed every backend", || {
        let ok = bench.programmed_in(&extra_maps[0]);
        async move { Ok(ok) }
    })
    .await?;
    let new_agent = started.elapsed();
    churner.abort();
    drop(extra_maps);
    drop(extra);
    let agent_rss = rss_bytes(bench.agents[0].process.pid())?;
    let leader_rss = rss_bytes(leader_pid)?;
    let mut follower_rss = Vec::new();
    let mut peak_rss = 0;
    for i in 0..bench.cluster.len() {
        if let Some(pid) = bench.cluster.pid(i) {
            if i != leader {
                follower_rss.push(mib(rss_bytes(pid)?));
            }
            peak_rss = peak_rss.max(peak_rss_bytes(pid)?);
        }
    }
    let mirror_errors = mirror_errors(&bench.cluster, leader).await?;

    say("restart: kill -9 and start of every member");
    let started = Instant::now();
    let killed_ms = now_ms();
    let all: Vec<usize> = (0..bench.cluster.len()).collect();
    bench.cluster.restart_together(&all).await?;
    let mut client = bench.cluster.client().await?;
    let cluster = &bench.cluster;
    wait_until("a leader after the restart", || async move {
        Ok(cluster.leader().await.is_ok())
    })
    .await?;
    let restart_leader = started.elapsed();
    wait_until("every remote connected after the restart", || {
        let mut client = client.clone();
        async move { Ok(connected(&mut client, n, killed_ms).await? == n) }
    })
    .await?;
    let restart_connected = started.elapsed();
    bench.flip_every_probe()?;
    wait_until("a probe flip on every remote in every agent", || {
        let ok = bench.programmed();
        async move { Ok(ok) }
    })
    .await?;
    let restart_reconverged = started.elapsed();
    let _ = client.status().await;

    let remote_endpoints = n * shape.endpoints as usize;
    let figures = Figures {
        clusters: n,
        remote_keys: n * shape.keys(),
        remote_endpoints,
        initial_mirror_s: initial_mirror.as_secs_f64(),
        initial_programmed_s: initial_programmed.as_secs_f64(),
        leader_rss_mib: mib(leader_rss),
        leader_rss_per_remote_mib: mib(leader_rss.saturating_sub(leader_rss_before)) / n as f64,
        follower_rss_mib: follower_rss,
        member_peak_rss_mib: Some(mib(peak_rss)),
        leader_cpu_alone_ms_per_s: idle_alone,
        leader_cpu_idle_ms_per_s_per_remote: (idle - idle_alone).max(0.0) / n as f64,
        leader_cpu_churn_ms_per_s_per_remote: (busy - idle_alone).max(0.0) / n as f64,
        churn_per_s: churned as f64 / churn_for.as_secs_f64(),
        mirror: probes.mirror,
        store_to_agent: probes.store_to_agent,
        end_to_end: probes.end_to_end,
        probes: probes.count,
        new_agent_s: new_agent.as_secs_f64(),
        agent_rss_mib: mib(agent_rss),
        agent_bytes_per_remote_endpoint: agent_rss.saturating_sub(agent_rss_before) as f64
            / remote_endpoints as f64,
        restart_leader_s: restart_leader.as_secs_f64(),
        restart_connected_s: restart_connected.as_secs_f64(),
        restart_reconverged_s: restart_reconverged.as_secs_f64(),
        mirror_errors,
    };
    drop(bench);
    drop(cgroup);
    Ok(figures)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Polls `check` every 50 ms (the resolution of the times measured with it) until it holds,
/// for at most [`PATIENCE`].
async fn wait_until<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agents' pinned maps, once each agent has pinned them.
async fn wait_for_maps(agents: &[Agent]) -> Result<Vec<KernelMaps>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let maps: Result<Vec<KernelMaps>, _> =
            agents.iter().map(|a| KernelMaps::open(&a.pins)).collect();
        match maps {
            Ok(maps) => return Ok(maps),
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow::Error::new(e).context("the agents' maps"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Keys under `mesh/v1/` before any remote is connected.
async fn local_keys(client: &mut Client) -> Result<usize> {
    Ok(count(client, "mesh/v1/").await? as usize)
}

/// Remotes whose status says connected, written at or after `since_ms` (Unix ms), and whose
/// mirror holds `mesh/status/current/<c>` (it is current with them).
async fn connected(client: &mut Client, expected: usize, since_ms: i64) -> Result<usize> {
    let status = client
        .get(STATUS_REMOTES, Some(GetOptions::new().with_prefix()))
        .await?;
    let current = client
        .get(
            STATUS_CURRENT,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let held: std::collections::BTreeSet<&[u8]> = current
        .kvs()
        .iter()
        .filter_map(|kv| kv.key().strip_prefix(STATUS_CURRENT.as_bytes()))
        .collect();
    let n = status
        .kvs()
        .iter()
        .filter(|kv| {
            let cluster = kv
                .key()
                .strip_prefix(STATUS_REMOTES.as_bytes())
                .unwrap_or(b"");
            held.contains(cluster)
                && RemoteStatusRecord::decode_checked(kv.value())
                    .is_ok_and(|s| s.connected && s.current_at_ms >= since_ms)
        })
        .count();
    Ok(n.min(expected))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes every remote's connection record (100 to a Txn, about 300 KiB).
async fn connect(client: &mut Client, remotes: &remotes::Remotes) -> Result<()> {
    let records: Vec<(String, Vec<u8>)> = remotes
        .served
        .iter()
        .map(|s| {
            (
                mesh_api::Key::RemoteConfig {
                    cluster: s.config.cluster.clone(),
                }
                .to_string(),
                prost::Message::encode_to_vec(&s.config),
            )
        })
        .collect();
    crate::agent::put_all(client, records).await
}

/// A process's CPU time over `window`, in ms per second.
async fn cpu_ms_per_s(pid: u32, window: Duration) -> Result<f64> {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let before = cpu_ticks(&stat).context("the leader's CPU time")?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = cpu_ticks(&stat).context("the leader's CPU time")?;
    let ms = (after - before) as f64 * MS_PER_TICK;
    Ok(ms / started.elapsed().as_secs_f64())
}

/// Replaces pods at `rate` per second, one remote after another, for `window`; returns how
/// many.
async fn churn(
    stores: Vec<Arc<remotes::Store>>,
    models: Arc<Vec<Mutex<shape::Remote>>>,
    rate: f64,
    window: Duration,
) -> Result<u64> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < window {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while done < due {
            let r = (done % stores.len() as u64) as usize;
            let ops = models[r]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace_pod();
            stores[r].apply(ops)?;
            done += 1;
        }
    }
    Ok(done)
}

/// Propagation of probe flips.
struct Probes {
    count: usize,
    mirror: Option<Percentiles>,
    store_to_agent: Option<Percentiles>,
    end_to_end: Option<Percentiles>,
}

impl Bench {
    fn frontend(&self, i: usize) -> Frontend {
        Frontend {
            vip: shape::local_vip(i),
            port: 80,
            proto: PROTO_TCP,
        }
    }

    /// Whether `maps` hold every remote backend: each service's endpoints and each probe's
    /// ready endpoints.
    fn programmed_in(&self, maps: &KernelMaps) -> bool {
        let per_remote = self.shape.services as usize + 1;
        (0..self.models.len()).all(|r| {
            let model = self.models[r].lock().unwrap_or_else(|e| e.into_inner());
            let counts = model.slot_counts();
            (0..per_remote).all(|k| {
                maps.slot_count(&self.frontend(r * per_remote + k)) == Some(counts[k] as u32)
            })
        })
    }

    fn programmed(&self) -> bool {
        self.maps.iter().all(|m| self.programmed_in(m))
    }

    /// Flips every remote's probe once.
    fn flip_every_probe(&self) -> Result<()> {
        for (r, served) in self.remotes.served.iter().enumerate() {
            let (op, _) = self.models[r]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .toggle_probe();
            served.store.apply(vec![op])?;
        }
        Ok(())
    }

    /// Flips probes one remote after another at `rate` per second for `window`, timing each
    /// from the remote's write to the local store (a watch of this process) and to every
    /// agent's map.
    async fn probe_while(
        &self,
        client: &mut Client,
        rate: f64,
        window: Duration,
    ) -> Result<Probes> {
        let mut stream = client
            .watch("mesh/v1/", Some(WatchOptions::new().with_prefix()))
            .await?;
        let seen: Arc<Mutex<BTreeMap<(usize, usize), Instant>>> = Arc::default();
        let collector = {
            let seen = seen.clone();
            let remotes = self.models.len();
            tokio::spawn(async move {
                while let Ok(Some(resp)) = stream.message().await {
                    let at = Instant::now();
                    for e in resp.events() {
                        let Some(kv) = e.kv() else { continue };
                        if e.event_type() != EventType::Put {
                            continue;
                        }
                        let Some(r) = probe_of(kv.key(), remotes) else {
                            continue;
                        };
                        let Ok(key) = kv.key_str() else { continue };
                        if let Ok((_, Record::Endpoints(s))) = Record::decode_at(key, kv.value()) {
                            let ready = s.endpoints.iter().filter(|e| e.ready).count();
                            seen.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry((r, ready))
                                .or_insert(at);
                        }
                    }
                }
            })
        };
        let mut mirror = Samples::default();
        let mut to_agent = Samples::default();
        let mut end_to_end = Samples::default();
        let started = Instant::now();
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut count = 0usize;
        while started.elapsed() < window {
            let r = count % self.models.len();
            count += 1;
            let (op, ready) = self.models[r]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .toggle_probe();
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(r, ready));
            let (_, t0) = self.remotes.served[r].store.apply(vec![op])?;
            let frontend = self
                .frontend(r * (self.shape.services as usize + 1) + self.shape.services as usize);
            let maps = &self.maps;
            let agents_at = tokio::task::block_in_place(|| {
                let mut at: Vec<Option<Instant>> = vec![None; maps.len()];
                while at.iter().any(Option::is_none) {
                    for (a, m) in maps.iter().enumerate() {
                        if at[a].is_none() && m.slot_count(&frontend) == Some(ready as u32) {
                            at[a] = Some(Instant::now());
                        }
                    }
                    if t0.elapsed() > Duration::from_secs(60) {
                        bail!("probe flip on remote {r} never reached every agent");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(at.into_iter().flatten().collect::<Vec<_>>())
            })?;
            // The store's watch saw it no later than the agents (which watch the same store).
            let t1 = {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Some(t) = seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&(r, ready))
                        .copied()
                    {
                        break t;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "the bench's watch never saw remote {r}'s probe flip"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            mirror.record(t1.saturating_duration_since(t0));
            for t2 in agents_at {
                to_agent.record(t2.saturating_duration_since(t1));
                end_to_end.record(t2 - t0);
            }
            let next = started + every * count as u32;
            tokio::time::sleep_until(next.into()).await;
        }
        collector.abort();
        Ok(Probes {
            count,
            mirror: mirror.summary(),
            store_to_agent: to_agent.summary(),
            end_to_end: end_to_end.summary(),
        })
    }
}

/// The remote whose probe slice `key` is, if it is one.
fn probe_of(key: &[u8], remotes: usize) -> Option<usize> {
    let key = std::str::from_utf8(key).ok()?;
    let r: usize = key
        .split("/probe-")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    (r < remotes && key.contains("/endpoints/")).then_some(r)
}

/// The leader's mirror error figures (rejected records, resyncs, paused remotes), summed over
/// the remotes, from its metrics; an error if they cannot be read.
async fn mirror_errors(cluster: &Cluster, leader: usize) -> Result<BTreeMap<String, f64>> {
    let url = format!(
        "{}/metrics",
        cluster
            .metrics_url(leader)
            .context("the members serve no metrics")?
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sf", "--max-time", "10", &url])
            .output()
    })
    .await??;
    ensure!(out.status.success(), "curl of the leader's metrics failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let families = [
        "raftmesh_remote_rejected_records_total",
        "raftmesh_remote_resyncs_total",
        "raftmesh_remote_paused_total",
    ];
    // Counters without a sample yet are zero; the resync counter has one per remote.
    let mut sums: BTreeMap<String, f64> = families.iter().map(|f| (f.to_string(), 0.0)).collect();
    let mut resync_samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let family = name.split('{').next().unwrap_or(name);
        if let Some(sum) = sums.get_mut(family) {
            *sum += value.parse::<f64>().unwrap_or(f64::NAN);
            resync_samples += usize::from(family == families[1]);
        }
    }
    ensure!(
        resync_samples > 0,
        "the leader's metrics have no {} samples",
        families[1]
    );
    Ok(sums)
}

mod report;
