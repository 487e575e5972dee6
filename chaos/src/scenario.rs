//! Scenarios: a lab, workloads on it, faults on a timeline, then the checkers.
//!
//! Every scenario runs the same way:
//! 1. a lab (the default spec plus a `demo/churn` service with pods to churn, and a
//!    `demo/local` service that is not shared, so its backends are the cluster's own echo
//!    pods);
//! 2. workloads: KV clients and a watcher in every cluster, service churn in every cluster's
//!    manifests, and connections from every `client` pod to `demo/local` (local backends);
//! 3. the scenario's faults, at times relative to the start;
//! 4. after the faults end: the workloads stop, and the checkers run — linearizability, watch
//!    guarantees, no acknowledged write lost, convergence of mirrors and agents' maps (timed
//!    from the end of the faults), availability of local writes and local-backend
//!    connections while clusters were cut apart, and the writes healing cost.
//!
//! Times in the report are seconds from the start, for people; the checkers never use them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lab::faults::Degrade;
use lab::instance::{Lab, Target, UpOptions};
use lab::mesh::Binaries;
use lab::plan::{self, Plan};
use lab::spec::{LabSpec, PodSpec, PortSpec, ServiceSpec};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::check::available::{self, Answer, Preference, tally};
use crate::check::{linear, lost, watch};
use crate::converge;
use crate::rng::Rng;
use crate::workload::Connect;
use crate::workload::kv::{self, Clock, KvConfig, KvHistory, WatchRecord};

/// How long a remote may stay silent before its mirror calls it disconnected
/// (`mesh_apiserver::mirror::session::SILENCE`).
pub const MIRROR_SILENCE: Duration = Duration::from_secs(3);

/// The scenarios, with what each does.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "partition",
        "apps and infra cut apart at the fabric for the fault time, KV load and service churn on both sides",
    ),
    (
        "partition-leader-kill",
        "the partition, and each cluster's leader killed (SIGKILL) a third of the way in and restarted two thirds in",
    ),
    (
        "isolate-member",
        "apps' leader cut off from its peers (clients still reach it) for the fault time under KV load, then rejoined",
    ),
    (
        "remote-compacted",
        "the partition, with both clusters' stores compacted two thirds in, so each mirror must resume from a compacted revision (a resync)",
    ),
    (
        "long-disconnect",
        "the partition held past the agents' --remote-stale-after, so they stop preferring the remote's backends; then healed, and they use them again",
    ),
    (
        "agent-kill",
        "service churn in both clusters while an apps agent is killed (SIGKILL) for the fault time and restarted",
    ),
    (
        "degraded",
        "200 ms ± 50 ms one-way delay and 5% loss between apps and infra for the fault time, with KV load and churn",
    ),
    (
        "hostile-remote",
        "a third cluster connected to apps claims apps' and infra's addresses as its nodes, labels its reserved identities as apps' pods, copies an apps node's WireGuard key, floods its ipcache past the agents' limit and rewrites a record without pause for the fault time, while apps runs its usual workloads",
    ),
];

pub mod hostile;

/// How a scenario is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of every random choice.
    pub seed: u64,
    /// How long the faults last.
    pub fault: Duration,
    /// Before the faults and after them, with the workloads running.
    pub settle: Duration,
    /// How long convergence may take before it is a violation.
    pub converge_within: Duration,
    /// The programs.
    pub bins: Binaries,
    /// Where labs are made (a scenario's lab is removed when it ends).
    pub base: PathBuf,
}

/// What one fault did, when.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Seconds from the start.
    pub at_s: f64,
    /// What was done.
    pub what: String,
}

/// Everything a scenario found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// The fault time (s).
    pub fault_s: f64,
    /// The faults injected.
    pub faults: Vec<FaultEvent>,
    /// Per cluster: KV operations answered and unanswered, watch events and reconnects.
    pub operations: BTreeMap<String, Value>,
    /// Violations per checker (empty lists when none).
    pub violations: BTreeMap<String, Vec<Value>>,
    /// Seconds from the end of the faults until mirrors and maps agreed; `None` if they did
    /// not within the bound.
    pub convergence_s: Option<f64>,
    /// Per cluster: writes under other clusters' prefixes from the end of the faults until
    /// convergence (what healing cost), against the churn changes made during the faults.
    pub resync: BTreeMap<String, Value>,
    /// While clusters were cut apart or degraded: failed local KV writes and failed
    /// connections to local backends, per cluster.
    pub availability: BTreeMap<String, Value>,
    /// Seconds the whole run took.
    pub took_s: f64,
}

impl Report {
    /// All violations, over every checker.
    pub fn violation_count(&self) -> usize {
        self.violations.values().map(Vec::len).sum()
    }
}

