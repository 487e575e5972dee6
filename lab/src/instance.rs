//! A lab that outlives the command that made it: `meshctl lab up` builds it and exits, later
//! commands find it by name, `meshctl lab down` removes it.
//!
//! A lab is a directory (`$RAFTMESH_LAB_DIR/<name>`, default `/var/lib/raftmesh/labs/<name>`)
//! holding `lab.json` ([`State`]: the spec, the slot, the binaries, the faults in force), the
//! PKI, the manifests, the members' data, the agents' state and every process's log. All else
//! (names, addresses, commands) derives from the spec and the slot ([`crate::plan`]), so the
//! state is written once, before anything is built, and a lab that crashed half-way is still
//! removed whole by `down`, which sweeps by the lab's tag rather than trusting a list.
//!
//! Processes are found through their cgroups: every process of the lab runs in its own cgroup
//! under the lab's (`raftmesh-lab-rl<s>/<cluster>/<member>`, `…/<node>/agent`,
//! `…/<node>/pods/<pod>`), so `kill`, `freeze` and `status` need no pid files and `down` kills
//! them all at once (`cgroup.kill`). An agent's cgroup root is its node's `pods` cgroup: socket
//! load balancing applies to the pods' processes, as it does on a Kubernetes node.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::binaries::Binaries;
use crate::faults::{Degrade, Faults};
use crate::plan::{
    self, CLIENT_PORT, ECHO_PORT, PEER_PORT, PROBE_PORT, Plan, PodPlan, WG_PORT, indexed,
};
use crate::spec::{ClusterSpec, LabSpec};

mod access;
mod network;
mod partitions;
mod processes;
mod up;

use self::processes::{kill_cgroup, remove_cgroups};

/// Environment variable naming the directory labs live in.
pub const LAB_DIR_ENV: &str = "RAFTMESH_LAB_DIR";
/// The lab state file in a lab's directory.
const STATE_FILE: &str = "lab.json";
/// Where every API-server member serves `/metrics` (plain HTTP, on all its addresses: from the
/// host, `http://<member's host address>:9979/metrics`).
pub const APISERVER_METRICS_PORT: u16 = 9979;
/// The lock held while a slot is chosen and claimed.
const LOCK: &str = "/run/raftmesh-lab.lock";
/// How long `up` waits for each stage.
const PATIENCE: Duration = Duration::from_secs(90);
/// The table of the fabric's watch counters.
const WATCH_TABLE: &str = "raftmesh_lab_watch";

/// Input the lab refuses (exit 64 in meshctl); nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(msg: impl Into<String>) -> anyhow::Error {
    Refused(msg.into()).into()
}

/// Where labs live: `$RAFTMESH_LAB_DIR`, else `/var/lib/raftmesh/labs`.
pub fn base_dir() -> PathBuf {
    std::env::var_os(LAB_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/lib/raftmesh/labs"), PathBuf::from)
}

/// What a lab is, as recorded in `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The lab's name.
    pub name: String,
    /// Its slot (see [`crate::plan`]).
    pub slot: u16,
    /// What it is made of.
    pub spec: LabSpec,
    /// The programs it runs.
    pub bins: Binaries,
    /// The meshctl config file its contexts are in.
    pub config: PathBuf,
    /// The cgroup2 mount.
    pub cgroup_root: PathBuf,
    /// When `up` started (Unix seconds).
    pub created: u64,
    /// The faults in force.
    #[serde(default)]
    pub faults: Faults,
}

/// What `up` needs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The directory labs live in.
    pub base: PathBuf,
    /// The lab's name.
    pub name: String,
    /// What to build.
    pub spec: LabSpec,
    /// The programs.
    pub bins: Binaries,
    /// The meshctl config file to write the contexts into.
    pub config: PathBuf,
}

/// A process of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An API-server member.
    Member { cluster: String, member: String },
    /// A node's agent.
    Node { cluster: String, node: String },
    /// A pod's workload.
    Pod { cluster: String, pod: String },
    /// The fabric's delay stage (runs while a pair is delayed).
    Delay,
}

impl Target {
    /// `cluster/name`.
    pub fn label(&self) -> String {
        match self {
            Target::Member { cluster, member: n }
            | Target::Node { cluster, node: n }
            | Target::Pod { cluster, pod: n } => format!("{cluster}/{n}"),
            Target::Delay => "fabric/delay".to_owned(),
        }
    }

