//! One node of a cluster out of network namespaces, for the datapath tests.
//!
//! ```text
//!  node netns ─ br0 10.244.0.1/16 ─┬─ lxc…0 ══ pod netns (eth0 10.244.x.y)
//!  (mesh-apiserver on 127.0.0.1,    ├─ lxc…1 ══ pod netns
//!   node-agent, curl for metrics)   └─ …
//! ```
//! Pods are all on one bridge; which cluster a pod belongs to is only what the records say.
//! Clients run in a pod's netns and in the test's cgroup (the agent's `--cgroup-root`), so the
//! socket programs see their connects. Everything — namespaces, cgroup, pins, processes — is
//! owned by [`Node`] and removed on drop, also when the test panics.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lab::cgroup::Cgroup;
use lab::netns::{self, Netns};
use lab::process::Process;
use mesh_api::records::*;
use mesh_api::{Key, Kind, Record, SCHEMA};
use node_agent::datapath::{KernelMaps, Pins};
use node_agent::maps::Tables;
use serde_json::Value;
use testkit::args::{AgentArgs, ApiServerArgs};

/// Waits until `f` returns `Some`, trying every 50 ms, for at most `patience`
/// ([`testkit::eventually_every`]).
pub fn eventually<T>(what: &str, patience: Duration, f: impl FnMut() -> Option<T>) -> T {
    testkit::eventually_every(what, patience, Duration::from_millis(50), f)
}

/// A binary built next to this test's `node-agent`.
pub fn sibling(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_node-agent")).with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        bin.display()
    );
    bin
}

/// The API server of the node: one member, plaintext, in the node's namespace. Clients use
/// 127.0.0.1:2379; the agent uses 127.0.0.2:2379, so a test can cut the agent off alone.
fn apiserver_command(ns: &Netns, dir: &Path) -> Command {
    let mut cmd = ns.command(sibling("mesh-apiserver"));
    ApiServerArgs::new(
        "n1",
        &dir.join("store"),
        "http://127.0.0.1:2379",
        "http://127.0.0.1:2380",
        "t",
    )
    .also_listen("http://127.0.0.2:2379")
    .plaintext()
    .apply(&mut cmd);
    cmd
}

/// A pod: its namespace and address.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

/// The node: its namespaces, API server, agent and pods.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    // Drop order: processes, then pods and the node namespace, then the cgroup and pins.
    pub workloads: Vec<Process>,
    pub agent: Option<Process>,
    pub apiserver: Process,
    pub pods: BTreeMap<String, Pod>,
    pub ns: Netns,
    pub cgroup: Cgroup,
    pub pins: PinsGuard,
    pub dir: tempfile::TempDir,
    /// The agent's `--policy-attach` (`auto` unless a test sets it).
    pub policy_attach: &'static str,
    /// The host side of each pod's veth, by pod name.
    pub host_ifs: BTreeMap<String, String>,
}

/// Removes the pin directory on drop (as `node-agent --uninstall` does).
#[derive(Debug)]
pub struct PinsGuard(pub Pins);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = self.0.uninstall();
    }
}

pub const CLUSTER: &str = "apps";
pub const CLUSTER_ID: u32 = 1;
pub const METRICS: &str = "127.0.0.1:9964";