/// The lab a scenario runs on; agents call a remote stale after `stale_after`.
pub fn chaos_spec(stale_after: Duration) -> LabSpec {
    let mut spec = LabSpec::default_lab();
    spec.remote_stale_after = format!("{}ms", stale_after.as_millis());
    let port = |name: &str, port: u16| PortSpec {
        name: name.to_owned(),
        port,
        target_port: 8080,
        protocol: "TCP".to_owned(),
    };
    for c in &mut spec.clusters {
        c.services.push(ServiceSpec {
            name: "churn".to_owned(),
            namespace: "demo".to_owned(),
            global: true,
            shared: true,
            affinity: "none".to_owned(),
            selector: BTreeMap::from([("app".to_owned(), "churn".to_owned())]),
            ports: vec![port("tcp", 9000)],
        });
        c.services.push(ServiceSpec {
            name: "local".to_owned(),
            namespace: "demo".to_owned(),
            // Global so the agents program it (they program global services only), not
            // shared so each cluster's has its own backends alone.
            global: true,
            shared: false,
            affinity: "local".to_owned(),
            selector: BTreeMap::from([("app".to_owned(), "echo".to_owned())]),
            ports: vec![port("tcp", 80)],
        });
        for i in 1..=4 {
            c.pods.push(PodSpec {
                name: format!("churn-{i}"),
                namespace: "demo".to_owned(),
                node: Some(format!("node-{}", 1 + i % 2)),
                labels: BTreeMap::from([("app".to_owned(), "churn".to_owned())]),
                ready: true,
            });
        }
    }
    spec
}

