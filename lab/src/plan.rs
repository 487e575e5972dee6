//! Where everything of a lab goes: names and addresses, computed from the spec and the lab's
//! slot alone, so `up`, `status`, `kill`, `start` and `down` agree without recording more.
//!
//! ```text
//!  host ── rl<s>h 198.18.<s>.1/30 ═══ host 198.18.<s>.2/30 ── fabric netns (a router)
//!                                              │ bridge c<k> 192.168.<k>.254/24 per cluster
//!     member netns: eth0 192.168.<k>.<100+m>/24 and 198.18.<s>.<16(i+1)+m>/32 (host-reachable)
//!     node netns:   eth0 192.168.<k>.<n>/24, br0 10.<k>.<n>.1/24 ── lxc<j> ═ pod netns eth0
//!                                                                    10.<k>.<n>.<10+j>/24
//! ```
//! (a plain node; talos and eks nodes name and link their pods as those platforms do, see
//! [`crate::flavor`]: eks pods have 10.<k>.<n>.<10+j>/32 behind an `eni…` veth and no bridge).
//! `s` is the lab's slot (0..=511, one /24 of 198.18.0.0/15, the benchmarking range RFC 2544
//! reserves, so it is unlikely to be in use; `up` checks), `k` a cluster's id, `i` its index
//! in the spec, `m` a member and `n` a node number. Services get VIPs 10.255.<k>.10 …, outside
//! every pod range (cluster ids stop at 250), and imports ClusterSetIPs in 10.254.0.0/16
//! ([`CLUSTERSET_CIDR`]). Each node's agent answers `clusterset.local` DNS on the node's
//! address, port 53, and its pods' `resolv.conf` (`/etc/netns/<pod netns>/resolv.conf`, which
//! `ip netns exec` mounts) names it. Every name starts with the lab's tag `rl<s>`:
//! namespaces `rl<s>-…`, interfaces `rl<s>…`, the cgroup `raftmesh-lab-rl<s>`, the pin
//! directory `/sys/fs/bpf/raftmesh-lab-rl<s>`, so labs never share anything.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::spec::{ClusterSpec, LabSpec, PodSpec, ServiceSpec};

/// The client port of API-server members.
pub const CLIENT_PORT: u16 = 2379;
/// Their peer port.
pub const PEER_PORT: u16 = 2380;
/// The WireGuard port of every node.
pub const WG_PORT: u16 = 51871;
/// The agents' reachability probe port (their `--reachability-port` default, not passed, so a
/// spec's `agentArgs` can change it).
pub const PROBE_PORT: u16 = 51872;
/// The port every pod's echo workload serves, TCP and UDP.
pub const ECHO_PORT: u16 = 8080;
/// The range ClusterSetIPs are allocated from, the same in every cluster of a lab.
pub const CLUSTERSET_CIDR: &str = "10.254.0.0/16";
/// The port node agents answer `clusterset.local` DNS on (at the node's address).
pub const DNS_PORT: u16 = 53;
/// Slots of 198.18.0.0/15.
pub const SLOTS: u16 = 512;

/// A lab's names and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The slot.
    pub slot: u16,
}

/// An API-server member's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPlan {
    /// `m1` ….
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// On its cluster's network (peers and agents use it).
    pub ip: Ipv4Addr,
    /// Reachable from the host (meshctl and other clusters use it).
    pub host_ip: Ipv4Addr,
    /// Its veth in the fabric.
    pub fabric_if: String,
}

/// A node's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// `node-1` ….
    pub name: String,
    /// Its number.
    pub n: u8,
    /// Its namespace.
    pub netns: String,
    /// Its InternalIP.
    pub ip: Ipv4Addr,
    /// Its pod CIDR's network address (a /24).
    pub pod_net: Ipv4Addr,
    /// Its veth in the fabric.
    pub fabric_if: String,
    /// Its WireGuard interface (unique on the host: userspace sockets share one directory).
    pub wg_if: String,
}

/// A pod's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// The spec.
    pub spec: PodSpec,
    /// Its node.
    pub node: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The host side of its veth, in the node's namespace (named as its cluster's flavor
    /// names pod interfaces: `lxc<j>`, `veth<hex>`, `eni<hex>`).
    pub host_if: String,
    /// Its slot on its node (`j`).
    pub slot: usize,
}

impl Plan {
    /// The plan of slot `slot`.
    pub fn new(slot: u16) -> Plan {
        assert!(slot < SLOTS, "slot {slot} out of 0..{SLOTS}");
        Plan { slot }
    }

    /// The prefix of every name: `rl<s>`.
    pub fn tag(&self) -> String {
        format!("rl{}", self.slot)
    }

    /// The first two octets' third: 198.18.x or 198.19.x.
    fn host_octets(&self) -> (u8, u8) {
        (18 + (self.slot / 256) as u8, (self.slot % 256) as u8)
    }