    /// The program's name as /proc/<pid>/comm shows it.
    fn program(&self) -> &'static str {
        match self {
            Target::Member { .. } => "mesh-apiserver",
            Target::Node { .. } => "node-agent",
            Target::Pod { .. } => "mesh-echo",
            Target::Delay => "mesh-delay",
        }
    }
}

/// How a process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Run {
    /// Running.
    Running,
    /// Stopped by SIGSTOP.
    Frozen,
    /// Not running.
    Stopped,
}

/// What `apply` must leave as it is of a cluster: name, id, members, nodes, and each pod's
/// name and node.
type Shape = (
    String,
    u8,
    crate::flavor::Flavor,
    u8,
    u8,
    Vec<(String, Option<String>)>,
);

/// A lab on this host.
#[derive(Debug)]
pub struct Lab {
    /// Its directory.
    pub dir: PathBuf,
    /// What it is.
    pub state: State,
    /// Where things are.
    pub plan: Plan,
}

/// Runs `program args`, failing with its output.
fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}{}",
            describe(cmd),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    sh(Command::new("ip").arg("-n").arg(ns).args(args))
}

fn in_netns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    crate::netns::command_in(ns, program)
}

fn nft(ns: &str, script: &str) -> Result<()> {
    feed(in_netns(ns, "nft").args(["-f", "-"]), "nft", script)
}

/// `iptables-restore --noflush` of `script` in namespace `ns`.
fn restore(ns: &str, script: &str) -> Result<()> {
    feed(
        in_netns(ns, "iptables-restore").args(["-w", "--noflush"]),
        "iptables-restore",
        script,
    )
}

/// Runs `cmd` with `script` on its stdin, failing with its stderr.
fn feed(cmd: &mut Command, what: &str, script: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| what.to_owned())?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Waits until `f` returns `Some`, or fails naming `what`.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    wait_or_fail(what, || Ok(f()))
}

/// Waits until `f` returns `Some` or fails (at once, with its error), or fails naming `what`.
fn wait_or_fail<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", PATIENCE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the prefixes `a` and `b` share an address.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// The host's IPv4 routes (every table, default routes left out) and addresses.
fn host_prefixes() -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    let routes: Value = serde_json::from_str(&ip(&["-4", "-j", "route", "show", "table", "all"])?)?;
    for r in routes.as_array().into_iter().flatten() {
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
        if let (Ok(a), Ok(l)) = (addr.parse(), len.parse()) {
            out.push((a, l));
        }
    }
    let addrs: Value = serde_json::from_str(&ip(&["-4", "-j", "addr"])?)?;
    for link in addrs.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64())
                && let Ok(addr) = local.parse()
            {
                out.push((addr, len as u8));
            }
        }
    }
    Ok(out)
}

/// Whether slot `slot` is free: nothing of a lab with its tag exists, and its host range
/// overlaps no route or address of the host.
fn slot_free(slot: u16, host: &[(Ipv4Addr, u8)], cgroup_root: &Path) -> bool {
    let plan = Plan::new(slot);
    !Path::new("/run/netns").join(plan.fabric_netns()).exists()
        && !Path::new("/sys/class/net").join(plan.host_if()).exists()
        && !plan.cgroup(cgroup_root).exists()
        && !plan.pins().exists()
        && !host.iter().any(|p| overlaps(*p, plan.host_range()))
}