/// Fails unless `name` is a scenario's.
pub fn known(name: &str) -> Result<()> {
    if !SCENARIOS.iter().any(|(n, _)| *n == name) {
        bail!(
            "no scenario {name:?}; there are {} (`mesh-chaos list`)",
            SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Runs scenario `name`; `progress` gets a line per step.
pub async fn run(name: &str, opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Result<Report> {
    known(name)?;
    let lab_name = format!("chaos-{}-{}", std::process::id(), name.len());
    let up = {
        let mut spec = chaos_spec(if name == "long-disconnect" {
            (opts.fault / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
        } else {
            Duration::from_secs(10)
        });
        if name == "hostile-remote" {
            spec = hostile::spec(spec);
        }
        let opts = UpOptions {
            base: opts.base.clone(),
            name: lab_name.clone(),
            spec,
            bins: opts.bins.clone(),
            config: opts.base.join(format!("{lab_name}.config")),
        };
        tokio::task::spawn_blocking(move || Lab::up(opts, &mut |_: &str| {})).await?
    };
    let mut guard = LabGuard(match up {
        Ok(lab) => Some(lab),
        Err(e) => {
            if let Ok(Some(half)) = Lab::open(&opts.base, &lab_name) {
                let _ = half.down(&mut |_: &str| {});
            }
            return Err(e.context("lab up"));
        }
    });
    progress(&format!("{name}: lab up"));
    let lab = guard.0.as_mut().expect("until dropped");
    Run::new(name, opts, lab).go(progress).await
}

/// Takes the lab down however the run ends.
struct LabGuard(Option<Lab>);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            let _ = lab.down(&mut |_: &str| {});
        }
    }
}

/// A scenario in progress.
struct Run<'a> {
    name: &'a str,
    opts: &'a Options,
    lab: &'a mut Lab,
    began: Instant,
    rng: Rng,
    faults: Vec<FaultEvent>,
    /// Churn changes made while faults were in force, per cluster.
    churn_during: BTreeMap<String, u64>,
    /// Whether faults are in force (for the churn and availability counts).
    faulted: bool,
    /// The member `isolate-member` cut off.
    isolated: Option<Target>,
    /// `hostile-remote`'s attack in progress.
    attack: Option<Attack>,
}

/// `hostile-remote`'s attack: what it claims, its tasks, and what was seen before it.
struct Attack {
    targets: hostile::Targets,
    stop: CancellationToken,
    churn: tokio::task::JoinHandle<u64>,
    status: tokio::task::JoinHandle<()>,
    seen: Arc<hostile::Seen>,
    /// apps' agents' maps before it.
    before: BTreeMap<String, hostile::AgentView>,
    /// apps' store size before it, and when it began.
    bytes_before: Option<f64>,
    began: Instant,
    rewrites: u64,
}

/// A cluster's workloads.
struct Workloads {
    connect: Connect,
    prefix: String,
    clock: Arc<Clock>,
    kv: tokio::task::JoinHandle<KvHistory>,
    watch: tokio::task::JoinHandle<WatchRecord>,
    watch_stop: CancellationToken,
    /// The highest revision the watcher got.
    reached: Arc<AtomicI64>,
    /// The clock positions the faults began and ended at.
    window: Arc<Mutex<Vec<(u64, u64)>>>,
}

/// A client pod connecting to a service every 20 ms, its answers recorded.
struct Probe {
    child: std::process::Child,
    /// Reads the answers; returns the lines that were not answers.
    reader: std::thread::JoinHandle<Vec<String>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    stopfile: PathBuf,
    /// Where its stderr goes.
    stderr: PathBuf,
}

impl Probe {
    /// Stops the probe: its answers, and what went wrong with the probe itself (it exited
    /// before it was stopped, or printed lines that are not answers) — a probe that records
    /// nothing must never read as a cluster that failed nothing.
    fn stop(mut self) -> Result<(Vec<Answer>, Vec<String>)> {
        let mut problems = Vec::new();
        if let Some(status) = self.child.try_wait()? {
            let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            problems.push(format!(
                "the probe exited before it was stopped ({status}): {}",
                stderr.trim()
            ));
        }
        std::fs::write(&self.stopfile, b"")?;
        let _ = self.child.wait();
        match self.reader.join() {
            Ok(stray) => problems.extend(
                stray
                    .iter()
                    .take(3)
                    .map(|l| format!("the probe printed a line that is not an answer: {l}")),
            ),
            Err(_) => problems.push("the probe's reader panicked".to_owned()),
        }
        let answers = std::mem::take(&mut *self.answers.lock().expect("not poisoned"));
        Ok((answers, problems))
    }
}

impl<'a> Run<'a> {
    fn new(name: &'a str, opts: &'a Options, lab: &'a mut Lab) -> Run<'a> {
        Run {
            name,
            opts,
            lab,
            began: Instant::now(),
            rng: Rng::new(opts.seed),
            faults: Vec::new(),
            churn_during: BTreeMap::new(),
            faulted: false,
            isolated: None,
            attack: None,
        }
    }

    fn at(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    fn note(&mut self, what: String, progress: &(dyn Fn(&str) + Sync)) {
        progress(&format!("{}: [{:6.1}s] {what}", self.name, self.at()));
        let at_s = (self.at() * 10.0).round() / 10.0;
        self.faults.push(FaultEvent { at_s, what });
    }

    fn clusters(&self) -> Vec<String> {
        self.lab
            .state
            .spec
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// Whether `cluster` is judged: every cluster but `hostile-remote`'s attacker.
    fn honest(&self, cluster: &str) -> bool {
        self.name != "hostile-remote" || cluster != hostile::NAME
    }

    /// The clusters mirrors and maps must converge over: all but the hostile one.
    fn honest_clusters(&self) -> Vec<String> {
        self.clusters()
            .into_iter()
            .filter(|c| self.name != "hostile-remote" || c != hostile::NAME)
            .collect()
    }

    fn connect(&self, cluster: &str) -> Connect {
        let (index, c) = plan::indexed(&self.lab.state.spec)
            .find(|(_, c)| c.name == cluster)
            .expect("a cluster of the lab");
        let endpoints = self
            .lab
            .plan
            .members(index, c)
            .iter()
            .map(|m| format!("https://{}:2379", m.host_ip))
            .collect();
        Connect::admin(endpoints, &self.lab.pki_dir(cluster))
    }

    async fn go(mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<Report> {
        let stop = CancellationToken::new();
        let mut loads = BTreeMap::new();
        for (i, cluster) in self.clusters().into_iter().enumerate() {
            let connect = self.connect(&cluster);
            let prefix = format!("chaos/{}/", self.name);
            let mut c = connect.client(0).await.context("reaching the store")?;
            let (start, _) = kv::read_all(&mut c, &prefix).await?;
            let clock = Arc::new(Clock::default());
            let config = KvConfig {
                prefix: prefix.clone(),
                keys: 5,
                clients: 3,
                seed: self.opts.seed.wrapping_add(i as u64),
                timeout: Duration::from_secs(2),
                pause: Duration::from_millis(10),
            };
            let kv = tokio::spawn(kv::run(
                config,
                connect.clone(),
                clock.clone(),
                stop.clone(),
            ));
            let reached = Arc::new(AtomicI64::new(0));
            let watch_stop = CancellationToken::new();
            // The watcher starts on the leader, the member the scenarios kill.
            let on_leader = self
                .lab
                .leader(&cluster)?
                .trim_start_matches('m')
                .parse::<usize>()
                .map_or(0, |m| m.saturating_sub(1));
            let watch = tokio::spawn(kv::watch(
                connect.clone(),
                prefix.clone(),
                start + 1,
                on_leader,
                watch_stop.clone(),
                reached.clone(),
            ));
            loads.insert(
                cluster,
                Workloads {
                    connect,
                    prefix,
                    clock,
                    kv,
                    watch,
                    watch_stop,
                    reached,
                    window: Arc::default(),
                },
            );
        }
        let mut probes = BTreeMap::new();
        for cluster in self.clusters() {
            probes.insert(cluster.clone(), self.probe(&cluster, "local")?);
        }
        // Where apps' client connections to a global service go (its backends are in both
        // clusters): local only while infra is stale, both again after healing.
        let global = self.probe("apps", "echo")?;
        progress(&format!("{}: workloads running", self.name));

        // The timeline.
        self.churn_for(self.opts.settle).await?;
        let fault_began = self.begin_faults(&loads, progress).await?;
        // Availability and staleness are judged until the faults start being lifted;
        // convergence is timed from when they all were.
        let (fault_ended, healed) = self.end_faults(&loads, progress).await?;

        // Convergence, from the end of the faults, without further churn (so the writes
        // after it are the healing's).
        let heal_revisions = self.revisions(&loads).await;
        let convergence = self.converge(healed).await?;
        let converged_at = Instant::now();
        progress(&format!(
            "{}: {}",
            self.name,
            match convergence.0 {
                Some(s) => format!("converged {s:.1}s after the faults ended"),
                None => "did not converge".to_owned(),
            }
        ));

        // The KV load runs on for the settle time, then everything stops and is checked.
        tokio::time::sleep(self.opts.settle).await;
        stop.cancel();
        let mut report = Report {
            scenario: self.name.to_owned(),
            seed: self.opts.seed,
            fault_s: self.opts.fault.as_secs_f64(),
            faults: self.faults.clone(),
            operations: BTreeMap::new(),
            violations: BTreeMap::new(),
            convergence_s: convergence.0,
            resync: BTreeMap::new(),
            availability: BTreeMap::new(),
            took_s: 0.0,
        };
        for name in [
            "linearizable",
            "watch",
            "lost-writes",
            "convergence",
            "availability",
            "remote-preference",
            "workload",
            "inactive",
            "lease",
        ] {
            report.violations.insert(name.to_owned(), Vec::new());
        }
        report
            .violations
            .get_mut("convergence")
            .expect("inserted")
            .extend(convergence.1);
        // KV operations answered during the faults, per cluster.
        let mut kv_served = BTreeMap::new();
        for (cluster, w) in loads {
            let history = w.kv.await?;
            // A client that panicked took its history with it: nothing can be judged of it.
            for p in &history.panicked {
                report
                    .violations
                    .get_mut("workload")
                    .expect("inserted")
                    .push(json!({"cluster": cluster, "panicked": p}));
            }
            let (through, found) = read_final(&w.connect, &w.prefix).await?;
            // The watcher has until then to get every event up to the final read.
            let last = found.values().map(|f| f.mod_revision).max().unwrap_or(0);
            let patience = Instant::now() + Duration::from_secs(10);
            while w.reached.load(Ordering::Relaxed) < last && Instant::now() < patience {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            w.watch_stop.cancel();
            let record = w.watch.await?;
            let windows = w.window.lock().expect("not poisoned").clone();
            if let Some(why) = &history.lease_lost {
                report
                    .violations
                    .get_mut("lease")
                    .expect("inserted")
                    .push(json!({"cluster": cluster, "lost": why}));
            }
            kv_served.insert(cluster.clone(), history.served_during(&windows).0 as u64);
            // The workload exercised what it claims to: deletes and puts bound to a lease.
            let deletes = history.writes.iter().filter(|w| w.value.is_none()).count();
            if self.honest(&cluster) && (deletes == 0 || history.leased_writes == 0) {
                report
                    .violations
                    .get_mut("inactive")
                    .expect("inserted")
                    .push(json!({"cluster": cluster, "problem": format!(
                        "{deletes} deletes and {} puts bound to the lease acknowledged in the whole run",
                        history.leased_writes
                    )}));
            }
            self.check_cluster(
                &cluster,
                &history,
                &record,
                through,
                &found,
                &w.prefix,
                &windows,
                &mut report,
            );
            if let Some(rev) = heal_revisions.get(&cluster) {
                let resync = self.resync_writes(&cluster, &w.connect, *rev).await?;
                report.resync.insert(
                    cluster.clone(),
                    json!({
                        "writes": resync,
                        "churn_changes_during_faults": self
                            .churn_during
                            .iter()
                            .filter(|(c, _)| **c != cluster)
                            .map(|(_, n)| n)
                            .sum::<u64>(),
                    }),
                );
            }
        }
        for (cluster, p) in probes {
            let (answers, problems) = p.stop()?;
            for problem in problems {
                report
                    .violations
                    .get_mut("workload")
                    .expect("inserted")
                    .push(json!({"cluster": cluster, "probe": problem}));
            }
            let (all, failed, _) = tally(&answers, fault_began, fault_ended, &cluster);
            // Judged only if something was done: the attacker's own work is not judged.
            let activity = available::Activity::new(
                kv_served.get(&cluster).copied().unwrap_or(0),
                all,
                fault_ended.saturating_duration_since(fault_began),
            );
            if self.honest(&cluster) {
                for problem in activity.violations() {
                    report
                        .violations
                        .get_mut("inactive")
                        .expect("inserted")
                        .push(json!({"cluster": cluster, "problem": problem}));
                }
            }
            let entry = report
                .availability
                .entry(cluster.clone())
                .or_insert(json!({}));
            entry["local_connections"] = json!(answers.len());
            entry["local_connections_during_faults"] = json!(all);
            entry["local_connections_failed_during_faults"] = json!(failed);
            entry["activity"] = json!(activity);
            if failed > 0 && self.cuts_clusters() && self.honest(&cluster) {
                report
                    .violations
                    .get_mut("availability")
                    .expect("inserted")
                    .push(json!({"cluster": cluster, "failed_local_connections": failed}));
            }
        }
        let (answers, problems) = global.stop()?;
        for problem in problems {
            report
                .violations
                .get_mut("workload")
                .expect("inserted")
                .push(json!({"cluster": "apps", "global_probe": problem}));
        }
        if self.name == "hostile-remote" {
            // apps' clients reach infra's backends over the tunnels the copied key targets.
            let (all, failed, _) = tally(&answers, fault_began, fault_ended, "infra");
            report
                .availability
                .entry("apps".to_owned())
                .or_insert(json!({}))["global_connections_during_faults"] = json!(all);
            if failed > 0 {
                report
                    .violations
                    .get_mut("availability")
                    .expect("inserted")
                    .push(json!({"cluster": "apps", "failed_global_connections": failed}));
            }
            self.check_attack(&mut report).await?;
        }
        if self.name == "long-disconnect" {
            self.check_staleness(
                &answers,
                fault_began,
                fault_ended,
                converged_at,
                &mut report,
            );
        }
        report.took_s = self.at();
        Ok(report)
    }

    /// Whether local work must stay available throughout: the scenario cuts or degrades the
    /// link between clusters and touches nothing inside them (a killed leader or an
    /// isolated member fails the writes in flight on it, as it should).
    fn cuts_clusters(&self) -> bool {
        matches!(
            self.name,
            "partition" | "remote-compacted" | "long-disconnect" | "degraded" | "hostile-remote"
        )
    }

    /// Starts `mesh-echo probe` in `cluster/client` against `demo/<service>`'s TCP port.
    fn probe(&self, cluster: &str, service: &str) -> Result<Probe> {
        let c = self.lab.state.spec.cluster(cluster).context("cluster")?;
        let (index, svc) = c
            .services
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == service)
            .with_context(|| format!("demo/{service}"))?;
        let port = svc
            .ports
            .iter()
            .find(|p| p.protocol == "TCP")
            .context("a TCP port")?;
        let vip = Plan::vip(c, index);
        let stopfile = self
            .lab
            .dir
            .join(format!("chaos-probe-{cluster}-{service}.stop"));
        let stderr = stopfile.with_extension("stderr");
        let mut child = self
            .lab
            .exec(
                &format!("{cluster}/client"),
                &[
                    "mesh-echo".into(),
                    "probe".into(),
                    "--tcp".into(),
                    format!("{vip}:{}", port.port),
                    "--until".into(),
                    stopfile.to_string_lossy().into_owned(),
                    "--interval-ms".into(),
                    "20".into(),
                    "--timeout-ms".into(),
                    "1000".into(),
                ],
            )?
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let reader = {
            let answers = answers.clone();
            std::thread::spawn(move || {
                let mut stray = Vec::new();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let v = match serde_json::from_str::<Value>(&line) {
                        Ok(v) if v["ok"].is_boolean() => v,
                        _ => {
                            stray.push(line);
                            continue;
                        }
                    };
                    let by = v["reply"]
                        .as_str()
                        .and_then(|r| r.split_once('/'))
                        .map(|(c, _)| c.to_owned());
                    // When the attempt began: a failed one is read only after its timeout.
                    let took = Duration::from_micros(v["micros"].as_u64().unwrap_or(0));
                    let began = Instant::now()
                        .checked_sub(took)
                        .unwrap_or_else(Instant::now);
                    answers
                        .lock()
                        .expect("not poisoned")
                        .push((began, v["ok"] == true, by));
                }
                stray
            })
        };
        Ok(Probe {
            child,
            reader,
            answers,
            stopfile,
            stderr,
        })
    }

    /// Churns services for `d`: every 300 ms a random churn pod of a random cluster flips
    /// readiness.
    async fn churn_for(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let mut spec = self.lab.state.spec.clone();
            let ci = self.rng.below(spec.clusters.len() as u64) as usize;
            let pi = 1 + self.rng.below(4);
            let cluster = spec.clusters[ci].name.clone();
            if let Some(p) = spec.clusters[ci]
                .pods
                .iter_mut()
                .find(|p| p.name == format!("churn-{pi}"))
            {
                p.ready = !p.ready;
            }
            tokio::task::block_in_place(|| self.lab.apply(spec))?;
            if self.faulted {
                *self.churn_during.entry(cluster).or_insert(0) += 1;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    async fn begin_faults(
        &mut self,
        loads: &BTreeMap<String, Workloads>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Instant> {
        for w in loads.values() {
            let at = w.clock.tick();
            w.window.lock().expect("not poisoned").push((at, u64::MAX));
        }
        self.faulted = true;
        let third = self.opts.fault / 3;
        match self.name {
            "partition" | "partition-leader-kill" | "remote-compacted" | "long-disconnect" => {
                tokio::task::block_in_place(|| self.lab.partition("apps", "infra"))?;
                self.note("partition apps infra".to_owned(), progress);
            }
            "degraded" => {
                let d = Degrade {
                    delay_ms: 200,
                    jitter_ms: 50,
                    loss_pct: 5,
                };
                tokio::task::block_in_place(|| self.lab.degrade("apps", "infra", d))?;
                self.note(
                    "degrade apps infra: 200 ms ± 50 ms, 5% loss".to_owned(),
                    progress,
                );
            }
            "isolate-member" => {
                let leader = self.lab.leader("apps")?;
                let t = self.lab.target(&format!("apps/{leader}"))?;
                tokio::task::block_in_place(|| self.lab.isolate(&t))?;
                self.note(
                    format!("isolate apps/{leader} (leader) from its peers"),
                    progress,
                );
                self.isolated = Some(t);
            }
            "agent-kill" => {
                let t = self.lab.target("apps/node-1")?;
                tokio::task::block_in_place(|| self.lab.kill(&t))?;
                self.note("kill -9 apps/node-1 (agent)".to_owned(), progress);
            }
            "hostile-remote" => {
                self.attack = Some(self.begin_attack().await?);
                self.note(
                    format!(
                        "hostile: claims apps' client, an apps node and infra's echo-1 as its nodes, relabels its reserved identities, copies apps/node-1's WireGuard key, floods {} pod addresses, rewrites {} KiB records without pause",
                        hostile::FLOOD,
                        hostile::CHURN_VALUE >> 10
                    ),
                    progress,
                );
            }
            _ => unreachable!("checked in run"),
        }
        let began = Instant::now();
        if self.name == "partition-leader-kill" {
            self.churn_for(third).await?;
            let mut killed = Vec::new();
            for cluster in self.clusters() {
                let leader = self.lab.leader(&cluster)?;
                let t = self.lab.target(&format!("{cluster}/{leader}"))?;
                tokio::task::block_in_place(|| self.lab.kill(&t))?;
                self.note(format!("kill -9 {cluster}/{leader} (leader)"), progress);
                killed.push(t);
            }
            self.churn_for(third).await?;
            for t in killed {
                tokio::task::block_in_place(|| self.lab.start(&t))?;
                self.note(format!("start {}", t.label()), progress);
            }
            self.churn_for(self.opts.fault.saturating_sub(third * 2))
                .await?;
        } else if self.name == "remote-compacted" {
            self.churn_for(third * 2).await?;
            for cluster in self.clusters() {
                let mut c = self.connect(&cluster).client(0).await?;
                let rev = current_revision(&mut c).await?;
                c.compact(
                    rev,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await?;
                self.note(format!("compact {cluster} at revision {rev}"), progress);
            }
            self.churn_for(self.opts.fault.saturating_sub(third * 2))
                .await?;
        } else {
            self.churn_for(self.opts.fault).await?;
        }
        Ok(began)
    }

    async fn end_faults(
        &mut self,
        loads: &BTreeMap<String, Workloads>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(Instant, Instant)> {
        // The faults are judged up to here, before any of them is lifted: what happens while
        // they are being lifted is the heal's.
        let judged_until = Instant::now();
        self.faulted = false;
        for w in loads.values() {
            let at = w.clock.tick();
            if let Some(last) = w.window.lock().expect("not poisoned").last_mut() {
                last.1 = at;
            }
        }
        match self.name {
            "partition"
            | "partition-leader-kill"
            | "remote-compacted"
            | "long-disconnect"
            | "degraded" => {
                tokio::task::block_in_place(|| self.lab.heal("apps", "infra"))?;
                self.note("heal apps infra".to_owned(), progress);
            }
            "isolate-member" => {
                let t = self.isolated.take().context("the isolated member")?;
                tokio::task::block_in_place(|| self.lab.rejoin(&t))?;
                self.note(format!("rejoin {}", t.label()), progress);
            }
            "agent-kill" => {
                let t: Target = self.lab.target("apps/node-1")?;
                tokio::task::block_in_place(|| self.lab.start(&t))?;
                self.note("start apps/node-1 (agent)".to_owned(), progress);
            }
            "hostile-remote" => {
                if let Some(a) = self.attack.as_mut() {
                    a.stop.cancel();
                    a.rewrites = (&mut a.churn).await.unwrap_or(0);
                }
                let n = self.attack.as_ref().map_or(0, |a| a.rewrites);
                self.note(format!("hostile stops ({n} rewrites)"), progress);
            }
            _ => unreachable!("checked in run"),
        }
        Ok((judged_until, Instant::now()))
    }

    /// Starts `hostile-remote`'s attack: gives apps its policy, then reads what apps' agents
    /// and store hold, then attacks.
    async fn begin_attack(&mut self) -> Result<Attack> {
        let mut spec = self.lab.state.spec.clone();
        if let Some(apps) = spec.clusters.iter_mut().find(|c| c.name == "apps") {
            apps.policies.push(hostile::policy());
        }
        tokio::task::block_in_place(|| self.lab.apply(spec))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.apps_agents()?.values().all(|v| !v.policy.0.is_empty()) {
            if Instant::now() > deadline {
                bail!("apps' agents did not enforce the policy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let spec = &self.lab.state.spec;
        let apps = spec.cluster("apps").context("apps")?;
        let infra = spec.cluster("infra").context("infra")?;
        let pod_ip = |c: &lab::spec::ClusterSpec, name: &str| {
            self.lab
                .plan
                .pods(c)
                .into_iter()
                .find(|p| p.spec.name == name)
                .map(|p| p.ip)
                .with_context(|| format!("{}/{name}", c.name))
        };
        let targets = hostile::Targets {
            apps_client: pod_ip(apps, "client")?,
            apps_node: self
                .lab
                .plan
                .nodes(apps)
                .first()
                .context("an apps node")?
                .ip,
            infra_pod: pod_ip(infra, "echo-1")?,
            hostile_nodes: spec
                .cluster(hostile::NAME)
                .map(|h| self.lab.plan.nodes(h).into_iter().map(|n| n.ip).collect())
                .unwrap_or_default(),
        };
        let before = self.apps_agents()?;
        let bytes_before = self.apps_bytes().await;
        let mut apps_client = self.connect("apps").client(0).await?;
        let key = apps_client
            .get("mesh/v1/apps/nodekeys/node-1", None)
            .await?
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .context("apps/node-1 has published no WireGuard key")?;
        let hostile = self.connect(hostile::NAME);
        hostile::attack(&hostile, &targets, key).await?;
        let stop = CancellationToken::new();
        let seen = Arc::new(hostile::Seen::default());
        Ok(Attack {
            targets,
            churn: tokio::spawn(hostile::churn(hostile, stop.clone())),
            status: tokio::spawn(hostile::watch_status(
                self.connect("apps"),
                seen.clone(),
                stop.clone(),
            )),
            stop,
            seen,
            before,
            bytes_before,
            began: Instant::now(),
            rewrites: 0,
        })
    }

    /// apps' agents' maps, by node.
    fn apps_agents(&self) -> Result<BTreeMap<String, hostile::AgentView>> {
        let apps = self.lab.state.spec.cluster("apps").context("apps")?;
        let mut out = BTreeMap::new();
        for n in self.lab.plan.nodes(apps) {
            out.insert(
                n.name.clone(),
                hostile::agent_view(&self.lab.pins("apps", &n.name))?,
            );
        }
        Ok(out)
    }

    /// The size of apps' store (`raftmesh_mvcc_bytes` of its first member).
    async fn apps_bytes(&self) -> Option<f64> {
        let (index, apps) = plan::indexed(&self.lab.state.spec).find(|(_, c)| c.name == "apps")?;
        let m = self.lab.plan.members(index, apps).into_iter().next()?;
        hostile::mvcc_bytes(m.host_ip).await.ok()
    }

    /// `hostile-remote`'s checks, once the faults are over and the honest clusters converged.
    async fn check_attack(&mut self, report: &mut Report) -> Result<()> {
        let Some(attack) = self.attack.take() else {
            return Ok(());
        };
        attack.stop.cancel();
        let _ = attack.status.await;
        let after = self.apps_agents()?;
        let growth = match (attack.bytes_before, self.apps_bytes().await) {
            (Some(b), Some(a)) => Some((
                a - b,
                hostile::allowed_growth(attack.began.elapsed().as_secs_f64()),
            )),
            _ => None,
        };
        let status = tokio::task::block_in_place(|| self.lab.mesh_status("apps"))?;
        let violations = hostile::check(
            &attack.targets,
            &attack.before,
            &after,
            &attack.seen,
            growth,
            &status["keyConflicts"],
        );
        report.violations.insert("hostile".to_owned(), violations);
        report
            .availability
            .entry("apps".to_owned())
            .or_insert(json!({}))["hostile"] = json!({
            "rewrites": attack.rewrites,
            "paused": attack.seen.paused.load(Ordering::Relaxed),
            "rejected_records": attack.seen.rejected.load(Ordering::Relaxed),
            "store_growth_bytes": growth.map(|g| g.0),
            "store_growth_allowed_bytes": growth.map(|g| g.1),
        });
        Ok(())
    }

    /// Each cluster's current revision.
    async fn revisions(&self, loads: &BTreeMap<String, Workloads>) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for (cluster, w) in loads {
            for member in 0..w.connect.endpoints.len() {
                if let Ok(mut c) = w.connect.client(member).await
                    && let Ok(rev) = current_revision(&mut c).await
                {
                    out.insert(cluster.clone(), rev);
                    break;
                }
            }
        }
        out
    }

    /// Waits until mirrors and maps agree; the time from `since` and the last differences.
    async fn converge(&self, since: Instant) -> Result<(Option<f64>, Vec<Value>)> {
        let deadline = since + self.opts.converge_within;
        let stale_ms = lab::spec::parse_duration(&self.lab.state.spec.remote_stale_after)
            .map_or(10_000, |d| d.as_millis() as i64);
        loop {
            let mut diffs: Vec<Value> = Vec::new();
            let mut clients = BTreeMap::new();
            for cluster in self.honest_clusters() {
                match self.connect(&cluster).client(0).await {
                    Ok(c) => {
                        clients.insert(cluster, c);
                    }
                    Err(e) => diffs.push(json!({"cluster": cluster, "unreachable": e.to_string()})),
                }
            }
            if diffs.is_empty() {
                match converge::mirrors(&mut clients).await {
                    Ok(d) => diffs.extend(d.iter().map(|d| json!(d))),
                    Err(e) => diffs.push(json!({"mirrors": e.to_string()})),
                }
                for (cluster, client) in &mut clients {
                    let c = self.lab.state.spec.cluster(cluster).context("cluster")?;
                    let nodes: Vec<String> =
                        self.lab.plan.nodes(c).into_iter().map(|n| n.name).collect();
                    let limits = if self.name == "hostile-remote" {
                        node_agent::desired::Limits {
                            pods: hostile::POD_LIMIT as usize,
                            ..Default::default()
                        }
                    } else {
                        node_agent::desired::Limits::default()
                    };
                    let expected =
                        converge::expected_services(&self.lab.state.spec, &self.lab.plan, cluster);
                    match converge::maps(
                        client,
                        cluster,
                        &nodes,
                        stale_ms,
                        limits,
                        &expected,
                        |n| self.lab.pins(cluster, n),
                    )
                    .await
                    {
                        Ok(d) => diffs.extend(d.iter().map(|d| json!(d))),
                        Err(e) => diffs.push(json!({"maps": cluster, "error": e.to_string()})),
                    }
                }
            }
            if diffs.is_empty() {
                return Ok((Some(since.elapsed().as_secs_f64()), Vec::new()));
            }
            if Instant::now() > deadline {
                return Ok((None, diffs));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes under other clusters' prefixes in `cluster`'s store after revision `from`
    /// (the end of the faults) up to now: what the mirrors wrote to heal. Replayed from the
    /// store's history with a watch.
    async fn resync_writes(&self, cluster: &str, connect: &Connect, from: i64) -> Result<u64> {
        let mut c = connect.client(0).await?;
        let now = current_revision(&mut c).await?;
        let mut writes = 0;
        for other in self.clusters().into_iter().filter(|o| o != cluster) {
            let prefix = mesh_api::keys::cluster_prefix(&other);
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(from + 1);
            let mut stream = c.watch(prefix.as_str(), Some(options)).await?;
            // The history comes first; a second without events means it is all here.
            'replay: while let Ok(Ok(Some(resp))) =
                tokio::time::timeout(Duration::from_secs(1), stream.message()).await
            {
                for e in resp.events() {
                    match e.kv() {
                        Some(kv) if kv.mod_revision() > now => break 'replay,
                        Some(_) => writes += 1,
                        None => {}
                    }
                }
            }
        }
        Ok(writes)
    }

    /// `long-disconnect`: every connection from apps/client to demo/echo begun once infra was
    /// surely stale went to apps' backends; after convergence, infra's answered again.
    ///
    /// Surely stale: the agents call a remote stale when its mirror is disconnected and its
    /// last contact is older than --remote-stale-after. The mirror notices a silent remote
    /// after [`MIRROR_SILENCE`]; the agents look once a second; so from the partition on,
    /// `max(stale-after, silence) + 2 s`.
    fn check_staleness(
        &self,
        answers: &[Answer],
        began: Instant,
        ended: Instant,
        converged: Instant,
        report: &mut Report,
    ) {
        let stale = lab::spec::parse_duration(&self.lab.state.spec.remote_stale_after)
            .unwrap_or(Duration::from_secs(10));
        let from = began + stale.max(MIRROR_SILENCE) + Duration::from_secs(2);
        let (connections, failed, local) = tally(answers, from, ended, "apps");
        let (after_heal, _, remote_after_heal) = tally(answers, converged, Instant::now(), "infra");
        let p = Preference {
            connections,
            failed,
            local,
            after_heal,
            remote_after_heal,
        };
        for problem in p.violations() {
            report
                .violations
                .get_mut("remote-preference")
                .expect("inserted")
                .push(json!({ "problem": problem }));
        }
        report
            .availability
            .entry("apps".to_owned())
            .or_insert(json!({}))["global_while_stale"] = json!(p);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one cluster's records, checked together"
    )]
    fn check_cluster(
        &self,
        cluster: &str,
        history: &KvHistory,
        record: &WatchRecord,
        through: i64,
        found: &BTreeMap<String, lost::Found>,
        prefix: &str,
        windows: &[(u64, u64)],
        report: &mut Report,
    ) {
        let lin = linear::check(&history.ops, linear::Limits::default());
        let watched = watch::Watched {
            name: cluster,
            prefix,
            start: record.start,
            through,
            events: &record.events,
        };
        let wv = watch::check(&watched, &history.writes, &history.maybe);
        let lv = lost::check(prefix, found, &history.writes, &history.maybe);
        let push = |report: &mut Report, checker: &str, v: Value| {
            report
                .violations
                .get_mut(checker)
                .expect("inserted")
                .push(v);
        };
        for v in &lin.violations {
            push(
                report,
                "linearizable",
                json!({"cluster": cluster, "violation": v}),
            );
        }
        for v in &wv {
            push(report, "watch", json!({"cluster": cluster, "violation": v}));
        }
        for v in &lv {
            push(
                report,
                "lost-writes",
                json!({"cluster": cluster, "violation": v}),
            );
        }
        // Availability: local writes made while the clusters were cut apart.
        let (writes_during, failed_during) = available::writes_during(&history.ops, windows);
        let (_, refused_during) = history.served_during(windows);
        // The hostile cluster's own work is its own business (it loads its store itself).
        if self.cuts_clusters() && self.honest(cluster) {
            if failed_during > 0 {
                push(
                    report,
                    "availability",
                    json!({"cluster": cluster, "failed_local_writes": failed_during}),
                );
            }
            if refused_during > 0 {
                push(
                    report,
                    "availability",
                    json!({"cluster": cluster, "failed_local_connects": refused_during}),
                );
            }
        }
        report.availability.insert(
            cluster.to_owned(),
            json!({
                "writes_during_faults": writes_during,
                "writes_failed_during_faults": failed_during,
                "connects_failed_during_faults": refused_during,
            }),
        );
        report.operations.insert(
            cluster.to_owned(),
            json!({
                "kv_answered": history.answered(),
                "kv_unanswered": history.unanswered(),
                "acknowledged_writes": history.writes.len(),
                "acknowledged_deletes": history.writes.iter().filter(|w| w.value.is_none()).count(),
                "acknowledged_leased_puts": history.leased_writes,
                "lease_renewals": history.lease_renewals,
                "connect_failures": history.connect_failures.len(),
                "watch_events": record.events.len(),
                "watch_reconnects": record.reconnects,
                "linearizability_keys": lin.keys,
            }),
        );
    }
}

/// The store's current revision (a count-only read).
async fn current_revision(c: &mut etcd_client::Client) -> Result<i64, etcd_client::Error> {
    let r = c
        .get(
            "mesh/",
            Some(etcd_client::GetOptions::new().with_count_only()),
        )
        .await?;
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// The final state of `prefix` (the revision read at, and each key), once the watcher had the
/// chance to catch up.
async fn read_final(
    connect: &Connect,
    prefix: &str,
) -> Result<(i64, BTreeMap<String, lost::Found>)> {
    let mut last = None;
    for member in 0..connect.endpoints.len() {
        let attempt = async {
            let mut c = connect.client(member).await?;
            Ok::<_, crate::workload::WorkloadError>(kv::read_all(&mut c, prefix).await?)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok((rev, kvs))) => {
                let found = kvs
                    .into_iter()
                    .map(|(k, value, mod_revision)| {
                        (
                            k,
                            lost::Found {
                                value,
                                mod_revision,
                            },
                        )
                    })
                    .collect();
                return Ok((rev, found));
            }
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("no answer".to_owned()),
        }
    }
    bail!(
        "no member answered the final read: {}",
        last.unwrap_or_default()
    )
}

#[cfg(test)]
mod tests;
