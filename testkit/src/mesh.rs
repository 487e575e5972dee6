//! A running mesh for tests and benchmarks: two clusters of two nodes on network namespaces
//! ([`crate::topology`]), each with a one-member TLS API server publishing its Nodes from a
//! manifests directory, connected with `meshctl connect`, and a node agent per node with the
//! userspace WireGuard backend (boringtun).
//!
//! This is a harness: its methods panic with what went wrong, as tests and benchmarks want.
//! Checks use tools we did not write where one exists: `wg show` for the interfaces, `ping`
//! between pods, `nft` counters at the fabric, `etcdctl` for the store. Everything (agents,
//! boringtun daemons, API servers, namespaces, cgroups, pins) is removed on drop, also when a
//! test panics.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

pub use lab::binaries::{Binaries, find_boringtun};

use lab::cgroup::Cgroup;
use lab::process::Process;

use certs::Role;
use mesh_client::pki::PkiDir;

use crate::args::{AgentArgs, ApiServerArgs};
use crate::eventually::eventually;
use crate::topology::{ClusterSpec, NodeNet, Topology};

pub const WG_PORT: u16 = 51871;
/// The agents' reachability probe port (their default).
pub const PROBE_PORT: u16 = 51872;
pub const CLUSTERS: [(&str, u8); 2] = [("apps", 1), ("infra", 2)];
pub const PATIENCE: Duration = Duration::from_secs(60);

/// `boringtun-cli`, from PATH or cargo's bin directory.
fn boringtun() -> PathBuf {
    find_boringtun()
        .expect("boringtun-cli is missing: scripts/test installs it (cargo install boringtun-cli)")
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One node's agent and what it owns.
#[derive(Debug)]
pub struct Agent {
    pub cluster: String,
    pub node: String,
    pub process: Option<Process>,
    /// With [`Mesh::external_wireguard`]: its boringtun, run beside it as the DaemonSet's
    /// `wireguard` container runs beside the agent's (the agent never starts or stops it).
    pub daemon: Option<Process>,
    /// Its WireGuard interface (unique on the host).
    pub interface: String,
    pub state_dir: PathBuf,
    pub cgroup: Cgroup,
    /// Its pin directory.
    pub pins: PathBuf,
    pub log: PathBuf,
}

/// The mesh of a test.
#[derive(Debug)]
pub struct Mesh {
    pub bins: Binaries,
    /// Run each node's boringtun as a process of its own, not started by its agent
    /// (`--wg-userspace-daemon external`); set before the agents start.
    pub external_wireguard: bool,
    /// The agents' `--remote-stale-after` (their default, 30 s, when `None`); set before the
    /// agents start.
    pub remote_stale_after: Option<std::time::Duration>,
    // Drop order: agents (and their interfaces, see Drop), API servers, namespaces, files.
    pub agents: BTreeMap<(String, String), Agent>,
    pub apiservers: BTreeMap<String, Process>,
    pub workloads: Vec<Process>,
    pub topo: Topology,
    pub dir: tempfile::TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for a in self.agents.values_mut() {
            if let Some(p) = a.process.as_mut() {
                p.kill();
            }
            // Deleting the link stops its boringtun daemon; then its socket goes.
            let ns = self
                .topo
                .cluster(&a.cluster)
                .nodes
                .iter()
                .find(|n| n.name == a.node);
            if let Some(n) = ns {
                let _ = n.ns.ip(&["link", "del", &a.interface]);
                let _ =
                    n.ns.command(&self.bins.node_agent)
                        .args(["--uninstall", "--wg-backend", "none", "--bpffs"])
                        .arg(&a.pins)
                        .output();
            }
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", a.interface));
        }
    }
}