impl Lab {
    /// The lab named `name` in `base`, if there is one.
    pub fn open(base: &Path, name: &str) -> Result<Option<Lab>> {
        let dir = base.join(name);
        let text = match std::fs::read_to_string(dir.join(STATE_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context(format!("reading {}", dir.join(STATE_FILE).display())),
        };
        let state: State = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a lab state file", dir.join(STATE_FILE).display())
        })?;
        let plan = Plan::new(state.slot);
        Ok(Some(Lab { dir, state, plan }))
    }

    /// The lab named `name`, or a refusal saying there is none.
    pub fn find(base: &Path, name: &str) -> Result<Lab> {
        Lab::open(base, name)?.ok_or_else(|| {
            refused(format!(
                "no lab named {name:?} in {} (`meshctl lab up` makes one)",
                base.display()
            ))
        })
    }

    fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The index of cluster `name` in the spec.
    fn index(&self, name: &str) -> usize {
        self.state
            .spec
            .clusters
            .iter()
            .position(|c| c.name == name)
            .expect("a cluster of the spec")
    }

    fn cluster(&self, name: &str) -> Result<&ClusterSpec> {
        self.state.spec.cluster(name).ok_or_else(|| {
            refused(format!(
                "no cluster {name:?} in lab {:?} (it has {})",
                self.state.name,
                self.state
                    .spec
                    .clusters
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Nodes of every other cluster: the WireGuard peers each of `cluster`'s nodes has.
    fn remote_nodes(&self, cluster: &str) -> usize {
        self.state
            .spec
            .clusters
            .iter()
            .filter(|c| c.name != cluster)
            .map(|c| usize::from(c.nodes))
            .sum()
    }

    /// Applies a changed spec: pods' labels and readiness, services and policies. The
    /// clusters, members, nodes and pods (names and nodes) must stay as they are.
    pub fn apply(&mut self, spec: LabSpec) -> Result<()> {
        let shape = |s: &LabSpec| -> Vec<Shape> {
            s.clusters
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        c.id,
                        c.flavor,
                        c.members,
                        c.nodes,
                        c.pods
                            .iter()
                            .map(|p| (p.name.clone(), p.node.clone()))
                            .collect(),
                    )
                })
                .collect()
        };
        if shape(&spec) != shape(&self.state.spec) {
            return Err(refused(
                "apply changes labels, readiness, services and policies only: clusters (and their flavors), members, nodes and pods (names and nodes) must stay as they are",
            ));
        }
        if spec.remote_stale_after != self.state.spec.remote_stale_after {
            return Err(refused("remoteStaleAfter takes effect at `lab up` only"));
        }
        self.state.spec = spec;
        self.save()?;
        for c in &self.state.spec.clusters {
            self.write_manifests(c)?;
        }
        Ok(())
    }

    /// Stops and removes everything of the lab: processes, WireGuard interfaces and their
    /// sockets, pins, namespaces, the host link, cgroups, its contexts and its directory.
    /// Every step runs even if one fails; the errors are returned together.
    pub fn down(self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let mut errors = Vec::new();
        let tag = self.plan.tag();
        let cgroup = self.cgroup();
        let killed = kill_cgroup(&cgroup);
        match killed {
            Ok(n) => progress(&format!("stopped {n} processes")),
            Err(e) => errors.push(format!("processes: {e:#}")),
        }
        // The agents' programs detach with their pinned links; the node agent knows its pins.
        let mut pins = 0;
        for c in &self.state.spec.clusters {
            for n in self.plan.nodes(c) {
                let dir = self.pins(&c.name, &n.name);
                if dir.exists() {
                    pins += 1;
                    // In the node's namespace, as on a node: its tc filters, rules and
                    // masquerade exemption are there.
                    let _ = in_netns(&n.netns, &self.state.bins.node_agent)
                        .args(["--uninstall", "--wg-backend", "none", "--bpffs"])
                        .arg(&dir)
                        .output();
                }
            }
        }
        if self.plan.pins().exists()
            && let Err(e) = std::fs::remove_dir_all(self.plan.pins())
        {
            errors.push(format!("pins {}: {e}", self.plan.pins().display()));
        }
        progress(&format!("removed the pins of {pins} agents"));
        let mut netns = 0;
        for entry in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{tag}-")) {
                match ip(&["netns", "del", &name]) {
                    Ok(_) => netns += 1,
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        // Pods' resolv.conf (a namespace already gone leaves its directory too).
        for entry in std::fs::read_dir("/etc/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{tag}-"))
                && let Err(e) = std::fs::remove_dir_all(entry.path())
            {
                errors.push(format!("{}: {e}", entry.path().display()));
            }
        }
        // The host link is a veth whose other end was in the fabric's namespace: deleting
        // that namespace deletes it too, but a moment later. Gone either way is what counts.
        let host_link = Path::new("/sys/class/net").join(self.plan.host_if());
        if host_link.exists()
            && let Err(e) = ip(&["link", "del", &self.plan.host_if()])
            && host_link.exists()
        {
            errors.push(format!("{e:#}"));
        }
        progress(&format!("deleted {netns} namespaces and the host link"));
        for entry in std::fs::read_dir("/var/run/wireguard")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{tag}c")) && name.ends_with(".sock") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if let Err(e) = remove_cgroups(&cgroup) {
            errors.push(format!("cgroups: {e:#}"));
        }
        let mut contexts = Vec::new();
        for c in &self.state.spec.clusters {
            if self.owns_context(&c.name) {
                match self.meshctl(&["config", "delete-context", &c.name]) {
                    Ok(_) => contexts.push(c.name.clone()),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        if !contexts.is_empty() {
            progress(&format!("deleted contexts {}", contexts.join(", ")));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            errors.push(format!("{}: {e}", self.dir.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("lab down left things behind: {}", errors.join("; "))
        }
    }

    /// Whether context `name` in the lab's config file is this lab's (its PKI directory is
    /// in the lab's directory).
    fn owns_context(&self, name: &str) -> bool {
        let Ok(out) = self.meshctl(&["config", "get-contexts", "-o", "json"]) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<Value>(&out) else {
            return false;
        };
        let pki = self.pki_dir(name);
        v.as_array().into_iter().flatten().any(|c| {
            c["name"] == name && c["pkiDir"].as_str().map(Path::new) == Some(pki.as_path())
        })
    }

    /// Everything about the lab, for `meshctl lab status`.
    pub fn status(&self) -> Value {
        let mut clusters = Vec::new();
        for (i, c) in indexed(&self.state.spec) {
            let run = |t: Target| {
                let pids = self.pids(&t);
                json!({"state": self.run_state(&t), "pid": pids.first()})
            };
            let members: Vec<Value> = self
                .plan
                .members(i, c)
                .into_iter()
                .map(|m| {
                    let mut v = json!({
                        "name": m.name, "ip": m.ip.to_string(), "hostIP": m.host_ip.to_string(),
                        "netns": m.netns,
                    });
                    v["process"] = run(Target::Member {
                        cluster: c.name.clone(),
                        member: m.name,
                    });
                    v
                })
                .collect();
            let nodes: Vec<Value> = self
                .plan
                .nodes(c)
                .into_iter()
                .map(|n| {
                    let mut v = json!({
                        "name": n.name, "ip": n.ip.to_string(),
                        "podCIDR": c.flavor.node_pod_cidr().then(|| format!("{}/24", n.pod_net)),
                        "netns": n.netns, "wireguard": n.wg_if, "wgPeers": self.wg_peer_count(&n.wg_if),
                    });
                    v["agent"] = run(Target::Node { cluster: c.name.clone(), node: n.name });
                    v
                })
                .collect();
            let pods: Vec<Value> = self
                .plan
                .pods(c)
                .into_iter()
                .map(|p| {
                    let mut v = json!({
                        "name": p.spec.name, "namespace": p.spec.namespace, "node": p.node,
                        "ip": p.ip.to_string(), "labels": p.spec.labels, "ready": p.spec.ready,
                        "netns": p.netns, "interface": p.host_if,
                    });
                    v["process"] = run(Target::Pod {
                        cluster: c.name.clone(),
                        pod: p.spec.name,
                    });
                    v
                })
                .collect();
            let services: Vec<Value> = c
                .services
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    json!({
                        "name": format!("{}/{}", s.namespace, s.name), "vip": Plan::vip(c, j).to_string(),
                        "ports": s.ports.iter().map(|p| format!("{}/{}", p.port, p.protocol)).collect::<Vec<_>>(),
                        "global": s.global, "affinity": s.affinity, "shared": s.shared,
                    })
                })
                .collect();
            let mesh = match self.mesh_status(&c.name) {
                Ok(s) => json!({"remotes": s["remotes"]}),
                Err(e) => json!({"error": format!("{e:#}")}),
            };
            clusters.push(json!({
                "name": c.name, "id": c.id, "flavor": c.flavor.name(), "context": c.name,
                "manifests": self.manifests_dir(&c.name), "pki": self.pki_dir(&c.name),
                "members": members, "nodes": nodes, "pods": pods, "services": services,
                "mesh": mesh,
            }));
        }
        json!({
            "name": self.state.name,
            "slot": self.state.slot,
            "dir": self.dir,
            "created": self.state.created,
            "hostLink": {"interface": self.plan.host_if(), "hostIP": self.plan.host_ip().to_string(),
                         "routes": format!("{}/24", self.plan.host_range().0)},
            "config": self.state.config,
            "cgroup": self.cgroup(),
            "pins": self.plan.pins(),
            "faults": self.state.faults,
            "delayStage": self.run_state(&Target::Delay),
            "clusters": clusters,
        })
    }
}

/// The environment variable of meshctl's config file.
pub const CONFIG_ENV: &str = "RAFTMESH_CONFIG";

#[cfg(test)]
mod tests;
