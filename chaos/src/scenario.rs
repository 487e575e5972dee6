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
use lab::binaries::Binaries;
use lab::faults::Degrade;
use lab::instance::{Lab, Target, UpOptions};
use lab::plan::{self, Plan};
use lab::spec::{LabSpec, PodSpec, PortSpec, ServiceSpec};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::check::available::{self, Answer, Failover, Preference, tally};
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
        "node-down",
        "infra/node-1 (an echo backend of the global demo/echo) unplugged from the network for the fault time while its cluster's records still call its pods ready, KV load and churn on both sides; apps' connections to demo/echo must stop failing within 1.5 s",
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

mod attack;
pub mod hostile;
mod judge;
mod probe;
mod timeline;

use self::attack::Attack;

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
    /// More flags for every node agent.
    pub agent_args: Vec<String>,
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
    spec.remote_stale_after = stale_after;
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
            exported: false,
            headless: false,
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
            exported: false,
            headless: false,
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
        spec.agent_args.extend(opts.agent_args.iter().cloned());
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
            // With RAFTMESH_KEEP_LOGS, every process's log outlives the lab.
            if std::env::var_os("RAFTMESH_KEEP_LOGS").is_some() {
                let kept = std::env::temp_dir().join(format!("{}-logs", lab.state.name));
                let copied = std::process::Command::new("cp")
                    .arg("-r")
                    .arg(lab.dir.join("logs"))
                    .arg(&kept)
                    .status();
                if copied.is_ok_and(|s| s.success()) {
                    eprintln!("logs kept in {}", kept.display());
                }
            }
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
            "failover",
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
            let mut activity = available::Activity::new(
                kv_served.get(&cluster).copied().unwrap_or(0),
                all,
                fault_ended.saturating_duration_since(fault_began),
            );
            if self.name == "node-down" && timeline::unplugged_cluster() == cluster {
                // Its client's local connections go to the unplugged node half the time and
                // wait out their timeout: the fault itself, inside the cluster (its own
                // Kubernetes' to notice), and neither judged nor required.
                activity.connections_minimum = 0;
            }
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
        if matches!(self.name, "partition" | "node-down") {
            // apps' connections to demo/echo, whose backends are in both clusters: the ones
            // on the far side of the fault fail until the agents stop choosing them.
            let f = Failover::of(&answers, fault_began, fault_ended);
            for problem in f.violations() {
                report
                    .violations
                    .get_mut("failover")
                    .expect("inserted")
                    .push(json!({"cluster": "apps", "problem": problem}));
            }
            report
                .availability
                .entry("apps".to_owned())
                .or_insert(json!({}))["failover"] = json!(f);
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