impl Mesh {
    /// Builds the network, starts and connects the API servers, publishes the nodes; no
    /// agents yet.
    pub fn new(bins: Binaries) -> Mesh {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "a lab mesh needs root (CI runs as root)"
        );
        lab::ensure_bpffs().expect("bpffs");
        let id = lab::unique("rw");
        let dir = lab::workdir(&id).expect("tempdir");
        let spec: Vec<ClusterSpec> = CLUSTERS
            .iter()
            .map(|(name, id)| ClusterSpec {
                name: (*name).to_owned(),
                id: *id,
                nodes: 2,
                pods_per_node: 1,
            })
            .collect();
        let topo = Topology::build(&id, &spec).expect("topology");
        let mut mesh = Mesh {
            bins,
            external_wireguard: false,
            remote_stale_after: None,
            agents: BTreeMap::new(),
            apiservers: BTreeMap::new(),
            workloads: Vec::new(),
            topo,
            dir,
        };
        for (name, _) in CLUSTERS {
            mesh.write_nodes(name, &["node-1", "node-2"]);
            mesh.start_apiserver(name);
        }
        for (name, _) in CLUSTERS {
            mesh.wait_store(name, &format!("mesh/v1/{name}/cluster"));
        }
        mesh.meshctl(&[
            "connect",
            "--context",
            "apps",
            "--destination",
            "infra",
            "--wait",
        ]);
        // Each side mirrors the other's nodes.
        mesh.wait_store("apps", "mesh/v1/infra/nodes/node-2");
        mesh.wait_store("infra", "mesh/v1/apps/nodes/node-2");
        mesh
    }

    pub fn path(&self, what: &str) -> PathBuf {
        self.dir.path().join(what)
    }

    /// Writes cluster `name`'s Nodes (only those listed) and their pods into its manifests
    /// directory: every pod has its identity, as on a cluster (agents deny pods of unknown
    /// identity but for their node, `--enforce-unknown-pods`).
    pub fn write_nodes(&self, name: &str, nodes: &[&str]) {
        let c = self.topo.cluster(name);
        let dir = self.path(&format!("{name}-manifests"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut yaml = String::new();
        for n in c.nodes.iter().filter(|n| nodes.contains(&n.name.as_str())) {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{podCIDR: {}/{}}}\n\
                 status: {{addresses: [{{type: InternalIP, address: {}}}]}}\n---\n",
                n.name, n.pod_cidr.0, n.pod_cidr.1, n.ip
            ));
            for (i, pod) in n.pods.iter().enumerate() {
                yaml.push_str(&format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {node}-{i}, namespace: demo, labels: {{app: wg}}}}\n\
                     spec: {{nodeName: {node}, containers: [{{name: c, image: mesh-echo}}]}}\n\
                     status: {{phase: Running, hostIP: {host}, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n",
                    node = n.name,
                    host = n.ip,
                    ip = pod.ip,
                ));
            }
        }
        // Written whole, then renamed: the publisher never reads half a file.
        let tmp = dir.join(".nodes.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, dir.join("nodes.yaml")).unwrap();
    }

    fn pki(&self, cluster: &str) -> PathBuf {
        self.path(&format!("{cluster}-pki"))
    }

    fn endpoint(&self, cluster: &str) -> String {
        format!("https://{}:2379", self.topo.cluster(cluster).api_ip)
    }

    /// Starts (or restarts, on its data) cluster `name`'s API server.
    pub fn start_apiserver(&mut self, name: &str) {
        let c = self.topo.cluster(name);
        let pki = self.pki(name);
        if !PkiDir::new(&pki).ca_cert().exists() {
            check(
                Command::new(&self.bins.meshctl)
                    .args(["pki", "init", "--cluster", name, "--member", "n1", "--san"])
                    .arg(c.api_ip.to_string())
                    .arg("--out")
                    .arg(&pki)
                    .output()
                    .unwrap(),
                "meshctl pki init",
            );
            for n in &c.nodes {
                check(
                    Command::new(&self.bins.meshctl)
                        .args([
                            "pki", "issue", "--role", "agent", "--name", &n.name, "--dir",
                        ])
                        .arg(&pki)
                        .output()
                        .unwrap(),
                    "meshctl pki issue",
                );
            }
            self.meshctl(&[
                "config",
                "set-context",
                name,
                "--endpoints",
                &self.endpoint(name),
                "--pki-dir",
                pki.to_str().unwrap(),
            ]);
        }
        let url = |port| format!("https://{}:{port}", c.api_ip);
        let mut cmd = c.api.command(&self.bins.apiserver);
        ApiServerArgs::new(
            "n1",
            &self.path(&format!("{name}-store")),
            &url(2379),
            &url(2380),
            name,
        )
        .tls(&pki)
        .args(["--cluster-name", name])
        .args(["--cluster-id", &c.id.to_string()])
        .args(["--pod-cidr", &c.pod_range()])
        .args([
            OsStr::new("--manifests-dir"),
            self.path(&format!("{name}-manifests")).as_os_str(),
        ])
        .args(["--disconnect-grace", "3s"])
        .apply(&mut cmd);
        let log = self.path(&format!("{name}-apiserver.log"));
        let p = Process::spawn(cmd, Some(&log)).expect("mesh-apiserver");
        self.apiservers.insert(name.to_owned(), p);
    }

    /// Stops cluster `name`'s API server (kill -9).
    pub fn kill_apiserver(&mut self, name: &str) {
        if let Some(mut p) = self.apiservers.remove(name) {
            p.kill();
        }
    }

    /// `meshctl ARGS` from the fabric (which reaches every API server); must succeed.
    pub fn meshctl(&self, args: &[&str]) -> String {
        let out = self
            .topo
            .fabric
            .command(&self.bins.meshctl)
            .env("RAFTMESH_CONFIG", self.path("meshctl-config"))
            .args(args)
            .output()
            .unwrap();
        check(out, &format!("meshctl {args:?}"))
    }

    /// `etcdctl` as cluster `name`'s admin, from the fabric.
    pub fn etcdctl(&self, name: &str, args: &[&str]) -> Output {
        let pki = PkiDir::new(self.pki(name));
        let (cert, key) = pki.pair(Role::Admin, "admin");
        self.topo
            .fabric
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint(name)))
            .arg(format!("--cacert={}", pki.ca_cert().display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(["--command-timeout=3s", "--dial-timeout=2s"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The value of `key` in cluster `name`'s store, if present.
    pub fn get(&self, name: &str, key: &str) -> Option<Vec<u8>> {
        let out = self.etcdctl(name, &["get", key, "--print-value-only"]);
        if !out.status.success() || out.stdout.is_empty() {
            return None;
        }
        let mut v = out.stdout;
        v.pop(); // etcdctl's newline
        Some(v)
    }

    /// Waits until cluster `name`'s store holds `key`.
    pub fn wait_store(&self, name: &str, key: &str) -> Vec<u8> {
        eventually(&format!("{key} in {name}'s store"), PATIENCE, || {
            self.get(name, key)
        })
    }

    pub fn node(&self, cluster: &str, node: &str) -> &NodeNet {
        self.topo
            .cluster(cluster)
            .nodes
            .iter()
            .find(|n| n.name == node)
            .unwrap()
    }

    /// Starts the agent of `cluster/node` (again, keeping its state directory).
    pub fn start_agent(&mut self, cluster: &str, node: &str) {
        let key = (cluster.to_owned(), node.to_owned());
        if !self.agents.contains_key(&key) {
            let tag = lab::unique("wg");
            let agent = Agent {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
                process: None,
                daemon: None,
                state_dir: self.path(&format!("{cluster}-{node}-state")),
                cgroup: Cgroup::new(&lab::cgroup2_root().expect("cgroup2"), &tag).expect("cgroup"),
                pins: PathBuf::from("/sys/fs/bpf").join(&tag),
                log: self.path(&format!("{cluster}-{node}-agent.log")),
                interface: tag,
            };
            self.agents.insert(key.clone(), agent);
        }
        if self.external_wireguard && self.agents[&key].daemon.is_none() {
            self.start_wireguard_daemon(cluster, node);
        }
        let pki = self.pki(cluster);
        let endpoint = self.endpoint(cluster);
        let a = &self.agents[&key];
        let n = self.node(cluster, node);
        let mut cmd = n.ns.command(&self.bins.node_agent);
        AgentArgs::new(node, cluster, &endpoint)
            .tls(&pki)
            .cgroup_root(a.cgroup.path())
            .bpffs(&a.pins)
            .state_dir(&a.state_dir)
            .listen_metrics("127.0.0.1:9964")
            .args(["--wg-backend", "userspace", "--wg-interface", &a.interface])
            .args(["--wg-port", &WG_PORT.to_string()])
            .args(["--reachability-port", &PROBE_PORT.to_string()])
            .args([
                OsStr::new("--wg-userspace-program"),
                boringtun().as_os_str(),
            ])
            .args(["--log-level", "info,node_agent=debug"])
            .apply(&mut cmd);
        if self.external_wireguard {
            cmd.args(["--wg-userspace-daemon", "external"]);
        }
        if let Some(after) = self.remote_stale_after {
            cmd.args(["--remote-stale-after", &mesh_api::duration::format(after)]);
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.log)
            .unwrap();
        std::io::Write::write_all(&mut log, b"--- start\n").unwrap();
        let p = Process::spawn(cmd, Some(&a.log)).expect("node-agent");
        self.agents.get_mut(&key).unwrap().process = Some(p);
    }

    /// Starts `cluster/node`'s boringtun in the foreground in the node's namespace, as a
    /// process of the mesh's (the `wireguard` container of the chart's DaemonSet).
    pub fn start_wireguard_daemon(&mut self, cluster: &str, node: &str) {
        let key = (cluster.to_owned(), node.to_owned());
        let a = &self.agents[&key];
        let n = self.node(cluster, node);
        let mut cmd = n.ns.command(boringtun());
        cmd.args([
            "--foreground",
            "--disable-drop-privileges",
            "--threads",
            "2",
        ])
        .arg(&a.interface)
        .env("WG_SUDO", "true");
        let log = self.path(&format!("{cluster}-{node}-boringtun.log"));
        let p = Process::spawn(cmd, Some(&log)).expect("boringtun");
        self.agents.get_mut(&key).unwrap().daemon = Some(p);
    }

    /// kill -9 of `cluster/node`'s external boringtun (its interface goes with it).
    pub fn kill_wireguard_daemon(&mut self, cluster: &str, node: &str) {
        let a = self
            .agents
            .get_mut(&(cluster.to_owned(), node.to_owned()))
            .unwrap();
        if let Some(mut p) = a.daemon.take() {
            p.kill();
        }
    }

    /// Starts every node's agent.
    pub fn start_agents(&mut self) {
        for (cluster, _) in CLUSTERS {
            for node in ["node-1", "node-2"] {
                self.start_agent(cluster, node);
            }
        }
    }

    /// kill -9 of an agent (its interface stays).
    pub fn kill_agent(&mut self, cluster: &str, node: &str) {
        let a = self
            .agents
            .get_mut(&(cluster.to_owned(), node.to_owned()))
            .unwrap();
        if let Some(p) = a.process.as_mut() {
            p.kill();
        }
        a.process = None;
    }

    pub fn agent(&self, cluster: &str, node: &str) -> &Agent {
        &self.agents[&(cluster.to_owned(), node.to_owned())]
    }

    /// `wg show <iface> dump` peers: public key → (endpoint, allowed ips, rx, tx).
    pub fn wg_peers(&self, cluster: &str, node: &str) -> BTreeMap<String, WgPeer> {
        let out = Command::new("wg")
            .args(["show", &self.agent(cluster, node).interface, "dump"])
            .output()
            .unwrap();
        if !out.status.success() {
            return BTreeMap::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1) // the interface line
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 8).then(|| {
                    (
                        f[0].to_owned(),
                        WgPeer {
                            endpoint: f[2].to_owned(),
                            allowed_ips: f[3].to_owned(),
                            rx: f[5].parse().unwrap_or(0),
                            tx: f[6].parse().unwrap_or(0),
                        },
                    )
                })
            })
            .collect()
    }

    /// The public key `cluster/node` published, as stored in `store`'s cluster.
    pub fn published_key(&self, store: &str, cluster: &str, node: &str) -> Option<String> {
        let value = self.get(store, &format!("mesh/v1/{cluster}/nodekeys/{node}"))?;
        match mesh_api::Record::decode(mesh_api::Kind::NodeKey, &value).ok()? {
            mesh_api::Record::NodeKey(r) => Some(r.public_key),
            _ => None,
        }
    }

    /// Waits until every agent's interface has exactly the other cluster's nodes as peers,
    /// with the keys they published.
    pub fn wait_full_mesh(&self) {
        for (cluster, _) in CLUSTERS {
            let other = if cluster == "apps" { "infra" } else { "apps" };
            for node in ["node-1", "node-2"] {
                eventually(
                    &format!("{cluster}/{node} peering with {other}'s nodes"),
                    PATIENCE,
                    || {
                        let want: Option<Vec<String>> = ["node-1", "node-2"]
                            .iter()
                            .map(|n| self.published_key(cluster, other, n))
                            .collect();
                        let mut want = want?;
                        want.sort();
                        let have: Vec<String> = self.wg_peers(cluster, node).into_keys().collect();
                        (have == want).then_some(())
                    },
                );
            }
        }
    }

    /// One ping from `cluster/node`'s first pod to `ip`.
    pub fn ping(&self, cluster: &str, node: &str, ip: std::net::Ipv4Addr) -> bool {
        self.node(cluster, node).pods[0]
            .ns
            .command("ping")
            .args(["-c", "1", "-W", "1", &ip.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Waits until a ping from `cluster/node`'s pod reaches `ip`.
    pub fn wait_ping(&self, cluster: &str, node: &str, ip: std::net::Ipv4Addr) {
        eventually(
            &format!("ping from {cluster}/{node}'s pod to {ip}"),
            PATIENCE,
            || self.ping(cluster, node, ip).then_some(()),
        );
    }

    /// The first pod's address of `cluster/node`.
    pub fn pod_ip(&self, cluster: &str, node: &str) -> std::net::Ipv4Addr {
        self.node(cluster, node).pods[0].ip
    }

    /// Starts `mesh-echo serve` (TCP 8080) in `cluster/node`'s first pod.
    pub fn serve(&mut self, cluster: &str, node: &str) {
        let name = format!("{cluster}-{node}");
        let mut cmd = self.node(cluster, node).pods[0].ns.command(&self.bins.echo);
        cmd.args(["serve", "--name", &name, "--tcp", "8080"]);
        let log = self.path(&format!("echo-{name}.log"));
        self.workloads
            .push(Process::spawn(cmd, Some(&log)).expect("mesh-echo"));
    }

    /// TCP connections from `cluster/node`'s pod to `ip:8080`: the replies.
    pub fn tcp(&self, cluster: &str, node: &str, ip: std::net::Ipv4Addr) -> Vec<String> {
        let out = self.node(cluster, node).pods[0]
            .ns
            .command(&self.bins.echo)
            .args(["probe", "--tcp", &format!("{ip}:8080"), "--count", "3"])
            .args(["--timeout-ms", "2000"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["reply"].as_str().map(str::to_owned))
            .collect()
    }

    /// The agent's metrics (curl inside its node's namespace).
    pub fn metrics(&self, cluster: &str, node: &str) -> String {
        let out = self
            .node(cluster, node)
            .ns
            .command("curl")
            .args(["-sf", "http://127.0.0.1:9964/metrics"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A peer as `wg show dump` prints it.
#[derive(Debug, Clone)]
pub struct WgPeer {
    pub endpoint: String,
    pub allowed_ips: String,
    pub rx: u64,
    pub tx: u64,
}
