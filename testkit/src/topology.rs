//! A test network: clusters of nodes with pods, joined by a fabric (the harness of
//! [`crate::mesh`]; a `meshctl lab` instance builds its own network from its plan).
//!
//! ```text
//!                         fabric netns (routes between the cluster networks)
//!        ┌──────────── bridge c<k> 192.168.<k>.254/24 ────────────┐
//!   api netns 192.168.<k>.100     node netns 192.168.<k>.<n> (eth0)
//!   (the cluster's API server)     └─ br0 10.<k>.<n>.1/24 ─┬─ pod netns 10.<k>.<n>.10
//!                                                          └─ pod netns 10.<k>.<n>.11 …
//! ```
//! Cluster `k` (its id, 1..=250) owns 192.168.`k`.0/24 for its API server and nodes and
//! 10.`k`.0.0/16 for pods; node `n` (1..=99) owns pod CIDR 10.`k`.`n`.0/24. The fabric also
//! routes every pod CIDR to its node, as a flat underlay would, so traffic between clusters
//! flows in the clear unless something (WireGuard) routes it otherwise; a fabric filter
//! ([`Topology::only_udp_between_nodes`]) proves which. Every namespace is owned by the
//! topology and deleted on drop.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use lab::netns::{self, Netns};

/// What to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The cluster's name.
    pub name: String,
    /// Its id (1..=250): its address ranges derive from it.
    pub id: u8,
    /// Nodes (1..=99).
    pub nodes: u8,
    /// Pods per node.
    pub pods_per_node: u8,
}

