//! `mesh-bench propagation`: in the lab, how long a new backend pod in one cluster's manifests
//! takes to reach the other cluster's node agents' maps, and to answer its first connection.
//!
//! The lab is the default one plus a global service `demo/bench`: `infra` has four pods for it
//! of which one at a time is ready, `apps` declares the service without backends (so its
//! agents give it a VIP and fill it with `infra`'s). A change makes the next pod the ready one
//! (`Lab::apply`: the manifests are rewritten), and the benchmark notes when each stage first
//! holds the new pod's address as a ready backend:
//!
//! 1. `published`: `infra`'s store has the EndpointSlice record (a watch on it). The time to
//!    here is the publisher's manifests poll (every `INTERVAL`, 1 s) and one pass: a lab-only
//!    cost, since on Kubernetes the publisher watches the API.
//! 2. `mirrored`: `apps`' store has the mirrored record (a watch on it).
//! 3. `maps`: every `apps` agent's pinned services map has it (read with
//!    `node_agent::datapath::KernelMaps`, about every millisecond).
//! 4. `answered`: `apps/client` connecting to the VIP every few milliseconds through socket load
//!    balancing (`mesh-echo probe` in the pod's namespace and cgroup) gets its first answer
//!    from the new pod.
//!
//! Changes are spread over the publisher's poll with a seeded random pause, so the poll's share
//! is sampled uniformly rather than phase-locked. The second phase kills both API-server
//! leaders on the path (`infra`'s, which publishes, and `apps`', which mirrors) with SIGKILL and
//! makes the same number of changes on the surviving members; its first change includes the
//! failover and is reported on its own too.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use etcd_client::GetOptions;
use etcd_client::{EventType, WatchOptions};
use lab::binaries::Binaries;
use lab::instance::{Lab, UpOptions};
use lab::plan::Plan;
use lab::spec::{LabSpec, PodSpec, PortSpec, ServiceSpec};
use mesh_api::codec::{Record, address};
use mesh_client::Settings;
use mesh_client::pki::PkiDir;
use node_agent::datapath::{KernelMaps, Pins};
use node_agent::maps::{Frontend, PROTO_TCP};
use serde_json::{Value, json};

use crate::machine::Machine;
use crate::stats::{Percentiles, Samples};

/// `mesh-bench propagation` flags.
#[derive(Debug, Args)]
pub struct PropagationArgs {
    /// Changes per phase (before and after the leader kill).
    #[arg(long, default_value_t = 200)]
    pub changes: u32,
    /// Seed of the pauses between changes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long one change may take to be answered before the run fails.
    #[arg(long, default_value = "30s", value_parser = mesh_api::duration::parse)]
    pub patience: Duration,
    /// Where to write propagation.md and propagation.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// The pods that take turns as the one ready backend.
const BENCH_PODS: usize = 4;
/// The bench service's port.
const PORT: u16 = 7000;
/// Between the probe's connections.
const PROBE_INTERVAL_MS: u64 = 2;

/// The stages a change goes through, in order.
const STAGES: [&str; 4] = ["published", "mirrored", "maps", "answered"];

/// When each stage first held the current change, shared with the observers.
#[derive(Debug, Default)]
struct Current {
    /// The change's number (observers record only for it).
    id: u64,
    /// The new backend's address.
    ip: Option<Ipv4Addr>,
    /// When each stage held it; for `maps`, per node.
    seen: BTreeMap<String, Instant>,
}

type Shared = Arc<Mutex<Current>>;

/// Notes that `stage` holds `ip` now, if it is the current change's and not yet noted.
fn observe(shared: &Shared, stage: &str, ip: Ipv4Addr) {
    let now = Instant::now();
    let mut c = shared.lock().expect("observers do not panic");
    if c.ip == Some(ip) && !c.seen.contains_key(stage) {
        c.seen.insert(stage.to_owned(), now);
    }
}

/// Runs the benchmark.
pub async fn run(args: PropagationArgs, command: String) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("mesh-bench propagation needs root (the lab: network namespaces, cgroups, eBPF)");
    }
    if args.changes == 0 {
        bail!("--changes must be at least 1");
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("mesh-bench's directory")?.to_owned();
    let bins = Binaries::find(&dir)?;
    let machine = Machine::read([("mesh-apiserver", bins.apiserver.as_path())]);
    let work = tempfile::tempdir()?;
    let opts = UpOptions {
        base: work.path().join("labs"),
        name: "propagation".to_owned(),
        spec: bench_spec(),
        bins,
        config: work.path().join("config"),
    };
    eprintln!("bringing up the lab (default spec + demo/bench)…");
    let base = opts.base.clone();
    let up =
        tokio::task::spawn_blocking(move || Lab::up(opts, &mut |line: &str| eprintln!("  {line}")))
            .await?;
    let lab = match up {
        Ok(lab) => LabGuard(Some(lab)),
        Err(e) => {
            if let Ok(Some(half)) = Lab::open(&base, "propagation") {
                let _ = half.down(&mut |_: &str| {});
            }
            return Err(e.context("lab up"));
        }
    };
    let mut lab = lab;
    let result = measure(&args, lab.lab_mut(), machine, command).await;
    drop(lab);
    result
}