impl Node {
    /// A node with an API server and pods `name → ip` (10.244.0.0/16), no agent yet.
    pub fn new(pods: &[(&str, &str)]) -> Node {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the datapath tests need root (CI runs as root)"
        );
        lab::ensure_bpffs().expect("bpffs");
        let id = lab::unique("rm");
        let dir = lab::workdir(&id).expect("tempdir");
        let pins = PinsGuard(Pins::new(PathBuf::from("/sys/fs/bpf").join(&id)));
        let cgroup = Cgroup::new(&lab::cgroup2_root().expect("cgroup2"), &id).expect("cgroup");
        let ns = Netns::new(&format!("{id}-node")).expect("node netns");
        netns::bridge(&ns, "br0", "10.244.0.1/16").expect("bridge");
        let mut pod_map = BTreeMap::new();
        let mut host_ifs = BTreeMap::new();
        for (i, (name, ip)) in pods.iter().enumerate() {
            let pod_ns = Netns::new(&format!("{id}-{name}")).expect("pod netns");
            let host_if = format!("lxc{id}{i}");
            netns::pod_link(
                &ns,
                &host_if,
                Some("br0"),
                &pod_ns,
                &format!("{ip}/16"),
                "10.244.0.1",
            )
            .expect("pod link");
            host_ifs.insert((*name).to_owned(), host_if);
            pod_map.insert(
                (*name).to_owned(),
                Pod {
                    ns: pod_ns,
                    ip: ip.parse().expect("ip"),
                },
            );
        }
        let apiserver = Process::spawn(
            apiserver_command(&ns, dir.path()),
            Some(&dir.path().join("apiserver.log")),
        )
        .expect("apiserver");
        let node = Node {
            id,
            workloads: Vec::new(),
            agent: None,
            apiserver,
            pods: pod_map,
            ns,
            cgroup,
            pins,
            dir,
            policy_attach: "auto",
            host_ifs,
        };
        eventually("the API server", Duration::from_secs(30), || {
            node.store(|mut c| async move { c.put("ready", "1", None).await.map(|_| ()) })
                .ok()
        });
        node
    }

    /// kill -9 of the API server.
    pub fn kill_apiserver(&mut self) {
        self.apiserver.kill();
    }

    /// Starts the API server again on its data.
    pub fn restart_apiserver(&mut self) {
        self.apiserver = Process::spawn(
            apiserver_command(&self.ns, self.dir.path()),
            Some(&self.log("apiserver")),
        )
        .expect("apiserver");
        eventually("the API server", Duration::from_secs(30), || {
            self.store(|mut c| async move { c.put("ready", "1", None).await.map(|_| ()) })
                .ok()
        });
    }

    /// Runs `op` with a client of the node's API server, on a thread inside the node's
    /// network namespace.
    pub fn store<F, Fut>(&self, op: F) -> Result<(), etcd_client::Error>
    where
        F: FnOnce(etcd_client::Client) -> Fut + Send,
        Fut: std::future::Future<Output = Result<(), etcd_client::Error>>,
    {
        let path = self.ns.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let options = etcd_client::ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(2))
                        .with_timeout(Duration::from_secs(5));
                    let client =
                        etcd_client::Client::connect(["http://127.0.0.1:2379"], Some(options))
                            .await?;
                    op(client).await
                })
            })
            .join()
            .expect("store thread")
        })
    }

    /// Writes records (`None`: delete) in one transaction.
    pub fn write(&self, records: Vec<(Key, Option<Record>)>) {
        self.store(move |mut c| async move {
            let ops: Vec<etcd_client::TxnOp> = records
                .into_iter()
                .map(|(k, r)| match r {
                    Some(r) => etcd_client::TxnOp::put(k.to_string(), r.encode(), None),
                    None => etcd_client::TxnOp::delete(k.to_string(), None),
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops))
                .await
                .map(|_| ())
        })
        .expect("write records");
    }

    /// The agent's command line.
    pub fn agent_command(&self) -> Command {
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_node-agent"));
        AgentArgs::new("n1", CLUSTER, "http://127.0.0.2:2379")
            .plaintext()
            .cgroup_root(self.cgroup.path())
            .bpffs(self.pins.0.root())
            .state_dir(&self.dir.path().join("agent"))
            .listen_metrics(METRICS)
            .args(["--remote-stale-after", "2s"])
            .args(["--policy-attach", self.policy_attach])
            .args(["--wg-backend", "none"])
            .args(["--log-level", "info,node_agent=debug"])
            .apply(&mut cmd);
        cmd
    }

    /// Starts the agent.
    pub fn start_agent(&mut self) {
        self.spawn_agent(&[]);
    }

    /// Starts the agent with `extra` arguments, publishing nothing.
    pub fn spawn_agent(&mut self, extra: &[&str]) {
        let mut cmd = self.agent_command();
        cmd.args(extra);
        let p = Process::spawn(cmd, Some(&self.log("agent"))).expect("agent");
        self.agent = Some(p);
    }

    /// Publishes an ipcache entry (identity `1/900 + i`) for each of `ips` that no cluster's
    /// records give one, as the publisher publishes every pod: a pod with no identity takes
    /// only this node's traffic (--enforce-unknown-pods).
    pub fn publish_pods(&self, ips: &[Ipv4Addr]) {
        let prefix = "mesh/v1/".to_owned();
        let mut have = Vec::new();
        self.store(|mut c| {
            let prefix = prefix.clone();
            let have = &mut have;
            async move {
                let resp = c
                    .get(
                        prefix,
                        Some(
                            etcd_client::GetOptions::new()
                                .with_prefix()
                                .with_keys_only(),
                        ),
                    )
                    .await?;
                *have = resp
                    .kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect();
                Ok(())
            }
        })
        .expect("reading the ipcache");
        let missing: Vec<(Key, Option<Record>)> = ips
            .iter()
            .enumerate()
            .filter(|(_, ip)| !have.iter().any(|k| k.ends_with(&format!("/ipcache/{ip}"))))
            .map(|(i, ip)| ipcache(CLUSTER, *ip, CLUSTER_ID << 16 | (900 + i as u32)))
            .collect();
        if !missing.is_empty() {
            self.write(missing);
        }
    }

    /// Where `what`'s output goes.
    pub fn log(&self, what: &str) -> PathBuf {
        self.dir.path().join(format!("{what}.log"))
    }

    /// Writes this cluster (complete) with `demo/echo` at 10.96.0.10 over `backends` (all
    /// ready), plus `extra` records, starts the agent and waits until the maps hold the
    /// backends on both ports.
    pub fn start_with_echo(&mut self, backends: &[Ipv4Addr], extra: Vec<(Key, Option<Record>)>) {
        let mut records = vec![cluster(CLUSTER, CLUSTER_ID)];
        records.extend(synced(CLUSTER));
        records.push(service(CLUSTER, "10.96.0.10", true));
        let ready: Vec<(Ipv4Addr, bool)> = backends.iter().map(|b| (*b, true)).collect();
        records.push(slice(CLUSTER, "echo-a", &ready));
        records.extend(extra);
        self.write(records);
        self.publish_pods(backends);
        self.start_agent();
        self.wait_maps("the echo service", |t| t.backends() == 2 * backends.len());
    }

    /// What the pinned maps hold now.
    pub fn tables(&self) -> Option<Tables> {
        KernelMaps::open(&self.pins.0)
            .ok()?
            .read()
            .ok()
            .map(|(t, _)| t)
    }

    /// Waits until the maps satisfy `f`.
    pub fn wait_maps(&self, what: &str, f: impl Fn(&Tables) -> bool) -> Tables {
        eventually(what, Duration::from_secs(30), || {
            self.tables().filter(|t| f(t))
        })
    }

    /// Starts `mesh-echo serve --name <pod> --tcp 8080 --udp 5353` in each pod named.
    pub fn serve(&mut self, pods: &[&str]) {
        for name in pods {
            let pod = &self.pods[*name];
            let mut cmd = pod.ns.command(sibling("mesh-echo"));
            cmd.args(["serve", "--name", name, "--tcp", "8080", "--udp", "5353"]);
            let p = Process::spawn(cmd, Some(&self.log(&format!("echo-{name}")))).expect("echo");
            self.workloads.push(p);
        }
    }

    /// A `mesh-echo probe` command run from `pod`, inside the agent's cgroup.
    pub fn probe_command(&self, pod: &str, args: &[&str]) -> Command {
        let mut inner = self.pods[pod].ns.command(sibling("mesh-echo"));
        inner.arg("probe").args(args);
        self.cgroup.wrap(&inner)
    }

    /// Runs a probe from `pod` and returns its JSON lines.
    pub fn probe(&self, pod: &str, args: &[&str]) -> Vec<Value> {
        let out = self.probe_command(pod, args).output().expect("probe");
        parse_lines(&String::from_utf8_lossy(&out.stdout))
    }

    /// The agent's metrics, fetched with curl inside the node's namespace; `None` when the
    /// agent does not answer (so a dead agent never reads as zeros).
    pub fn metrics(&self) -> Option<String> {
        let out = self
            .ns
            .command("curl")
            .args(["-sf", &format!("http://{METRICS}/metrics")])
            .output()
            .expect("curl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Node {
    /// `tc -s filter show dev <pod's host interface> <egress|ingress>` in the node's namespace
    /// (iproute2's view of the legacy tc filters).
    pub fn tc_filters(&self, pod: &str, direction: &str) -> String {
        let out = self
            .ns
            .command("tc")
            .args(["filter", "show", "dev", &self.host_ifs[pod], direction])
            .output()
            .expect("tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Compiles `tests/datapath/<name>.bpf.c` (another agent's program) into the node's
    /// directory with clang, as the build script compiles ours; returns the object.
    pub fn compile_bpf(&self, name: &str) -> PathBuf {
        let object = self.dir.path().join(format!("{name}.o"));
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/datapath")
            .join(format!("{name}.bpf.c"));
        let include = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
        lab::run(
            "clang",
            &[
                "-O2",
                "-g",
                "-target",
                "bpf",
                &include,
                "-c",
                source.to_str().expect("path"),
                "-o",
                object.to_str().expect("path"),
            ],
        )
        .expect("clang");
        object
    }

    /// How the policy programs are attached to each pod interface, by `node-agent maps`:
    /// interface → mode.
    pub fn attachments(&self) -> BTreeMap<String, String> {
        let out = self
            .ns
            .command(env!("CARGO_BIN_EXE_node-agent"))
            .args(["maps", "-o", "json", "--bpffs"])
            .arg(self.pins.0.root())
            .output()
            .expect("node-agent maps");
        let v: Value = serde_json::from_slice(&out.stdout).expect("maps json");
        v["policyAttach"]["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .map(|i| {
                (
                    i["interface"].as_str().expect("name").to_owned(),
                    i["mode"].as_str().expect("mode").to_owned(),
                )
            })
            .collect()
    }

    /// Our policy programs among the tc filters bpftool lists (`bpftool net show`; bpftool 7.1
    /// does not list tcx links): "<interface> <hook> <program> <id>".
    pub fn attached_programs(&self) -> Vec<String> {
        let out = self
            .ns
            .command("bpftool")
            .args(["-j", "net", "show"])
            .output()
            .expect("bpftool net");
        let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
        let mut found = Vec::new();
        for hooks in v.as_array().into_iter().flatten() {
            for entry in hooks["tc"].as_array().into_iter().flatten() {
                let name = entry["name"].as_str().unwrap_or("");
                if name.starts_with("pol_") {
                    found.push(format!(
                        "{} {} {name} {}",
                        entry["devname"].as_str().unwrap_or("?"),
                        entry["kind"].as_str().unwrap_or("?"),
                        entry["id"]
                    ));
                }
            }
        }
        found.sort();
        found
    }
}

/// The distinct replies (backend names) of probe lines.
pub fn replies(lines: &[Value]) -> std::collections::BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l["reply"].as_str().map(str::to_owned))
        .collect()
}