/// A pod: its namespace and address.
#[derive(Debug)]
pub struct PodNet {
    /// `<node>-p<i>`.
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A node: its namespace, fabric address and pods.
#[derive(Debug)]
pub struct NodeNet {
    /// `node-<n>`.
    pub name: String,
    /// Its pods (dropped before the node).
    pub pods: Vec<PodNet>,
    /// Its namespace.
    pub ns: Netns,
    /// Its address on the cluster network (its InternalIP).
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: (Ipv4Addr, u8),
}

/// A cluster's network.
#[derive(Debug)]
pub struct ClusterNet {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: u8,
    /// Its nodes.
    pub nodes: Vec<NodeNet>,
    /// The API server's namespace.
    pub api: Netns,
    /// The API server's address.
    pub api_ip: Ipv4Addr,
}

impl ClusterNet {
    /// The cluster's pod range, 10.`id`.0.0/16.
    pub fn pod_range(&self) -> String {
        format!("10.{}.0.0/16", self.id)
    }
}

/// The whole network.
#[derive(Debug)]
pub struct Topology {
    /// The unique prefix of every name.
    pub id: String,
    /// Clusters (dropped before the fabric).
    pub clusters: Vec<ClusterNet>,
    /// The fabric.
    pub fabric: Netns,
}

/// The nftables table of the fabric filter.
const FILTER_TABLE: &str = "labfabric";

fn sysctl(ns: &Netns, setting: &str) -> Result<()> {
    let out = ns.command("sysctl").args(["-qw", setting]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "sysctl {setting} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A router: forwarding on, and no reverse-path filter (replies may come back another way).
fn router(ns: &Netns) -> Result<()> {
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        sysctl(ns, s)?;
    }
    Ok(())
}

impl Topology {
    /// Builds the clusters of `spec`, names prefixed with `id` (unique on the host).
    pub fn build(id: &str, spec: &[ClusterSpec]) -> Result<Topology> {
        let fabric = Netns::new(&format!("{id}-f"))?;
        router(&fabric)?;
        let mut topo = Topology {
            id: id.to_owned(),
            clusters: Vec::new(),
            fabric,
        };
        for c in spec {
            anyhow::ensure!(
                (1..=250).contains(&c.id) && (1..=99).contains(&c.nodes),
                "cluster {}: id 1..=250 and 1..=99 nodes",
                c.name
            );
            let k = c.id;
            let bridge = format!("c{k}");
            netns::bridge(&topo.fabric, &bridge, &format!("192.168.{k}.254/24"))?;
            let api = Netns::new(&format!("{id}-c{k}-api"))?;
            let api_ip = Ipv4Addr::new(192, 168, k, 100);
            netns::pod_link(
                &topo.fabric,
                &format!("c{k}api"),
                Some(&bridge),
                &api,
                &format!("{api_ip}/24"),
                &format!("192.168.{k}.254"),
            )
            .with_context(|| format!("cluster {}: API server link", c.name))?;
            let mut cluster = ClusterNet {
                name: c.name.clone(),
                id: k,
                nodes: Vec::new(),
                api,
                api_ip,
            };
            for n in 1..=c.nodes {
                let ns = Netns::new(&format!("{id}-c{k}-n{n}"))?;
                let ip = Ipv4Addr::new(192, 168, k, n);
                netns::pod_link(
                    &topo.fabric,
                    &format!("c{k}n{n}"),
                    Some(&bridge),
                    &ns,
                    &format!("{ip}/24"),
                    &format!("192.168.{k}.254"),
                )
                .with_context(|| format!("cluster {}: node {n} link", c.name))?;
                router(&ns)?;
                netns::bridge(&ns, "br0", &format!("10.{k}.{n}.1/24"))?;
                topo.fabric.ip(&[
                    "route",
                    "add",
                    &format!("10.{k}.{n}.0/24"),
                    "via",
                    &ip.to_string(),
                ])?;
                let mut node = NodeNet {
                    name: format!("node-{n}"),
                    pods: Vec::new(),
                    ns,
                    ip,
                    pod_cidr: (Ipv4Addr::new(10, k, n, 0), 24),
                };
                for p in 0..c.pods_per_node {
                    let pod_ns = Netns::new(&format!("{id}-c{k}-n{n}-p{p}"))?;
                    let pod_ip = Ipv4Addr::new(10, k, n, 10 + p);
                    netns::pod_link(
                        &node.ns,
                        &format!("p{p}"),
                        Some("br0"),
                        &pod_ns,
                        &format!("{pod_ip}/24"),
                        &format!("10.{k}.{n}.1"),
                    )?;
                    node.pods.push(PodNet {
                        name: format!("{}-p{p}", node.name),
                        ns: pod_ns,
                        ip: pod_ip,
                    });
                }
                cluster.nodes.push(node);
            }
            topo.clusters.push(cluster);
        }
        Ok(topo)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> &ClusterNet {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    /// Every node's address.
    pub fn node_ips(&self) -> Vec<Ipv4Addr> {
        self.clusters
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| n.ip))
            .collect()
    }

    /// Lets only UDP to `port` between node addresses (what WireGuard sends), UDP to
    /// `probe_port` between them (the agents' reachability probes and answers: 12 bytes of
    /// nonce, counted apart) and traffic to or from the API servers cross the fabric;
    /// everything else (pod traffic in the clear, anything else between nodes) is dropped and
    /// counted.
    pub fn only_tunnels_and_api_servers(&self, port: u16, probe_port: u16) -> Result<()> {
        let list = |ips: Vec<Ipv4Addr>| {
            ips.iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let nodes = list(self.node_ips());
        let apis = list(self.clusters.iter().map(|c| c.api_ip).collect());
        let rules = format!(
            "table ip {FILTER_TABLE} {{\n\
             \tset nodes {{ type ipv4_addr; elements = {{ {nodes} }}; }}\n\
             \tset apis {{ type ipv4_addr; elements = {{ {apis} }}; }}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tip saddr @apis accept\n\
             \t\tip daddr @apis accept\n\
             \t\tip saddr @nodes ip daddr @nodes udp dport {port} counter accept comment \"tunnel\"\n\
             \t\tip saddr @nodes ip daddr @nodes udp dport {probe_port} udp length 20 counter accept comment \"probe\"\n\
             \t\tcounter drop comment \"other\"\n\
             \t}}\n\
             }}\n"
        );
        let mut child = self
            .fabric
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("nft")?;
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), rules.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Packets counted by the fabric filter: (tunnel UDP accepted, other dropped).
    pub fn fabric_counters(&self) -> Result<(u64, u64)> {
        let out = self
            .fabric
            .command("nft")
            .args(["list", "chain", "ip", FILTER_TABLE, "forward"])
            .output()?;
        anyhow::ensure!(out.status.success(), "nft list: no fabric filter");
        let text = String::from_utf8_lossy(&out.stdout);
        let packets = |comment| lab::nft_packets(&text, comment).unwrap_or(0);
        Ok((packets("tunnel"), packets("other")))
    }

    /// Removes the fabric filter.
    pub fn clear_fabric_filter(&self) -> Result<()> {
        let out = self
            .fabric
            .command("nft")
            .args(["delete", "table", "ip", FILTER_TABLE])
            .output()?;
        anyhow::ensure!(out.status.success(), "nft delete table");
        Ok(())
    }
}
