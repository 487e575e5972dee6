//! `mesh-bench mirror`: how fast and how cheaply one cluster's records reach another.
//!
//! raftmesh: two 3-member TLS clusters; cluster A publishes a synthetic cluster (default 1,000
//! services, 10,000 pods) from manifests; `meshctl connect` joins them and B's leader mirrors A.
//! The anchor is etcd's own mirror, `etcdctl make-mirror`, between two 3-member etcd clusters
//! holding the same keys and values (etcd in plaintext, raftmesh with mutual TLS). Both are
//! driven by the same client code:
//!
//! - initial mirror: from the moment the mirror is started (connect, or make-mirror) until B
//!   holds every key of A's prefix; B's revisions meanwhile are its write Txns.
//! - propagation: one key written in A at a time, the time until a watch on B sees it, over
//!   `--changes` changes while other keys of the prefix change at `--churn` per second.
//! - restarts without changes: the keys of B's mirrored prefix written or deleted when the
//!   mirror restarts (raftmesh: kill -9 of B's leader, then of all of A; etcd: make-mirror
//!   restarted), once the prefix has been quiet for a few seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use mesh_api::records::NodeKeyRecord;
use mesh_api::{Record, SCHEMA};
use serde_json::{Value, json};
use testkit::localcluster::{Cluster, Flavor, Spec};
use tokio::time::Instant;

use crate::machine::Machine;
use crate::publish::expected_keys;
use crate::stats::{Percentiles, Samples};
use crate::synthetic::Shape;

/// `mesh-bench mirror`'s options.
#[derive(Debug, clap::Args)]
pub struct MirrorArgs {
    /// Services in cluster A (each with one EndpointSlice).
    #[arg(long, default_value_t = 1_000)]
    pub services: usize,
    /// Pods in cluster A (a multiple of --services).
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Nodes in cluster A.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Single changes timed from A to B.
    #[arg(long, default_value_t = 1_000)]
    pub changes: usize,
    /// Background changes per second in A's prefix while they are timed.
    #[arg(long, default_value_t = 50)]
    pub churn: u32,
    /// Skip the etcd make-mirror anchor.
    #[arg(long)]
    pub no_anchor: bool,
    /// Directory for mirror-<services>x<pods>.md and .json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// The mesh-apiserver binary [default: next to mesh-bench].
    #[arg(long)]
    pub raftmesh_bin: Option<PathBuf>,
    /// The meshctl binary [default: next to mesh-bench].
    #[arg(long)]
    pub meshctl_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = testkit::localcluster::flavor::DEFAULT_ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// The etcdctl binary (its make-mirror is the anchor).
    #[arg(long, default_value = testkit::localcluster::cluster::DEFAULT_ETCDCTL_BIN)]
    pub etcdctl_bin: PathBuf,
}

/// Cluster A's name and prefix.
const A: &str = "bench-a";
const PREFIX: &str = "mesh/v1/bench-a/";
/// How long B's mirrored prefix must see no write before a restart counts as settled.
const QUIET: Duration = Duration::from_secs(3);
/// Bound on every wait.
const PATIENCE: Duration = Duration::from_secs(600);

/// One system's figures.
#[derive(Debug, Clone, Default)]
struct Run {
    name: &'static str,
    keys: usize,
    initial_seconds: f64,
    initial_txns: i64,
    propagation: Option<Percentiles>,
    changes: usize,
    /// What restarted, the keys written or deleted in B's prefix, and the keys it held.
    restarts: Vec<(String, u64, usize)>,
}

pub async fn run(args: MirrorArgs, command: String) -> Result<()> {
    ensure!(
        args.services > 0 && args.pods.is_multiple_of(args.services),
        "--pods must be a multiple of --services"
    );
    ensure!(args.changes > 0, "--changes must be at least 1");
    let here = std::env::current_exe()?;
    let server = args
        .raftmesh_bin
        .clone()
        .unwrap_or_else(|| here.with_file_name("mesh-apiserver"));
    let meshctl = args
        .meshctl_bin
        .clone()
        .unwrap_or_else(|| here.with_file_name("meshctl"));
    for bin in [&server, &meshctl] {
        ensure!(bin.is_file(), "{} not found", bin.display());
    }
    if !args.no_anchor {
        for bin in [&args.etcd_bin, &args.etcdctl_bin] {
            ensure!(
                bin.is_file(),
                "{} not found (or give --no-anchor)",
                bin.display()
            );
        }
    }
    let mut servers = vec![("raftmesh", server.as_path())];
    if !args.no_anchor {
        servers.push(("etcd", args.etcd_bin.as_path()));
    }
    let machine = Machine::read(servers);
    eprintln!("mesh-bench mirror: {machine}");
    let shape = Shape {
        nodes: args.nodes,
        services: args.services,
        pods: args.pods,
    };
    let (raftmesh, data) = raftmesh(&args, shape, &server, &meshctl).await?;
    let mut runs = vec![raftmesh];
    if !args.no_anchor {
        runs.push(etcd(&args, &data).await?);
    }
    report(&args, shape, &machine, &command, &runs)
}