pub fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The value of series `name` (with its labels, as exposed); `None` when it is absent, so a
/// renamed metric never reads as zero.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// Records.

pub fn cluster(name: &str, id: u32) -> (Key, Option<Record>) {
    (
        Key::Cluster {
            cluster: name.to_owned(),
        },
        Some(Record::Cluster(ClusterRecord {
            schema: SCHEMA,
            name: name.to_owned(),
            id,
            ..Default::default()
        })),
    )
}

pub fn synced(cluster: &str) -> Vec<(Key, Option<Record>)> {
    Kind::SYNCED
        .iter()
        .map(|k| {
            (
                Key::Synced {
                    cluster: cluster.to_owned(),
                    kind: *k,
                },
                Some(Record::Synced(SyncedRecord { schema: SCHEMA })),
            )
        })
        .collect()
}

/// `demo/echo`, global, with ports `tcp` 80 and `udp` 53.
pub fn service(cluster: &str, vip: &str, shared: bool) -> (Key, Option<Record>) {
    (
        Key::Service {
            cluster: cluster.to_owned(),
            namespace: "demo".to_owned(),
            name: "echo".to_owned(),
        },
        Some(Record::Service(ServiceRecord {
            schema: SCHEMA,
            namespace: "demo".to_owned(),
            name: "echo".to_owned(),
            cluster_ips: vec![vip.to_owned()],
            ports: vec![port("tcp", 80, "TCP"), port("udp", 53, "UDP")],
            global: true,
            shared,
            affinity: Affinity::None as i32,
            ..Default::default()
        })),
    )
}