/// Takes the lab down however the run ends.
struct LabGuard(Option<Lab>);

impl LabGuard {
    fn lab_mut(&mut self) -> &mut Lab {
        self.0.as_mut().expect("until dropped")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            eprintln!("taking the lab down…");
            if let Err(e) = lab.down(&mut |_: &str| {}) {
                eprintln!("lab down: {e:#}");
            }
        }
    }
}

/// The default lab plus `demo/bench`: four pods in `infra`, the first one ready, and the
/// service declared in both clusters.
fn bench_spec() -> LabSpec {
    let mut spec = LabSpec::default_lab();
    let service = ServiceSpec {
        name: "bench".to_owned(),
        namespace: "demo".to_owned(),
        global: true,
        shared: true,
        affinity: "none".to_owned(),
        exported: false,
        headless: false,
        selector: BTreeMap::from([("app".to_owned(), "bench".to_owned())]),
        ports: vec![PortSpec {
            name: "tcp".to_owned(),
            port: PORT,
            target_port: 8080,
            protocol: "TCP".to_owned(),
        }],
    };
    for c in &mut spec.clusters {
        c.services.push(service.clone());
        if c.name == "infra" {
            for i in 0..BENCH_PODS {
                c.pods.push(PodSpec {
                    name: format!("bench-{}", i + 1),
                    namespace: "demo".to_owned(),
                    node: Some(format!("node-{}", 1 + i % 2)),
                    labels: service.selector.clone(),
                    ready: i == 0,
                });
            }
        }
    }
    spec
}

/// What one phase measured: per stage, the time from the change.
#[derive(Debug, Default)]
struct Phase {
    stages: BTreeMap<&'static str, Samples>,
    /// Each later stage's time from `published`: the mesh's own share, without the manifests
    /// poll.
    after_published: BTreeMap<&'static str, Samples>,
    /// The first change's figures (ms per stage), for the phase after the kill.
    first: BTreeMap<&'static str, f64>,
}