/// Runs `program args` and fails with its output unless it succeeds.
fn run_ok(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<String> {
    let mut c = Command::new(program);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    ensure!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Keys under `prefix` (a count-only Range).
pub(crate) async fn count(client: &mut Client, prefix: &str) -> Result<i64> {
    Ok(client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count())
}

async fn revision(client: &mut Client) -> Result<i64> {
    Ok(client
        .get("x", None)
        .await?
        .header()
        .context("header")?
        .revision())
}

/// Waits until `client`'s store holds `want` keys under the prefix.
async fn wait_for_keys(client: &mut Client, want: i64) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if count(client, PREFIX).await.unwrap_or(-1) == want {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "B never held {want} keys");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The raftmesh pair: returns its figures and A's keys and values (the anchor's data set).
async fn raftmesh(
    args: &MirrorArgs,
    shape: Shape,
    server: &Path,
    meshctl: &Path,
) -> Result<(Run, BTreeMap<Vec<u8>, Vec<u8>>)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("meshctl-config");
    let env = [("RAFTMESH_CONFIG", config.as_path())];
    let mut clusters = Vec::new();
    for (name, id, pod_cidr) in [(A, 1, None), ("bench-b", 2, Some("10.128.0.0/16"))] {
        let pki = dir.path().join(format!("{name}-pki"));
        run_ok(
            meshctl,
            &[
                "pki",
                "init",
                "--cluster",
                name,
                "--out",
                pki.to_str().unwrap(),
            ],
            &[],
        )?;
        let manifests = dir.path().join(format!("{name}-manifests"));
        std::fs::create_dir_all(&manifests)?;
        if name == A {
            std::fs::write(manifests.join("cluster.yaml"), shape.manifests())?;
        }
        let mut spec = Spec::with_members(3);
        spec.tls = Some(pki.clone());
        spec.extra_args = [
            "--cluster-name",
            name,
            "--cluster-id",
            &id.to_string(),
            "--manifests-dir",
            manifests.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        if let Some(c) = pod_cidr {
            spec.extra_args
                .extend(["--pod-cidr".to_owned(), c.to_owned()]);
        }
        eprintln!("[raftmesh] starting {name}");
        let cluster = Cluster::start(Flavor::Raftmesh(server.to_owned()), spec).await?;
        let endpoints = cluster.client_urls().join(",");
        run_ok(
            meshctl,
            &[
                "config",
                "set-context",
                name,
                "--endpoints",
                &endpoints,
                "--pki-dir",
                pki.to_str().unwrap(),
            ],
            &env,
        )?;
        clusters.push(cluster);
    }
    let [a, mut b]: [Cluster; 2] = clusters.try_into().expect("two clusters");
    let mut ca = a.client().await?;
    let want = expected_keys(&shape.manifests(), A, 1)?;
    eprintln!("[raftmesh] A publishes {want} keys");
    let deadline = Instant::now() + PATIENCE;
    while count(&mut ca, PREFIX).await? != want {
        ensure!(Instant::now() < deadline, "A did not publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut cb = b.client().await?;
    while count(&mut cb, "mesh/v1/bench-b/cluster").await? != 1 {
        ensure!(
            Instant::now() < deadline,
            "B did not publish its cluster record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = revision(&mut cb).await?;
    eprintln!("[raftmesh] connecting (initial mirror)");
    let started = Instant::now();
    run_ok(
        meshctl,
        &["connect", "--context", A, "--destination", "bench-b"],
        &env,
    )?;
    wait_for_keys(&mut cb, want).await?;
    let initial_seconds = started.elapsed().as_secs_f64();
    let initial_txns = revision(&mut cb).await? - before;
    eprintln!(
        "[raftmesh] initial mirror: {want} keys in {initial_seconds:.2} s, {initial_txns} Txns in B"
    );
    let data = snapshot(&mut ca).await?;

    let (propagation, changes) = propagation("raftmesh", &a, &b, args).await?;
    converge(&a, &b).await?;
    let mut restarts = Vec::new();
    // B's leader, the mirror's home, dies and comes back; then all of A.
    let from = start_counting(&b).await?;
    let leader = b.leader().await?;
    b.kill(leader);
    let deadline = Instant::now() + PATIENCE;
    while b.leader().await.ok().is_none_or(|l| l == leader) {
        ensure!(Instant::now() < deadline, "B has no new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.restart(leader).await?;
    wait_connected(&b).await?;
    let (writes, keys) = settled_writes(&b, from).await?;
    restarts.push((
        "kill -9 of B's leader (the mirror's member)".to_owned(),
        writes,
        keys,
    ));
    let mut a = a;
    let from = start_counting(&b).await?;
    let all: Vec<usize> = (0..a.len()).collect();
    a.restart_together(&all).await?;
    wait_connected(&b).await?;
    let (writes, keys) = settled_writes(&b, from).await?;
    restarts.push((
        "kill -9 and restart of every member of A".to_owned(),
        writes,
        keys,
    ));
    Ok((
        Run {
            name: "raftmesh",
            keys: want as usize,
            initial_seconds,
            initial_txns,
            propagation,
            changes,
            restarts,
        },
        data,
    ))
}

/// Waits until B's status says its mirror of A is connected and it holds A's current key.
async fn wait_connected(b: &Cluster) -> Result<()> {
    let mut c = b.client().await?;
    let key = format!("mesh/status/remotes/{A}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = c.get(key.as_str(), None).await
            && let Some(kv) = r.kvs().first()
            && let Ok(s) = mesh_api::remote::RemoteStatusRecord::decode_checked(kv.value())
            && s.connected
            && c.get(format!("mesh/status/current/{A}"), None)
                .await
                .is_ok_and(|r| !r.kvs().is_empty())
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "B's mirror did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn snapshot(client: &mut Client) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let end = mesh_api::keys::prefix_end(PREFIX);
    let mut from = PREFIX.as_bytes().to_vec();
    loop {
        let r = client
            .get(
                from.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_limit(1000)),
            )
            .await?;
        for kv in r.kvs() {
            out.insert(kv.key().to_vec(), kv.value().to_vec());
        }
        match r.kvs().last() {
            Some(last) if r.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// A node key record (valid, so raftmesh's mirror takes it) whose key is `value`.
fn record(value: &str) -> Vec<u8> {
    Record::NodeKey(NodeKeyRecord {
        schema: SCHEMA,
        public_key: value.to_owned(),
        listen_port: 51871,
        boot_id: String::new(),
        probe_port: 0,
    })
    .encode()
}

/// Times `--changes` single changes from A to a watch on B, under `--churn`.
async fn propagation(
    system: &str,
    a: &Cluster,
    b: &Cluster,
    args: &MirrorArgs,
) -> Result<(Option<Percentiles>, usize)> {
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churn = {
        let mut client = a.client().await?;
        let (stop, churned) = (stop.clone(), churned.clone());
        let every = Duration::from_secs_f64(1.0 / f64::from(args.churn.max(1)));
        let on = args.churn > 0;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n = 0u64;
            while on && !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let key = format!("{PREFIX}nodekeys/churn-{}", n % 100);
                if client
                    .put(key, record(&format!("c{n}")), None)
                    .await
                    .is_ok()
                {
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut writer = a.client().await?;
    let mut watcher = b.client().await?;
    let probe = format!("{PREFIX}nodekeys/probe");
    let mut stream = watcher
        .watch(probe.as_str(), Some(WatchOptions::new()))
        .await?;
    // The created answer.
    stream.message().await?;
    let mut samples = Samples::with_capacity(args.changes);
    eprintln!(
        "[{system}] timing {} changes A → B under {}/s churn",
        args.changes, args.churn
    );
    let started = Instant::now();
    let mut slowest: Option<(usize, Duration)> = None;
    for i in 0..args.changes {
        let value = record(&format!("p{i}"));
        let sent = Instant::now();
        writer.put(probe.as_str(), value.clone(), None).await?;
        loop {
            let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .context("a change did not reach B within 30 s")??
                .context("B's watch ended")?;
            if resp.events().iter().any(|e| {
                e.event_type() == EventType::Put && e.kv().is_some_and(|kv| kv.value() == value)
            }) {
                break;
            }
        }
        let took = sent.elapsed();
        if slowest.is_none_or(|(_, t)| took > t) {
            slowest = Some((i, took));
        }
        samples.record(took);
        if (i + 1) % 200 == 0 {
            eprintln!("  {}/{} changes", i + 1, args.changes);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    churn.await?;
    let rate = churned.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    eprintln!("  background churn ran at {rate:.0}/s");
    if let Some((i, took)) = slowest {
        eprintln!("  the slowest change: #{i} of {}, {took:.2?}", args.changes);
    }
    Ok((samples.summary(), args.changes))
}

/// Waits until B's copy of the prefix equals A's (the churn's last changes have arrived).
async fn converge(a: &Cluster, b: &Cluster) -> Result<()> {
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let deadline = Instant::now() + PATIENCE;
    while snapshot(&mut ca).await? != snapshot(&mut cb).await? {
        ensure!(Instant::now() < deadline, "B never caught up with A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Where counting B's writes starts: the next revision, and the keys B holds now.
struct Counting {
    from: i64,
    keys: std::collections::BTreeSet<Vec<u8>>,
}

async fn start_counting(b: &Cluster) -> Result<Counting> {
    let mut c = b.client().await?;
    let (revision, kvs) = keys_with_revisions(&mut c).await?;
    Ok(Counting {
        from: revision + 1,
        keys: kvs.into_iter().map(|(k, _)| k).collect(),
    })
}

/// The keys of B's mirrored prefix and their mod revisions, with the store's revision.
async fn keys_with_revisions(c: &mut Client) -> Result<(i64, Vec<(Vec<u8>, i64)>)> {
    let r = c
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let revision = r.header().context("header")?.revision();
    Ok((
        revision,
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
            .collect(),
    ))
}

/// Keys of B's mirrored prefix written or deleted since `start`, once the prefix has been quiet
/// for [`QUIET`]. (A key written twice counts once: this counts what a restart rewrote.)
async fn settled_writes(b: &Cluster, start: Counting) -> Result<(u64, usize)> {
    let mut c = b.client().await?;
    let deadline = Instant::now() + PATIENCE;
    let mut last_count = u64::MAX;
    let mut quiet_since = Instant::now();
    loop {
        let (_, kvs) = keys_with_revisions(&mut c).await?;
        let written = kvs.iter().filter(|(_, rev)| *rev >= start.from).count();
        let now: std::collections::BTreeSet<&Vec<u8>> = kvs.iter().map(|(k, _)| k).collect();
        let deleted = start.keys.iter().filter(|k| !now.contains(k)).count();
        let n = (written + deleted) as u64;
        if n != last_count {
            last_count = n;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            return Ok((n, start.keys.len()));
        }
        ensure!(Instant::now() < deadline, "B's prefix never went quiet");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The anchor: etcd clusters A and B holding the same data, `etcdctl make-mirror` between.
async fn etcd(args: &MirrorArgs, data: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Run> {
    let flavor = Flavor::Etcd(args.etcd_bin.clone());
    eprintln!("[etcd] starting A and B");
    let a = Cluster::start(flavor.clone(), Spec::with_members(3)).await?;
    let b = Cluster::start(flavor, Spec::with_members(3)).await?;
    let mut ca = a.client().await?;
    let ops: Vec<TxnOp> = data
        .iter()
        .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
        .collect();
    for chunk in ops.chunks(128) {
        ca.txn(Txn::new().and_then(chunk.to_vec())).await?;
    }
    let want = data.len() as i64;
    ensure!(
        count(&mut ca, PREFIX).await? == want,
        "A does not hold the data set"
    );
    let mut cb = b.client().await?;
    let before = revision(&mut cb).await?;
    eprintln!("[etcd] starting make-mirror (initial mirror)");
    let started = Instant::now();
    let mut mirror = MakeMirror::start(&args.etcdctl_bin, &a, &b)?;
    wait_for_keys(&mut cb, want).await?;
    let initial_seconds = started.elapsed().as_secs_f64();
    let initial_txns = revision(&mut cb).await? - before;
    eprintln!(
        "[etcd] initial mirror: {want} keys in {initial_seconds:.2} s, {initial_txns} Txns in B"
    );
    let (propagation, changes) = propagation("etcd", &a, &b, args).await?;
    converge(&a, &b).await?;
    let from = start_counting(&b).await?;
    mirror.stop();
    mirror = MakeMirror::start(&args.etcdctl_bin, &a, &b)?;
    let (writes, keys) = settled_writes(&b, from).await?;
    mirror.stop();
    Ok(Run {
        name: "etcd make-mirror",
        keys: want as usize,
        initial_seconds,
        initial_txns,
        propagation,
        changes,
        restarts: vec![("make-mirror restarted".to_owned(), writes, keys)],
    })
}

/// A running `etcdctl make-mirror`.
struct MakeMirror(Child);

impl MakeMirror {
    fn start(etcdctl: &Path, a: &Cluster, b: &Cluster) -> Result<MakeMirror> {
        let source = a.client_urls().join(",");
        let dest = b.client_url(0);
        let child = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .args([
                "make-mirror",
                "--prefix",
                PREFIX,
                "--endpoints",
                &source,
                &dest,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcdctl make-mirror")?;
        Ok(MakeMirror(child))
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for MakeMirror {
    fn drop(&mut self) {
        self.stop();
    }
}

fn report(
    args: &MirrorArgs,
    shape: Shape,
    machine: &Machine,
    command: &str,
    runs: &[Run],
) -> Result<()> {
    let mut md = format!(
        "# mesh-bench mirror\n\nCommand: `{command}`\n\n- Machine: {machine}\n- Cluster A: {} nodes, {} services, {} pods; B mirrors A's prefix. raftmesh: 3+3 members, mutual TLS, `meshctl connect`; anchor: etcd 3+3 members, plaintext, `etcdctl make-mirror` of the same keys and values.\n- Propagation: {} single changes written in A, each timed until a watch on B sees it, while other keys of the prefix change at {}/s.\n\n| measure |",
        shape.nodes, shape.services, shape.pods, args.changes, args.churn
    );
    for r in runs {
        md.push_str(&format!(" {} |", r.name));
    }
    md.push_str("\n|---|");
    for _ in runs {
        md.push_str("---:|");
    }
    md.push('\n');
    let row = |md: &mut String, name: &str, f: &dyn Fn(&Run) -> String| {
        md.push_str(&format!("| {name} |"));
        for r in runs {
            md.push_str(&format!(" {} |", f(r)));
        }
        md.push('\n');
    };
    row(&mut md, "keys mirrored", &|r| r.keys.to_string());
    row(&mut md, "initial mirror", &|r| {
        format!("{:.2} s", r.initial_seconds)
    });
    row(&mut md, "initial mirror write Txns in B", &|r| {
        r.initial_txns.to_string()
    });
    let pct = |r: &Run, f: fn(&Percentiles) -> f64| {
        r.propagation
            .as_ref()
            .map_or("-".to_owned(), |p| format!("{:.1} ms", f(p)))
    };
    row(&mut md, "propagation p50", &|r| pct(r, |p| p.p50_ms));
    row(&mut md, "propagation p99", &|r| pct(r, |p| p.p99_ms));
    row(&mut md, "propagation max", &|r| pct(r, |p| p.max_ms));
    md.push_str("\nWrites to B's mirrored prefix when a mirror restarts with nothing changed:\n\n| restart | system | keys written or deleted | keys held | share |\n|---|---|---:|---:|---:|\n");
    for r in runs {
        for (what, writes, keys) in &r.restarts {
            md.push_str(&format!(
                "| {what} | {} | {writes} | {keys} | {:.2}% |\n",
                r.name,
                *writes as f64 * 100.0 / (*keys).max(1) as f64
            ));
        }
    }
    md.push_str("\nTargets: propagation p99 < 50 ms; initial mirror of ~13k keys < 3 s; a restart with no changes < 1% of the keys in writes.\n");
    let raw: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "system": r.name,
                "keys": r.keys,
                "initial_seconds": r.initial_seconds,
                "initial_txns": r.initial_txns,
                "propagation_ms": r.propagation,
                "changes": r.changes,
                "restarts": r.restarts.iter().map(|(w, n, k)| json!({"restart": w, "writes": n, "keys": k})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let raw = json!({
        "command": command,
        "machine": machine,
        "shape": {"nodes": shape.nodes, "services": shape.services, "pods": shape.pods},
        "churn_per_second": args.churn,
        "runs": raw,
    });
    crate::report::write_table(
        &args.out,
        &format!("mirror-{}x{}", shape.services, shape.pods),
        &md,
        &raw,
    )?;
    Ok(())
}
