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

use crate::faults::{Degrade, Faults};
use crate::mesh::Binaries;
use crate::plan::{self, CLIENT_PORT, ECHO_PORT, PEER_PORT, Plan, PodPlan, WG_PORT, indexed};
use crate::spec::{ClusterSpec, LabSpec, parse_duration};

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
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
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

    /// Builds and starts the lab, connects its clusters and checks a global service answers
    /// from every cluster. A lab of that name must not exist; if `up` fails part-way, what it
    /// built stays for the logs and `down` removes it.
    pub fn up(opts: UpOptions, progress: &mut dyn FnMut(&str)) -> Result<Lab> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(refused(
                "the lab needs root (network namespaces, cgroups, eBPF)",
            ));
        }
        if !crate::spec::dns_label(&opts.name) {
            return Err(refused(format!(
                "lab name {:?} is not a DNS label",
                opts.name
            )));
        }
        if let Some(lab) = Lab::open(&opts.base, &opts.name)? {
            let running = lab
                .targets()
                .iter()
                .any(|t| lab.run_state(t) != Run::Stopped);
            return Err(refused(if running {
                format!(
                    "lab {:?} is already running (slot {}, {}); `meshctl lab down --name {}` first",
                    opts.name,
                    lab.state.slot,
                    lab.dir.display(),
                    opts.name
                )
            } else {
                format!(
                    "lab {:?} exists but nothing of it runs (it crashed or was half built); `meshctl lab down --name {}` cleans it up",
                    opts.name, opts.name
                )
            }));
        }
        crate::ensure_bpffs()?;
        let cgroup_root = crate::cgroup2_root()?;
        let dir = opts.base.join(&opts.name);
        let lab = {
            // One lab at a time chooses and claims a slot: the state file (with the slot) and
            // the fabric namespace exist before the lock is released.
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(LOCK)
                .context(LOCK)?;
            let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow!("locking {LOCK}: {e}"))?;
            let host = host_prefixes()?;
            let slot = (0..plan::SLOTS)
                .find(|s| slot_free(*s, &host, &cgroup_root))
                .ok_or_else(|| anyhow!("no free lab slot in 198.18.0.0/15"))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let lab = Lab {
                dir,
                plan: Plan::new(slot),
                state: State {
                    name: opts.name.clone(),
                    slot,
                    spec: opts.spec,
                    bins: opts.bins,
                    config: opts.config,
                    cgroup_root,
                    created: unix_now(),
                    faults: Faults::default(),
                },
            };
            lab.save()?;
            ip(&["netns", "add", &lab.plan.fabric_netns()])?;
            lab
        };
        progress(&format!(
            "lab {:?}: slot {} (host range {}/24), files in {}",
            lab.state.name,
            lab.state.slot,
            lab.plan.host_range().0,
            lab.dir.display()
        ));
        lab.build_network()?;
        progress(&format!(
            "network: fabric, host link {} {}, {} cluster networks",
            lab.plan.host_if(),
            lab.plan.host_ip(),
            lab.state.spec.clusters.len()
        ));
        lab.build_cgroups()?;
        for (i, c) in indexed(&lab.state.spec) {
            lab.make_pki(i, c)?;
            lab.write_manifests(c)?;
        }
        progress("PKI, contexts and manifests written");
        for c in &lab.state.spec.clusters {
            for m in lab.plan.members(lab.index(&c.name), c) {
                lab.start(&Target::Member {
                    cluster: c.name.clone(),
                    member: m.name,
                })?;
            }
        }
        for c in &lab.state.spec.clusters {
            let status = wait_or_fail(&format!("{}'s members to elect a leader", c.name), || {
                for m in lab.plan.members(lab.index(&c.name), c) {
                    lab.still_running(&Target::Member {
                        cluster: c.name.clone(),
                        member: m.name,
                    })?;
                }
                Ok(lab.mesh_status(&c.name).ok().filter(|s| {
                    let members = s["members"].as_array().map_or(0, Vec::len);
                    members == usize::from(c.members)
                        && s["members"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .all(|m| m["healthy"] == true)
                }))
            })?;
            let leader = status["members"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["leader"] == true)
                .and_then(|m| m["name"].as_str())
                .unwrap_or("?")
                .to_owned();
            // connect reads the cluster record the leader's publisher writes.
            let key = format!("mesh/v1/{}/cluster", c.name);
            wait_for(&format!("{}'s cluster record {key}", c.name), || {
                lab.meshctl(&["get", &key, "--context", &c.name, "-o", "json"])
                    .ok()
                    .filter(|out| out.contains(&key))
            })?;
            progress(&format!(
                "{}: {} members up, leader {leader}, cluster record published",
                c.name, c.members
            ));
        }
        let names: Vec<String> = lab
            .state
            .spec
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                lab.meshctl(&["connect", "--context", a, "--destination", b, "--wait"])?;
                progress(&format!("connected {a} and {b} (meshctl connect)"));
            }
        }
        for t in lab.targets() {
            if matches!(t, Target::Pod { .. }) {
                lab.start(&t)?;
            }
        }
        for t in lab.targets() {
            if matches!(t, Target::Node { .. }) {
                lab.start(&t)?;
            }
        }
        for c in &lab.state.spec.clusters {
            for n in lab.plan.nodes(c) {
                let want = lab.remote_nodes(&c.name);
                let agent = Target::Node {
                    cluster: c.name.clone(),
                    node: n.name.clone(),
                };
                wait_or_fail(&format!("{}/{}'s WireGuard peers", c.name, n.name), || {
                    lab.still_running(&agent)?;
                    Ok((lab.wg_peer_count(&n.wg_if) == Some(want)).then_some(()))
                })?;
            }
        }
        let pods: usize = lab.state.spec.clusters.iter().map(|c| c.pods.len()).sum();
        progress(&format!(
            "agents up, WireGuard full mesh between clusters; {pods} pods serving"
        ));
        for (cluster, pod, vip, service) in lab.probes() {
            let want = lab.answering_clusters(&service);
            let got = wait_for(
                &format!("{service} answering {cluster}/{pod} from {want:?}"),
                || {
                    let got = lab.answers(&cluster, &pod, vip, 20);
                    want.iter().all(|c| got.contains_key(c)).then_some(got)
                },
            )?;
            progress(&format!(
                "{cluster}/{pod} → {service} ({vip}): 20 connections answered by {}",
                got.iter()
                    .map(|(c, n)| format!("{c} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(lab)
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

    fn build_network(&self) -> Result<()> {
        let p = &self.plan;
        let fabric = p.fabric_netns();
        router(&fabric)?;
        ip_in(&fabric, &["link", "set", "lo", "up"])?;
        // The host link: meshctl on the host reaches the members' host addresses.
        ip(&[
            "link",
            "add",
            &p.host_if(),
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            &fabric,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", p.host_ip()),
            "dev",
            &p.host_if(),
        ])?;
        ip(&["link", "set", &p.host_if(), "up"])?;
        ip_in(
            &fabric,
            &[
                "addr",
                "add",
                &format!("{}/30", p.fabric_host_ip()),
                "dev",
                "host",
            ],
        )?;
        ip_in(&fabric, &["link", "set", "host", "up"])?;
        let (range, len) = p.host_range();
        ip(&[
            "route",
            "add",
            &format!("{range}/{len}"),
            "via",
            &p.fabric_host_ip().to_string(),
            "dev",
            &p.host_if(),
        ])?;
        for (i, c) in indexed(&self.state.spec) {
            let k = c.id;
            let bridge = format!("c{k}");
            let gateway = format!("192.168.{k}.254");
            ip_in(&fabric, &["link", "add", &bridge, "type", "bridge"])?;
            ip_in(
                &fabric,
                &["addr", "add", &format!("{gateway}/24"), "dev", &bridge],
            )?;
            ip_in(&fabric, &["link", "set", &bridge, "up"])?;
            for m in p.members(i, c) {
                new_netns(&m.netns)?;
                veth(
                    &fabric,
                    &m.fabric_if,
                    Some(&bridge),
                    &m.netns,
                    &format!("{}/24", m.ip),
                    &gateway,
                )?;
                ip_in(
                    &m.netns,
                    &["addr", "add", &format!("{}/32", m.host_ip), "dev", "eth0"],
                )?;
                ip_in(
                    &fabric,
                    &[
                        "route",
                        "add",
                        &format!("{}/32", m.host_ip),
                        "via",
                        &m.ip.to_string(),
                    ],
                )?;
            }
            for n in p.nodes(c) {
                new_netns(&n.netns)?;
                veth(
                    &fabric,
                    &n.fabric_if,
                    Some(&bridge),
                    &n.netns,
                    &format!("{}/24", n.ip),
                    &gateway,
                )?;
                router(&n.netns)?;
                if let Some(bridge) = c.flavor.bridge() {
                    let gw = Ipv4Addr::from(u32::from(n.pod_net) + 1);
                    ip_in(&n.netns, &["link", "add", bridge, "type", "bridge"])?;
                    ip_in(
                        &n.netns,
                        &["addr", "add", &format!("{gw}/24"), "dev", bridge],
                    )?;
                    ip_in(&n.netns, &["link", "set", bridge, "up"])?;
                }
                if c.flavor == crate::flavor::Flavor::Eks {
                    // The secondary ENI's table: its default route leaves the node (here
                    // through the node's only uplink), outside any route the agent adds.
                    ip_in(
                        &n.netns,
                        &[
                            "route",
                            "add",
                            "default",
                            "via",
                            &gateway,
                            "dev",
                            "eth0",
                            "table",
                            &crate::flavor::ENI_TABLE.to_string(),
                        ],
                    )?;
                }
                let vpc = [format!("192.168.{k}.0/24"), Plan::pod_range(c)];
                if let Some((program, script)) = c.flavor.masquerade(
                    &format!("{}/24", n.pod_net),
                    &Plan::pod_range(c),
                    &vpc,
                    &n.ip.to_string(),
                ) {
                    match program {
                        "nft" => nft(&n.netns, &script)?,
                        _ => restore(&n.netns, &script)?,
                    }
                }
                ip_in(
                    &fabric,
                    &[
                        "route",
                        "add",
                        &format!("{}/24", n.pod_net),
                        "via",
                        &n.ip.to_string(),
                    ],
                )?;
            }
            for pod in p.pods(c) {
                let node = p
                    .nodes(c)
                    .into_iter()
                    .find(|n| n.name == pod.node)
                    .expect("validated node");
                new_netns(&pod.netns)?;
                match c.flavor.bridge() {
                    Some(bridge) => {
                        let gw = Ipv4Addr::from(u32::from(node.pod_net) + 1);
                        veth(
                            &node.netns,
                            &pod.host_if,
                            Some(bridge),
                            &pod.netns,
                            &format!("{}/24", pod.ip),
                            &gw.to_string(),
                        )?;
                    }
                    None => eni_pod(&node.netns, &pod, c.flavor.secondary_eni(pod.slot))?,
                }
            }
        }
        nft(&fabric, &self.watch_ruleset())?;
        self.apply_faults(&[])?;
        Ok(())
    }

    /// Counters of traffic between clusters at the fabric, by pair: WireGuard (UDP to the
    /// WireGuard port between node addresses) and pod traffic in the clear.
    fn watch_ruleset(&self) -> String {
        let spec = &self.state.spec;
        let mut out = format!("table ip {WATCH_TABLE} {{\n");
        for c in &spec.clusters {
            out.push_str(&format!(
                "\tset nodes_{k} {{ type ipv4_addr; flags interval; elements = {{ 192.168.{k}.0/24 }}; }}\n\
                 \tset pods_{k} {{ type ipv4_addr; flags interval; elements = {{ 10.{k}.0.0/16 }}; }}\n",
                k = c.id
            ));
        }
        out.push_str(
            "\tchain forward {\n\t\ttype filter hook forward priority -20; policy accept;\n",
        );
        for a in &spec.clusters {
            for b in spec.clusters.iter().filter(|b| b.name != a.name) {
                let (x, y) = (a.id, b.id);
                out.push_str(&format!(
                    "\t\tip saddr @nodes_{x} ip daddr @nodes_{y} udp dport {WG_PORT} counter comment \"tunnel {} {}\"\n\
                     \t\tip saddr @pods_{x} ip daddr @pods_{y} counter comment \"clear {} {}\"\n",
                    a.name, b.name, a.name, b.name
                ));
            }
        }
        out.push_str("\t}\n}\n");
        out
    }

    /// Enforces the recorded faults: the fabric's rules, isolated members' tables, and the
    /// delay stage (restarted with the new delays; packets pass undelayed for the few
    /// milliseconds it is away).
    /// `was_isolated`: the members isolated before this change; only they and the members
    /// isolated now have their namespace's table rewritten.
    fn apply_faults(&self, was_isolated: &[String]) -> Result<()> {
        let fabric = self.plan.fabric_netns();
        nft(
            &fabric,
            &self.state.faults.ruleset(&self.plan, &self.state.spec),
        )?;
        restore(
            &fabric,
            &self.state.faults.delay_rules(&self.plan, &self.state.spec),
        )?;
        let jump = ["-w", "-C", "FORWARD", "-j", crate::faults::DELAY_CHAIN];
        if sh(in_netns(&fabric, "iptables").args(jump)).is_err() {
            sh(in_netns(&fabric, "iptables").args([
                "-w",
                "-A",
                "FORWARD",
                "-j",
                crate::faults::DELAY_CHAIN,
            ]))?;
        }
        for (i, c) in plan::indexed(&self.state.spec) {
            let members = self.plan.members(i, c);
            for m in &members {
                let label = format!("{}/{}", c.name, m.name);
                let isolated = self.state.faults.isolated.contains(&label);
                if !isolated && !was_isolated.contains(&label) {
                    continue;
                }
                let peers: Vec<Ipv4Addr> = members
                    .iter()
                    .filter(|p| p.name != m.name)
                    .flat_map(|p| [p.ip, p.host_ip])
                    .collect();
                nft(
                    &m.netns,
                    &crate::faults::isolation_ruleset(isolated, &peers),
                )?;
            }
        }
        if self.run_state(&Target::Delay) != Run::Stopped {
            self.kill(&Target::Delay)?;
        }
        if self.state.faults.delays() {
            std::fs::create_dir_all(self.cgroup_of(&Target::Delay))?;
            self.start(&Target::Delay)?;
        }
        Ok(())
    }

    fn cgroup(&self) -> PathBuf {
        self.plan.cgroup(&self.state.cgroup_root)
    }

    /// The cgroup a target's process runs in.
    fn cgroup_of(&self, t: &Target) -> PathBuf {
        let root = self.cgroup();
        let flavor = |cluster: &str| {
            self.state
                .spec
                .cluster(cluster)
                .expect("a cluster of the spec")
                .flavor
        };
        match t {
            Target::Member { cluster, member } => root.join(cluster).join(member),
            Target::Node { cluster, node } => {
                flavor(cluster).agent_cgroup(&root.join(cluster).join(node))
            }
            Target::Pod { cluster, pod } => {
                let c = self
                    .state
                    .spec
                    .cluster(cluster)
                    .expect("a cluster of the spec");
                let node = c
                    .pods
                    .iter()
                    .find(|p| p.name == *pod)
                    .and_then(|p| p.node.clone())
                    .expect("a pod of the spec");
                c.flavor.pod_cgroup(&root.join(cluster).join(node), pod)
            }
            Target::Delay => root.join("fabric-delay"),
        }
    }

    /// The cgroup root of `cluster`'s agent on `node`.
    fn agent_cgroup_root(&self, c: &ClusterSpec, node: &str) -> PathBuf {
        c.flavor
            .agent_cgroup_root(&self.cgroup().join(&c.name).join(node))
    }

    fn build_cgroups(&self) -> Result<()> {
        // Every node's agent cgroup root, also of a node without pods.
        let pods = self.state.spec.clusters.iter().flat_map(|c| {
            c.node_names()
                .map(|n| self.agent_cgroup_root(c, &n))
                .collect::<Vec<_>>()
        });
        for dir in self.targets().iter().map(|t| self.cgroup_of(t)).chain(pods) {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        Ok(())
    }

    /// Every process of the lab: members, agents, pods.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for (i, c) in indexed(&self.state.spec) {
            for m in self.plan.members(i, c) {
                out.push(Target::Member {
                    cluster: c.name.clone(),
                    member: m.name,
                });
            }
            for n in self.plan.nodes(c) {
                out.push(Target::Node {
                    cluster: c.name.clone(),
                    node: n.name,
                });
            }
            for p in &c.pods {
                out.push(Target::Pod {
                    cluster: c.name.clone(),
                    pod: p.name.clone(),
                });
            }
        }
        out
    }

    /// Parses `cluster/name` (a member, node or pod of the lab).
    pub fn target(&self, s: &str) -> Result<Target> {
        let Some((cluster, name)) = s.split_once('/') else {
            return Err(refused(format!(
                "{s:?}: expected <cluster>/<member|node|pod>, e.g. apps/m1, apps/node-1, apps/client"
            )));
        };
        self.cluster(cluster)?;
        self.targets()
            .into_iter()
            .find(|t| t.label() == s)
            .ok_or_else(|| {
                let names: Vec<String> = self
                    .targets()
                    .iter()
                    .map(Target::label)
                    .filter(|l| l.starts_with(&format!("{cluster}/")))
                    .collect();
                refused(format!(
                    "no member, node or pod {name:?} in {cluster} (there are {})",
                    names.join(", ")
                ))
            })
    }

    /// The pids of `t`'s program in its cgroup.
    pub fn pids(&self, t: &Target) -> Vec<i32> {
        let procs =
            std::fs::read_to_string(self.cgroup_of(t).join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|pid: &i32| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == t.program())
            })
            .collect()
    }

    /// Whether `t` runs, is frozen or is stopped.
    pub fn run_state(&self, t: &Target) -> Run {
        let pids = self.pids(t);
        let Some(pid) = pids.first() else {
            return Run::Stopped;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
        {
            Some("T") | Some("t") => Run::Frozen,
            Some(_) => Run::Running,
            None => Run::Stopped,
        }
    }

    /// Fails if `t` exited (during `up`), with the end of its log.
    fn still_running(&self, t: &Target) -> Result<()> {
        if self.run_state(t) != Run::Stopped {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.log(t)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{} exited; the end of {}:\n{}",
            t.label(),
            self.log(t).display(),
            tail.join("\n")
        )
    }

    fn log(&self, t: &Target) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{}.log", t.label().replace('/', "-")))
    }

    /// Starts `t` (refused if it runs). It is detached: it outlives this process.
    pub fn start(&self, t: &Target) -> Result<()> {
        if self.run_state(t) != Run::Stopped {
            return Err(refused(format!("{} is already running", t.label())));
        }
        let (netns, program, args) = self.command(t)?;
        let log_path = self.log(t);
        std::fs::create_dir_all(log_path.parent().expect("logs dir"))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(log, "--- started by meshctl lab at {}", unix_now())?;
        let cgroup = self.cgroup_of(t);
        // nsenter enters the namespace and execs sh, which joins the cgroup and execs the
        // program: the pid is the program's, and everything it opens is in both.
        let mut cmd = in_netns(&netns, "sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
                cgroup.display()
            ))
            .arg("sh")
            .arg(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // Its own process group: a ^C to meshctl does not reach the lab.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", t.label()))?;
        // Started once it is in its cgroup under its own name; an early exit fails here.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pids(t).is_empty() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "{} exited at start ({status}); the end of {}:\n{}",
                    t.label(),
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not start within 10s", t.label());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Reaped when it exits (meshctl exits first; then init reaps it).
        std::thread::spawn(move || child.wait());
        Ok(())
    }

    /// The namespace, program and arguments of `t`.
    fn command(&self, t: &Target) -> Result<(String, PathBuf, Vec<String>)> {
        let bins = &self.state.bins;
        let d = |p: PathBuf| p.to_string_lossy().into_owned();
        Ok(match t {
            Target::Member { cluster, member } => {
                let c = self.cluster(cluster)?;
                let members = self.plan.members(self.index(cluster), c);
                let m = members.iter().find(|m| m.name == *member).expect("member");
                let pki = self.pki_dir(cluster);
                let initial: Vec<String> = members
                    .iter()
                    .map(|m| format!("{}=https://{}:{PEER_PORT}", m.name, m.ip))
                    .collect();
                let mut args = vec![
                    "--name".into(),
                    m.name.clone(),
                    "--data-dir".into(),
                    d(self.dir.join("data").join(format!("{cluster}-{member}"))),
                    "--listen-client-urls".into(),
                    format!(
                        "https://{}:{CLIENT_PORT},https://{}:{CLIENT_PORT}",
                        m.ip, m.host_ip
                    ),
                    "--advertise-client-urls".into(),
                    format!("https://{}:{CLIENT_PORT}", m.host_ip),
                    "--listen-peer-urls".into(),
                    format!("https://{}:{PEER_PORT}", m.ip),
                    "--initial-advertise-peer-urls".into(),
                    format!("https://{}:{PEER_PORT}", m.ip),
                    "--initial-cluster".into(),
                    initial.join(","),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    format!("{}-{cluster}", self.plan.tag()),
                ];
                for prefix in ["--", "--peer-"] {
                    args.extend([
                        format!("{prefix}cert-file"),
                        d(pki.join(format!("apiserver-{member}.crt"))),
                        format!("{prefix}key-file"),
                        d(pki.join(format!("apiserver-{member}.key"))),
                        format!("{prefix}trusted-ca-file"),
                        d(pki.join("ca.crt")),
                        format!("{prefix}client-cert-auth"),
                    ]);
                }
                args.extend([
                    "--cluster-name".into(),
                    cluster.clone(),
                    "--cluster-id".into(),
                    c.id.to_string(),
                    "--pod-cidr".into(),
                    Plan::pod_range(c),
                    "--manifests-dir".into(),
                    d(self.manifests_dir(cluster)),
                    "--listen-metrics-urls".into(),
                    format!("http://0.0.0.0:{APISERVER_METRICS_PORT}"),
                ]);
                args.extend(self.state.spec.apiserver_args.iter().cloned());
                (m.netns.clone(), bins.apiserver.clone(), args)
            }
            Target::Node { cluster, node } => {
                let c = self.cluster(cluster)?;
                let n = self
                    .plan
                    .nodes(c)
                    .into_iter()
                    .find(|n| n.name == *node)
                    .expect("node");
                let pki = self.pki_dir(cluster);
                let endpoints: Vec<String> = self
                    .plan
                    .members(self.index(cluster), c)
                    .iter()
                    .map(|m| format!("https://{}:{CLIENT_PORT}", m.ip))
                    .collect();
                let mut args = vec![
                    "--node".into(),
                    node.clone(),
                    "--cluster".into(),
                    cluster.clone(),
                    "--endpoints".into(),
                    endpoints.join(","),
                    "--cacert".into(),
                    d(pki.join("ca.crt")),
                    "--cert".into(),
                    d(pki.join(format!("agent-{node}.crt"))),
                    "--key".into(),
                    d(pki.join(format!("agent-{node}.key"))),
                    "--cgroup-root".into(),
                    d(self.agent_cgroup_root(c, node)),
                    "--bpffs".into(),
                    d(self.pins(cluster, node)),
                    "--state-dir".into(),
                    d(self.dir.join("agents").join(format!("{cluster}-{node}"))),
                    "--listen-metrics".into(),
                    "0.0.0.0:9964".into(),
                    "--remote-stale-after".into(),
                    self.state.spec.remote_stale_after.clone(),
                    "--wg-backend".into(),
                    "userspace".into(),
                    "--wg-interface".into(),
                    n.wg_if.clone(),
                    "--wg-port".into(),
                    WG_PORT.to_string(),
                    "--wg-userspace-program".into(),
                    d(bins.boringtun.clone()),
                ];
                args.extend(c.flavor.agent_args());
                args.extend(self.state.spec.agent_args.iter().cloned());
                (n.netns, bins.node_agent.clone(), args)
            }
            Target::Pod { cluster, pod } => {
                let c = self.cluster(cluster)?;
                let p = self
                    .plan
                    .pods(c)
                    .into_iter()
                    .find(|p| p.spec.name == *pod)
                    .expect("pod");
                let args = vec![
                    "serve".into(),
                    "--name".into(),
                    format!("{cluster}/{pod}"),
                    "--tcp".into(),
                    ECHO_PORT.to_string(),
                    "--udp".into(),
                    ECHO_PORT.to_string(),
                ];
                (p.netns, bins.echo.clone(), args)
            }
            Target::Delay => {
                let mut args = Vec::new();
                for (queue, d) in self.state.faults.delay_queues() {
                    args.push("--queue".to_owned());
                    args.push(format!("{queue}:{}:{}", d.delay_ms, d.jitter_ms));
                }
                (self.plan.fabric_netns(), bins.delay.clone(), args)
            }
        })
    }

    /// A node's pin directory.
    pub fn pins(&self, cluster: &str, node: &str) -> PathBuf {
        self.plan.pins().join(format!("{cluster}-{node}"))
    }

    /// Cluster `cluster`'s PKI directory.
    pub fn pki_dir(&self, cluster: &str) -> PathBuf {
        self.dir.join("pki").join(cluster)
    }

    /// Cluster `cluster`'s manifests directory (its API servers publish what is in it).
    pub fn manifests_dir(&self, cluster: &str) -> PathBuf {
        self.dir.join("manifests").join(cluster)
    }

    fn write_manifests(&self, c: &ClusterSpec) -> Result<()> {
        let dir = self.manifests_dir(&c.name);
        crate::manifests::write(&dir, &self.plan, c)
            .with_context(|| format!("writing {}", dir.display()))
    }

    /// `meshctl ARGS` with the lab's config file.
    pub fn meshctl(&self, args: &[&str]) -> Result<String> {
        sh(Command::new(&self.state.bins.meshctl)
            .env(crate::instance::CONFIG_ENV, &self.state.config)
            .args(args))
    }

    fn make_pki(&self, index: usize, c: &ClusterSpec) -> Result<()> {
        let pki = self.pki_dir(&c.name);
        let members = self.plan.members(index, c);
        let mut init = Command::new(&self.state.bins.meshctl);
        init.args(["pki", "init", "--cluster", &c.name]);
        for m in &members {
            init.args(["--member", &m.name]);
        }
        for m in &members {
            init.args(["--san", &m.ip.to_string(), "--san", &m.host_ip.to_string()]);
        }
        init.arg("--out").arg(&pki).stdout(Stdio::null());
        sh(&mut init)?;
        for n in self.plan.nodes(c) {
            sh(Command::new(&self.state.bins.meshctl)
                .args([
                    "pki", "issue", "--role", "agent", "--name", &n.name, "--dir",
                ])
                .arg(&pki)
                .stdout(Stdio::null()))?;
        }
        let endpoints: Vec<String> = members
            .iter()
            .map(|m| format!("https://{}:{CLIENT_PORT}", m.host_ip))
            .collect();
        self.meshctl(&[
            "config",
            "set-context",
            &c.name,
            "--endpoints",
            &endpoints.join(","),
            "--pki-dir",
            &pki.to_string_lossy(),
        ])?;
        Ok(())
    }

    /// `meshctl status --context <cluster> -o json`.
    pub fn mesh_status(&self, cluster: &str) -> Result<Value> {
        let out = self.meshctl(&["status", "--context", cluster, "-o", "json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Cluster `cluster`'s leader (its member name, `m1` …), from `meshctl status`.
    pub fn leader(&self, cluster: &str) -> Result<String> {
        let status = self.mesh_status(cluster)?;
        status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["leader"] == true)
            .and_then(|m| m["name"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("{cluster} has no leader: {status}"))
    }

    /// Peers on WireGuard interface `iface` (`wg show`), if it exists.
    fn wg_peer_count(&self, iface: &str) -> Option<usize> {
        let out = Command::new("wg")
            .args(["show", iface, "peers"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
    }

    /// For each cluster's `client` pod (if it has one), its cluster's first global service
    /// with a TCP port: (cluster, pod, VIP:port, `namespace/name`).
    fn probes(&self) -> Vec<(String, String, std::net::SocketAddrV4, String)> {
        let mut out = Vec::new();
        for c in &self.state.spec.clusters {
            if !c.pods.iter().any(|p| p.name == "client") {
                continue;
            }
            let found = c.services.iter().enumerate().find_map(|(i, s)| {
                let port = s.ports.iter().find(|p| p.protocol == "TCP")?;
                s.global.then(|| {
                    (
                        std::net::SocketAddrV4::new(Plan::vip(c, i), port.port),
                        format!("{}/{}", s.namespace, s.name),
                    )
                })
            });
            if let Some((vip, service)) = found {
                out.push((c.name.clone(), "client".to_owned(), vip, service));
            }
        }
        out
    }

    /// The clusters with a ready backend of global service `ns/name`, shared unless local…
    /// i.e. those that should answer a client anywhere with affinity `none`.
    fn answering_clusters(&self, service: &str) -> Vec<String> {
        let (ns, name) = service.split_once('/').expect("ns/name");
        self.state
            .spec
            .clusters
            .iter()
            .filter(|c| {
                c.services.iter().any(|s| {
                    s.namespace == ns
                        && s.name == name
                        && s.global
                        && s.shared
                        && s.affinity == "none"
                        && plan::selected(s, &self.plan.pods(c))
                            .iter()
                            .any(|p| p.spec.ready)
                })
            })
            .map(|c| c.name.clone())
            .collect()
    }

    /// `count` TCP connections from `cluster/pod` to `addr`: answers by cluster.
    pub fn answers(
        &self,
        cluster: &str,
        pod: &str,
        addr: std::net::SocketAddrV4,
        count: u32,
    ) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let Ok(mut cmd) = self.exec(
            &format!("{cluster}/{pod}"),
            &[
                "mesh-echo".into(),
                "probe".into(),
                "--tcp".into(),
                addr.to_string(),
                "--count".into(),
                count.to_string(),
                "--timeout-ms".into(),
                "1000".into(),
            ],
        ) else {
            return out;
        };
        let Ok(o) = cmd.stderr(Stdio::null()).output() else {
            return out;
        };
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && let Some(reply) = v["reply"].as_str()
            {
                let cluster = reply.split('/').next().unwrap_or(reply).to_owned();
                *out.entry(cluster).or_insert(0) += 1;
            }
        }
        out
    }

    /// A command that runs `argv` in pod `cluster/pod`'s namespace and cgroup, with the
    /// lab's programs (mesh-echo, …) on PATH.
    pub fn exec(&self, pod: &str, argv: &[String]) -> Result<Command> {
        let t = self.target(pod)?;
        let Target::Pod { cluster, pod } = &t else {
            return Err(refused(format!("{pod:?} is not a pod")));
        };
        anyhow::ensure!(!argv.is_empty(), "no command to run");
        let c = self.cluster(cluster)?;
        let p = self
            .plan
            .pods(c)
            .into_iter()
            .find(|p| p.spec.name == *pod)
            .expect("pod");
        let bin_dir = self
            .state
            .bins
            .echo
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin_dir];
        dirs.extend(std::env::split_paths(&path));
        let mut cmd = in_netns(&p.netns, "sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
                self.cgroup_of(&t).display()
            ))
            .arg("sh")
            .args(argv)
            .env("PATH", std::env::join_paths(dirs)?);
        Ok(cmd)
    }

    /// kill -9 of `t`'s process.
    pub fn kill(&self, t: &Target) -> Result<()> {
        self.signal(t, nix::sys::signal::Signal::SIGKILL)?;
        // Gone from its cgroup once the kernel has reaped it.
        wait_for(&format!("{} to exit", t.label()), || {
            self.pids(t).is_empty().then_some(())
        })
    }

    /// SIGSTOP.
    pub fn freeze(&self, t: &Target) -> Result<()> {
        self.signal(t, nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT.
    pub fn thaw(&self, t: &Target) -> Result<()> {
        self.signal(t, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, t: &Target, sig: nix::sys::signal::Signal) -> Result<()> {
        let pids = self.pids(t);
        if pids.is_empty() {
            return Err(refused(format!("{} is not running", t.label())));
        }
        for pid in pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .with_context(|| format!("signalling {} (pid {pid})", t.label()))?;
        }
        Ok(())
    }

    fn pair(&self, a: &str, b: &str) -> Result<()> {
        self.cluster(a)?;
        self.cluster(b)?;
        if a == b {
            return Err(refused("name two different clusters"));
        }
        Ok(())
    }

    /// Cuts all traffic between clusters `a` and `b` at the fabric. Returns false if they
    /// were cut already.
    pub fn partition(&mut self, a: &str, b: &str) -> Result<bool> {
        self.pair(a, b)?;
        let mut faults = self.state.faults.clone();
        let changed = faults.partition(a, b);
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Restores traffic between `a` and `b` (partition and degradation). Returns false if
    /// nothing was in force.
    pub fn heal(&mut self, a: &str, b: &str) -> Result<bool> {
        self.pair(a, b)?;
        let mut faults = self.state.faults.clone();
        let changed = faults.heal(a, b);
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Cuts API-server member `t` off from its cluster's other members (clients still reach
    /// it). Returns false if it was isolated already.
    pub fn isolate(&mut self, t: &Target) -> Result<bool> {
        let Target::Member { .. } = t else {
            return Err(refused(format!(
                "{} is not an API-server member",
                t.label()
            )));
        };
        let mut faults = self.state.faults.clone();
        let changed = faults.isolate(&t.label());
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Lets member `t` reach its peers again. Returns false if it was not isolated.
    pub fn rejoin(&mut self, t: &Target) -> Result<bool> {
        let mut faults = self.state.faults.clone();
        let changed = faults.rejoin(&t.label());
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Degrades the link between `a` and `b`.
    pub fn degrade(&mut self, a: &str, b: &str, d: Degrade) -> Result<()> {
        self.pair(a, b)?;
        if d.loss_pct > 100 {
            return Err(refused("--loss is a percentage, 0 to 100"));
        }
        if d.jitter_ms > d.delay_ms {
            return Err(refused("the jitter must not exceed the delay"));
        }
        let mut faults = self.state.faults.clone();
        faults.degrade(a, b, d);
        self.enforce(faults)
    }

    /// Enforces `faults` and records them; if they cannot be enforced, the faults in force
    /// before are restored and nothing is recorded.
    fn enforce(&mut self, faults: Faults) -> Result<()> {
        let before = std::mem::replace(&mut self.state.faults, faults);
        if let Err(e) = self.apply_faults(&before.isolated) {
            let tried = std::mem::replace(&mut self.state.faults, before);
            let _ = self.apply_faults(&tried.isolated);
            return Err(e);
        }
        self.save()
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
        if parse_duration(&spec.remote_stale_after)
            != parse_duration(&self.state.spec.remote_stale_after)
        {
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
        if Path::new("/sys/class/net")
            .join(self.plan.host_if())
            .exists()
            && let Err(e) = ip(&["link", "del", &self.plan.host_if()])
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

/// A router: forwarding on, and no reverse-path filter (replies may come back another way).
fn router(ns: &str) -> Result<()> {
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        sh(in_netns(ns, "sysctl").args(["-qw", s]))?;
    }
    Ok(())
}

fn new_netns(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// A veth from `host` (named `host_if`, on `bridge`) to `eth0` in `inner`, with `addr` and a
/// default route via `gateway` there.
fn veth(
    host: &str,
    host_if: &str,
    bridge: Option<&str>,
    inner: &str,
    addr: &str,
    gateway: &str,
) -> Result<()> {
    ip_in(
        host,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", inner,
        ],
    )?;
    if let Some(br) = bridge {
        ip_in(host, &["link", "set", host_if, "master", br])?;
    }
    ip_in(host, &["link", "set", host_if, "up"])?;
    ip_in(inner, &["addr", "add", addr, "dev", "eth0"])?;
    ip_in(inner, &["link", "set", "eth0", "up"])?;
    ip_in(inner, &["route", "add", "default", "via", gateway])?;
    Ok(())
}

/// A pod as the AWS VPC CNI links it: an `eni…` veth without a bridge, the pod's address a /32
/// with the link-local gateway 169.254.1.1 pinned to the host side's MAC, a host route to the
/// pod, `to <pod> lookup main`, and for a pod of a secondary ENI `from <pod> lookup <table>`.
fn eni_pod(node: &str, pod: &PodPlan, secondary: bool) -> Result<()> {
    use crate::flavor::{ENI_TABLE, FROM_POD_PRIORITY, POD_GATEWAY, TO_POD_PRIORITY};
    let host_if = pod.host_if.as_str();
    ip_in(
        node,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &pod.netns,
        ],
    )?;
    ip_in(node, &["link", "set", host_if, "up"])?;
    let shown = ip_in(node, &["-j", "link", "show", host_if])?;
    let mac = serde_json::from_str::<Value>(&shown)?[0]["address"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no MAC address on {host_if}: {shown}"))?;
    let ip = pod.ip.to_string();
    ip_in(
        &pod.netns,
        &["addr", "add", &format!("{ip}/32"), "dev", "eth0"],
    )?;
    ip_in(&pod.netns, &["link", "set", "eth0", "up"])?;
    ip_in(
        &pod.netns,
        &["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"],
    )?;
    ip_in(
        &pod.netns,
        &["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"],
    )?;
    ip_in(
        &pod.netns,
        &[
            "neigh",
            "add",
            POD_GATEWAY,
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    ip_in(
        node,
        &[
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            host_if,
            "scope",
            "link",
        ],
    )?;
    ip_in(
        node,
        &[
            "rule",
            "add",
            "to",
            &ip,
            "lookup",
            "main",
            "priority",
            &TO_POD_PRIORITY.to_string(),
        ],
    )?;
    if secondary {
        ip_in(
            node,
            &[
                "rule",
                "add",
                "from",
                &ip,
                "lookup",
                &ENI_TABLE.to_string(),
                "priority",
                &FROM_POD_PRIORITY.to_string(),
            ],
        )?;
    }
    Ok(())
}

/// Kills every process in `cgroup` and below (`cgroup.kill`) and waits until none is left;
/// returns how many there were.
fn kill_cgroup(cgroup: &Path) -> Result<usize> {
    if !cgroup.exists() {
        return Ok(0);
    }
    let count = count_procs(cgroup);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Again until none is left: a process still starting (between `nsenter` and joining its
    // cgroup) joins after a kill.
    loop {
        std::fs::write(cgroup.join("cgroup.kill"), "1")
            .with_context(|| format!("{}/cgroup.kill", cgroup.display()))?;
        std::thread::sleep(Duration::from_millis(50));
        if count_procs(cgroup) == 0 {
            // One more look after a pause, for a process that was about to join.
            std::thread::sleep(Duration::from_millis(200));
            if count_procs(cgroup) == 0 {
                return Ok(count);
            }
        }
        if Instant::now() > deadline {
            bail!("processes left in {} after SIGKILL", cgroup.display());
        }
    }
}

fn count_procs(dir: &Path) -> usize {
    let own = std::fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |s| s.lines().count());
    let children: usize = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| count_procs(&e.path()))
        .sum();
    own + children
}

/// Removes `dir` and the cgroups below it, deepest first.
fn remove_cgroups(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().is_dir() {
            remove_cgroups(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing cgroup {}", dir.display()))
}

#[cfg(test)]
mod tests;