async fn measure(
    args: &PropagationArgs,
    lab: &mut Lab,
    machine: Machine,
    command: String,
) -> Result<()> {
    let apps = lab.state.spec.cluster("apps").context("apps")?.clone();
    let infra = lab.state.spec.cluster("infra").context("infra")?.clone();
    let vip_index = apps
        .services
        .iter()
        .position(|s| s.name == "bench")
        .expect("bench");
    let frontend = Frontend {
        vip: Plan::vip(&apps, vip_index),
        port: PORT,
        proto: PROTO_TCP,
    };
    let pod_ips: BTreeMap<String, Ipv4Addr> = lab
        .plan
        .pods(&infra)
        .into_iter()
        .filter(|p| p.spec.name.starts_with("bench-"))
        .map(|p| (p.spec.name.clone(), p.ip))
        .collect();
    let shared: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    // Observers: the two stores' watches, the maps of apps' nodes, the client's probe.
    let key = format!(
        "{}endpoints/demo/bench/",
        mesh_api::keys::cluster_prefix("infra")
    );
    let mut watches = StopOnDrop {
        stop: stop.clone(),
        tasks: Vec::new(),
    };
    for (stage, cluster) in [("published", "infra"), ("mirrored", "apps")] {
        let endpoints = member_urls(lab, cluster)?;
        let pki = lab.pki_dir(cluster);
        watches.tasks.push(tokio::spawn(watch_stage(
            endpoints,
            pki,
            key.clone(),
            stage,
            shared.clone(),
            stop.clone(),
        )));
    }
    let nodes: Vec<String> = lab.plan.nodes(&apps).into_iter().map(|n| n.name).collect();
    let maps_thread = {
        let pins: Vec<(String, Pins)> = nodes
            .iter()
            .map(|n| (format!("maps:{n}"), Pins::new(lab.pins("apps", n))))
            .collect();
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || poll_maps(&pins, frontend, &shared, &stop))
    };
    let until = lab.dir.join("propagation-probe.stop");
    let mut probe = lab
        .exec(
            "apps/client",
            &[
                "mesh-echo".into(),
                "probe".into(),
                "--tcp".into(),
                SocketAddrV4::new(frontend.vip, PORT).to_string(),
                "--until".into(),
                until.to_string_lossy().into_owned(),
                "--interval-ms".into(),
                PROBE_INTERVAL_MS.to_string(),
                "--timeout-ms".into(),
                "500".into(),
            ],
        )?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the probe in apps/client")?;
    let probe_thread = {
        let out = probe.stdout.take().expect("piped");
        let (shared, ips) = (shared.clone(), pod_ips.clone());
        std::thread::spawn(move || read_probe(out, &ips, &shared))
    };

    let mut rng = args.seed.max(1);
    let mut ready = 0usize;
    let mut phases = Vec::new();
    let mut next_id = 0u64;
    let mut killed = Vec::new();
    for phase in ["steady", "after leader kill"] {
        if phase == "after leader kill" {
            for cluster in ["infra", "apps"] {
                let leader = lab.leader(cluster)?;
                eprintln!("killing {cluster}'s leader {leader} (SIGKILL)…");
                lab.kill(&lab.target(&format!("{cluster}/{leader}"))?)?;
                killed.push(format!("{cluster}/{leader}"));
            }
        }
        let mut m = Phase::default();
        for i in 0..args.changes {
            if !(phase == "after leader kill" && i == 0) {
                tokio::time::sleep(Duration::from_millis(xorshift(&mut rng) % 1000)).await;
            }
            ready = (ready + 1) % BENCH_PODS;
            let pod = format!("bench-{}", ready + 1);
            next_id += 1;
            let began = {
                let mut c = shared.lock().expect("observers do not panic");
                *c = Current {
                    id: next_id,
                    ip: Some(pod_ips[&pod]),
                    seen: BTreeMap::new(),
                };
                Instant::now()
            };
            let mut spec = lab.state.spec.clone();
            for c in &mut spec.clusters {
                for p in &mut c.pods {
                    if p.name.starts_with("bench-") {
                        p.ready = p.name == pod;
                    }
                }
            }
            lab.apply(spec)?;
            let seen = wait_all(&shared, next_id, &nodes, args.patience)
                .with_context(|| format!("{phase}: change {} ({pod} ready)", i + 1))?;
            record(
                &mut m,
                began,
                &seen,
                &nodes,
                i == 0 && phase == "after leader kill",
            );
            if (i + 1) % 20 == 0 || i + 1 == args.changes {
                eprintln!("  {phase}: {}/{} changes", i + 1, args.changes);
            }
        }
        phases.push((phase, m));
    }
    stop.store(true, Ordering::Relaxed);
    std::fs::write(&until, b"")?;
    let _ = probe.wait();
    let _ = probe_thread.join();
    let _ = maps_thread.join();
    drop(watches);
    report(args, &phases, &killed, machine, command)
}