    /// The lab's host range, 198.18.<s>.0/24.
    pub fn host_range(&self) -> (Ipv4Addr, u8) {
        let (b, c) = self.host_octets();
        (Ipv4Addr::new(198, b, c, 0), 24)
    }

    /// The host's end of the host link.
    pub fn host_ip(&self) -> Ipv4Addr {
        let (b, c) = self.host_octets();
        Ipv4Addr::new(198, b, c, 1)
    }

    /// The fabric's end of the host link.
    pub fn fabric_host_ip(&self) -> Ipv4Addr {
        let (b, c) = self.host_octets();
        Ipv4Addr::new(198, b, c, 2)
    }

    /// The host link's name on the host.
    pub fn host_if(&self) -> String {
        format!("{}h", self.tag())
    }

    /// The fabric's namespace.
    pub fn fabric_netns(&self) -> String {
        format!("{}-fabric", self.tag())
    }

    /// The lab's cgroup, under the cgroup2 mount.
    pub fn cgroup(&self, root: &Path) -> PathBuf {
        root.join(format!("raftmesh-lab-{}", self.tag()))
    }

    /// The lab's pin directory.
    pub fn pins(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/raftmesh-lab-{}", self.tag()))
    }

    /// Cluster `c`'s members (its index in the spec is `index`).
    pub fn members(&self, index: usize, c: &ClusterSpec) -> Vec<MemberPlan> {
        let (b, s) = self.host_octets();
        (1..=c.members)
            .map(|m| MemberPlan {
                name: format!("m{m}"),
                netns: format!("{}-{}-m{m}", self.tag(), c.name),
                ip: Ipv4Addr::new(192, 168, c.id, 100 + m),
                host_ip: Ipv4Addr::new(198, b, s, 16 * (index as u8 + 1) + m),
                fabric_if: format!("c{}m{m}", c.id),
            })
            .collect()
    }

    /// Cluster `c`'s nodes.
    pub fn nodes(&self, c: &ClusterSpec) -> Vec<NodePlan> {
        (1..=c.nodes)
            .map(|n| NodePlan {
                name: format!("node-{n}"),
                n,
                netns: format!("{}-{}-node-{n}", self.tag(), c.name),
                ip: Ipv4Addr::new(192, 168, c.id, n),
                pod_net: Ipv4Addr::new(10, c.id, n, 0),
                fabric_if: format!("c{}n{n}", c.id),
                wg_if: format!("{}c{}n{n}", self.tag(), c.id),
            })
            .collect()
    }

    /// Cluster `c`'s pods, each with its address on its node.
    pub fn pods(&self, c: &ClusterSpec) -> Vec<PodPlan> {
        let mut next: std::collections::BTreeMap<&str, u8> = Default::default();
        c.pods
            .iter()
            .map(|p| {
                let node = p.node.as_deref().expect("nodes are assigned at parse");
                let j = next.entry(node).or_insert(0);
                let n: u8 = node
                    .strip_prefix("node-")
                    .and_then(|n| n.parse().ok())
                    .expect("node names are validated");
                let plan = PodPlan {
                    spec: p.clone(),
                    node: node.to_owned(),
                    netns: format!("{}-{}-pod-{}", self.tag(), c.name, p.name),
                    ip: Ipv4Addr::new(10, c.id, n, 10 + *j),
                    host_if: c
                        .flavor
                        .host_if(&c.name, &p.namespace, &p.name, usize::from(*j)),
                    slot: usize::from(*j),
                };
                *j += 1;
                plan
            })
            .collect()
    }

    /// The VIP of cluster `c`'s `index`-th service.
    pub fn vip(c: &ClusterSpec, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 255, c.id, 10 + index as u8)
    }

    /// The prefixes cluster `c` owns (its node network, pod range and members' host
    /// addresses): what a partition cuts.
    pub fn cluster_prefixes(&self, index: usize, c: &ClusterSpec) -> Vec<String> {
        let (b, s) = self.host_octets();
        vec![
            format!("192.168.{}.0/24", c.id),
            format!("10.{}.0.0/16", c.id),
            format!("198.{b}.{s}.{}/28", 16 * (index + 1)),
        ]
    }

    /// Cluster `c`'s pod range (its `--pod-cidr`).
    pub fn pod_range(c: &ClusterSpec) -> String {
        format!("10.{}.0.0/16", c.id)
    }
}

/// The pods a service selects.
pub fn selected<'a>(s: &ServiceSpec, pods: &'a [PodPlan]) -> Vec<&'a PodPlan> {
    pods.iter()
        .filter(|p| {
            p.spec.namespace == s.namespace
                && s.selector
                    .iter()
                    .all(|(k, v)| p.spec.labels.get(k) == Some(v))
        })
        .collect()
}

/// Every cluster of `spec` with its index.
pub fn indexed(spec: &LabSpec) -> impl Iterator<Item = (usize, &ClusterSpec)> {
    spec.clusters.iter().enumerate()
}

#[cfg(test)]
mod tests;