pub fn port(name: &str, port: u32, protocol: &str) -> Port {
    Port {
        name: name.to_owned(),
        port,
        protocol: protocol.to_owned(),
    }
}

/// A slice of `demo/echo` in `cluster`: `(ip, ready)`, ports `tcp` 8080 and `udp` 5353.
pub fn slice(cluster: &str, name: &str, endpoints: &[(Ipv4Addr, bool)]) -> (Key, Option<Record>) {
    (
        Key::Endpoints {
            cluster: cluster.to_owned(),
            namespace: "demo".to_owned(),
            service: "echo".to_owned(),
            slice: name.to_owned(),
        },
        Some(Record::Endpoints(EndpointsRecord {
            schema: SCHEMA,
            ports: vec![port("tcp", 8080, "TCP"), port("udp", 5353, "UDP")],
            endpoints: endpoints
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.octets().to_vec()],
                    ready: *ready,
                    serving: *ready,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    )
}

pub fn identity(cluster: &str, id: u32, labels: &[&str]) -> (Key, Option<Record>) {
    let mut labels: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
    labels.sort();
    (
        Key::Identity {
            cluster: cluster.to_owned(),
            id,
        },
        Some(Record::Identity(IdentityRecord {
            schema: SCHEMA,
            labels,
        })),
    )
}

pub fn ipcache(cluster: &str, ip: Ipv4Addr, identity: u32) -> (Key, Option<Record>) {
    (
        Key::IpCache {
            cluster: cluster.to_owned(),
            ip: ip.into(),
        },
        Some(Record::IpCache(IpCacheRecord {
            schema: SCHEMA,
            identity,
            node_ip: "10.244.0.1".to_owned(),
            pod: String::new(),
        })),
    )
}

/// Node `name` of this cluster with InternalIP `ip`.
pub fn node_record(name: &str, ip: &str) -> (Key, Option<Record>) {
    (
        Key::Node {
            cluster: CLUSTER.to_owned(),
            node: name.to_owned(),
        },
        Some(Record::Node(mesh_api::records::NodeRecord {
            schema: SCHEMA,
            name: name.to_owned(),
            internal_ips: vec![ip.to_owned()],
            ..Default::default()
        })),
    )
}

/// Runs `f` in the network namespace at `path`, on a thread of its own.
pub fn in_netns<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(path).expect("open netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}