/// Stops the observers however the run ends (before the lab goes down under them).
struct StopOnDrop {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The client URLs of `cluster`'s members, from the host.
fn member_urls(lab: &Lab, cluster: &str) -> Result<Vec<String>> {
    let (index, c) = lab::plan::indexed(&lab.state.spec)
        .find(|(_, c)| c.name == cluster)
        .with_context(|| format!("cluster {cluster}"))?;
    Ok(lab
        .plan
        .members(index, c)
        .iter()
        .map(|m| format!("https://{}:2379", m.host_ip))
        .collect())
}

/// Watches `prefix` in a cluster's store as its admin and notes `stage` whenever a record
/// there lists a ready endpoint; moves to another member (listing first, then watching from
/// the listed revision) when one goes away.
async fn watch_stage(
    endpoints: Vec<String>,
    pki: PathBuf,
    prefix: String,
    stage: &'static str,
    shared: Shared,
    stop: Arc<AtomicBool>,
) {
    // One member at a time, the next one after a failure (a balanced client kept picking a
    // killed member).
    let mut member = 0;
    while !stop.load(Ordering::Relaxed) {
        let endpoint = &endpoints[member % endpoints.len()];
        if let Err(e) = watch_once(endpoint, &pki, &prefix, stage, &shared).await {
            eprintln!("  ({stage} watch on {endpoint}: {e:#}; trying the next member)");
            member += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn watch_once(
    endpoint: &str,
    pki: &Path,
    prefix: &str,
    stage: &'static str,
    shared: &Shared,
) -> Result<()> {
    let settings = Settings::timeouts(Duration::from_secs(2), Some(Duration::from_secs(5)))
        .keep_alive(Duration::from_secs(1), Duration::from_secs(1), false);
    let mut client =
        mesh_client::member(endpoint, Some(&PkiDir::new(pki).admin()), &settings).await?;
    on_every_put(&mut client, prefix, |key, value| {
        note_record(key, value, stage, shared)
    })
    .await
}

/// Calls `note` with every key and value under `prefix`: those listed, then every put the watch
/// from the next revision brings. Returns only with an error (the watch ended or failed).
pub(crate) async fn on_every_put(
    client: &mut etcd_client::Client,
    prefix: &str,
    mut note: impl FnMut(&str, &[u8]),
) -> Result<()> {
    let list = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    for kv in list.kvs() {
        note(kv.key_str()?, kv.value());
    }
    let revision = list.header().map_or(0, |h| h.revision());
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    while let Some(resp) = stream.message().await? {
        if resp.canceled() {
            bail!("watch canceled: {}", resp.cancel_reason());
        }
        for ev in resp.events() {
            if ev.event_type() == EventType::Put
                && let Some(kv) = ev.kv()
            {
                note(kv.key_str()?, kv.value());
            }
        }
    }
    bail!("the watch ended")
}

/// Notes `stage` for every ready endpoint address of an EndpointSlice record.
fn note_record(key: &str, value: &[u8], stage: &str, shared: &Shared) {
    let Ok((_, Record::Endpoints(slice))) = Record::decode_at(key, value) else {
        return;
    };
    for e in slice.endpoints.iter().filter(|e| e.ready) {
        for a in &e.addresses {
            if let Ok(ip) = address(a).parse::<Ipv4Addr>() {
                observe(shared, stage, ip);
            }
        }
    }
}

/// Reads every node's services map until `stop`, noting `maps:<node>` for the backends of
/// `frontend`.
fn poll_maps(pins: &[(String, Pins)], frontend: Frontend, shared: &Shared, stop: &AtomicBool) {
    let mut maps: Vec<(String, Option<KernelMaps>)> = pins
        .iter()
        .map(|(stage, _)| (stage.clone(), None))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for ((stage, m), (_, p)) in maps.iter_mut().zip(pins) {
            if m.is_none() {
                *m = KernelMaps::open(p).ok();
            }
            let Some(km) = m else { continue };
            let Ok((tables, _)) = km.read() else { continue };
            for b in tables.services.get(&frontend).into_iter().flatten() {
                observe(shared, stage, b.ip);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Reads the probe's JSON lines, noting `answered` for the pod named in each reply.
fn read_probe(out: impl std::io::Read, ips: &BTreeMap<String, Ipv4Addr>, shared: &Shared) {
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(pod) = v["reply"].as_str().and_then(|r| r.strip_prefix("infra/")) else {
            continue;
        };
        if let Some(ip) = ips.get(pod) {
            observe(shared, "answered", *ip);
        }
    }
}

/// Waits until every stage (the maps of every node) held change `id`.
fn wait_all(
    shared: &Shared,
    id: u64,
    nodes: &[String],
    patience: Duration,
) -> Result<BTreeMap<String, Instant>> {
    let deadline = Instant::now() + patience;
    let wanted: Vec<String> = ["published", "mirrored", "answered"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(nodes.iter().map(|n| format!("maps:{n}")))
        .collect();
    loop {
        {
            let c = shared.lock().expect("observers do not panic");
            assert_eq!(c.id, id, "one change at a time");
            let missing: Vec<&String> =
                wanted.iter().filter(|w| !c.seen.contains_key(*w)).collect();
            if missing.is_empty() {
                return Ok(c.seen.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "not seen within {} s at {}",
                    patience.as_secs(),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Adds one change's times to the phase.
fn record(
    m: &mut Phase,
    began: Instant,
    seen: &BTreeMap<String, Instant>,
    nodes: &[String],
    first: bool,
) {
    let maps = nodes
        .iter()
        .map(|n| seen[&format!("maps:{n}")])
        .max()
        .expect("a node");
    let at = |stage: &str| if stage == "maps" { maps } else { seen[stage] };
    for stage in STAGES {
        let total = at(stage).saturating_duration_since(began);
        m.stages.entry(stage).or_default().record(total);
        if stage != "published" {
            m.after_published
                .entry(stage)
                .or_default()
                .record(at(stage).saturating_duration_since(at("published")));
        }
        if first {
            m.first.insert(stage, total.as_secs_f64() * 1000.0);
        }
    }
}

/// The next number of a xorshift64 sequence (the pauses need no better randomness).
fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn report(
    args: &PropagationArgs,
    phases: &[(&str, Phase)],
    killed: &[String],
    machine: Machine,
    command: String,
) -> Result<()> {
    let mut md = format!(
        "# mesh-bench propagation\n\n\
         Command: `{command}`\n\n\
         - Machine: {machine}\n\
         - The default lab (two clusters of 3 API-server members and 2 nodes; `apps` built \
         like Talos with Flannel, `infra` like EKS with the VPC CNI and legacy tc) plus a global \
         service `demo/bench`: `infra` has {BENCH_PODS} pods for it of which one at a time is \
         ready; `apps` declares it without backends. A change makes the next pod the ready one \
         in `infra`'s manifests. {changes} changes per phase, each after a pause drawn from \
         0–1 s (seed {seed}).\n\
         - Stages, each timed from the change: **published** (`infra`'s store has the record: \
         the publisher's 1 s manifests poll and one pass — a lab-only cost, on Kubernetes the \
         publisher watches the API), **mirrored** (`apps`' store has it), **maps** (both `apps` \
         agents' pinned services maps have the backend; read about every ms), **answered** (the \
         first connection from `apps/client` to the VIP through socket load balancing answered \
         by the new pod; one connection every {PROBE_INTERVAL_MS} ms). Observed by watches from \
         the host, map reads and the probe's output: each adds up to a few ms, and right \
         after a kill the watches from the host may be reconnecting themselves, so \
         published and mirrored can show later than the maps that follow them.\n\
         - The second phase starts by killing `infra`'s and `apps`' leaders with SIGKILL \
         ({killed}) and runs on the surviving two members of each cluster.\n\n",
        changes = args.changes,
        seed = args.seed,
        killed = killed.join(", "),
    );
    let mut raw_phases = Vec::new();
    for (name, m) in phases {
        md.push_str(&format!(
            "## {name}\n\n\
             | stage | from the change p50 / p99 / max ms | from published p50 / p99 / max ms |\n\
             |---|---:|---:|\n"
        ));
        let mut raw = json!({"phase": name});
        let cell = |p: Option<Percentiles>| {
            p.map_or_else(
                || "–".to_owned(),
                |p| format!("{:.1} / {:.1} / {:.1}", p.p50_ms, p.p99_ms, p.max_ms),
            )
        };
        for stage in STAGES {
            let total = m.stages.get(stage).cloned().unwrap_or_default().summary();
            let mesh = m
                .after_published
                .get(stage)
                .cloned()
                .unwrap_or_default()
                .summary();
            md.push_str(&format!("| {stage} | {} | {} |\n", cell(total), cell(mesh)));
            raw[stage] = json!({"from_change": total, "from_published": mesh});
        }
        if let Some(p) = m
            .after_published
            .get("maps")
            .cloned()
            .unwrap_or_default()
            .summary()
        {
            md.push_str(&format!(
                "\nPublished → both remote agents' maps (the mesh's share, without the \
                 manifests poll): p99 {:.1} ms (target < 500 ms: {}).\n",
                p.p99_ms,
                if p.p99_ms < 500.0 { "met" } else { "not met" }
            ));
        }
        if !m.first.is_empty() {
            md.push_str(&format!(
                "\nThe first change after the kill (includes both elections, the new \
                 leaders' publisher and mirror starting, the agents' reconnection): {}.\n",
                STAGES
                    .iter()
                    .map(|s| format!("{s} {:.0} ms", m.first[s]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            raw["first_change_ms"] = json!(m.first);
        }
        md.push('\n');
        raw_phases.push(raw);
    }
    let raw = json!({
        "command": command,
        "machine": machine.to_string(),
        "changes_per_phase": args.changes,
        "seed": args.seed,
        "killed": killed,
        "phases": raw_phases,
    });
    crate::report::write_table(&args.out, "propagation", &md, &raw)
}
