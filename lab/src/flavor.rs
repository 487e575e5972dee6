//! Lab flavors: nodes built the way the platforms the mesh is for build them, so the agent
//! meets in the lab what it meets on them (a cluster's `flavor` in the spec).
//!
//! | | plain | talos | eks |
//! |---|---|---|---|
//! | pod link | `lxc<j>` port of bridge `br0` | `veth<hex>` port of bridge `cni0` (Flannel's bridge plugin) | `eni<hex>` point-to-point veth, pod /32 with gateway 169.254.1.1 (a static neighbour), host route `<pod>/32 dev eni…` |
//! | Node `podCIDR` | yes | yes | none (the agents' /32 fallback) |
//! | routing | main table | main table | `to <pod> lookup main` (512) for every pod; pods on a "secondary ENI" (odd slots) also `from <pod> lookup 2` (1536), table 2's default route out of the node's uplink |
//! | masquerade | none | Flannel `--ip-masq` in its nftables form (table `ip flannel-ipv4`, chain `postrtg`, as Talos 1.14+ runs Flannel with `EnableNFTables`) | the VPC CNI's `AWS-SNAT-CHAIN-0` (iptables nat: RETURN for the VPC, SNAT to the node's address for the rest) |
//! | agent | tcx, cgroup root = the node's `pods` cgroup | tcx, cgroup root = the node's cgroup, pods under `kubepods/<qos>/pod<uid>/<container>` (kubelet's cgroupfs driver, as Talos) | `--policy-attach tc` (AL2023's Linux 6.1 has no tcx), pods under `kubepods.slice/…/cri-containerd-<id>.scope` (systemd driver) |
//!
//! Sources: Flannel's rules from flannel-io/flannel `pkg/trafficmngr/{iptables,nftables}`;
//! Talos's Flannel (`--ip-masq`, nftables since v1.14) from siderolabs/talos; the VPC CNI's
//! rules, priorities, route tables and pod plumbing from aws/amazon-vpc-cni-k8s
//! `pkg/networkutils/network.go` and `cmd/routed-eni-cni-plugin/driver/driver.go`.
//! What a flavor cannot be: a real NIC per ENI (the secondary ENI's table routes out of the
//! node's only uplink), VXLAN between a cluster's nodes (the fabric routes pod ranges), the
//! VPC CNI's connmark rules for NodePorts, and another CNI's eBPF programs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a cluster's nodes are built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// The lab's own: `br0` and `lxc` ports, nothing masqueraded.
    #[default]
    Plain,
    /// Talos with its default CNI, Flannel.
    Talos,
    /// EKS with the AWS VPC CNI on an AL2023 node of Linux 6.1.
    Eks,
}

/// The route table of the lab's "secondary ENI" (the VPC CNI numbers an ENI's table after its
/// device number plus one: eth1's is 2).
pub const ENI_TABLE: u32 = 2;
/// The VPC CNI's rule priorities: every pod's `to <pod> lookup main`, and a secondary ENI pod's
/// `from <pod> lookup <table>`.
pub const TO_POD_PRIORITY: u32 = 512;
/// See [`TO_POD_PRIORITY`].
pub const FROM_POD_PRIORITY: u32 = 1536;
/// The VPC CNI's pod gateway.
pub const POD_GATEWAY: &str = "169.254.1.1";

impl Flavor {
    /// Its name in the spec.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Plain => "plain",
            Flavor::Talos => "talos",
            Flavor::Eks => "eks",
        }
    }

    /// The node's pod bridge, if pods hang off one.
    pub fn bridge(self) -> Option<&'static str> {
        match self {
            Flavor::Plain => Some("br0"),
            Flavor::Talos => Some("cni0"),
            Flavor::Eks => None,
        }
    }

    /// The host side of pod `pod`'s veth (the `j`-th pod of its node) in cluster `cluster`:
    /// `lxc<j>`; Flannel's bridge plugin's `veth` + 8 hex digits; the VPC CNI's `eni` + 11 hex
    /// digits of a hash of the pod's namespace and name.
    pub fn host_if(self, cluster: &str, namespace: &str, pod: &str, j: usize) -> String {
        let hash = fnv(&format!("{cluster}/{namespace}/{pod}"));
        match self {
            Flavor::Plain => format!("lxc{j}"),
            Flavor::Talos => format!("veth{:08x}", hash as u32),
            Flavor::Eks => format!("eni{:011x}", hash & 0xfff_ffff_ffff),
        }
    }

    /// Whether the Nodes carry a `podCIDR` (the VPC CNI leaves it empty).
    pub fn node_pod_cidr(self) -> bool {
        self != Flavor::Eks
    }

    /// Whether the `j`-th pod of a node sits on the node's secondary ENI (odd slots, on EKS).
    pub fn secondary_eni(self, j: usize) -> bool {
        self == Flavor::Eks && j % 2 == 1
    }

    /// The agent's flags this flavor adds.
    pub fn agent_args(self) -> Vec<String> {
        match self {
            // AL2023 for Kubernetes 1.28–1.32 runs Linux 6.1: no tcx.
            Flavor::Eks => vec!["--policy-attach".into(), "tc".into()],
            Flavor::Plain | Flavor::Talos => Vec::new(),
        }
    }

    /// The agent's `--cgroup-root` on the node whose cgroup is `node`: the whole node, as the
    /// chart's `/sys/fs/cgroup`, except on plain nodes (their `pods` cgroup).
    pub fn agent_cgroup_root(self, node: &Path) -> PathBuf {
        match self {
            Flavor::Plain => node.join("pods"),
            Flavor::Talos | Flavor::Eks => node.to_path_buf(),
        }
    }

    /// The cgroup the agent process runs in (a burstable pod of its own on Kubernetes).
    pub fn agent_cgroup(self, node: &Path) -> PathBuf {
        self.container_cgroup(node, "burstable", "raftmesh-agent", "agent")
    }

    /// The cgroup pod `pod`'s process runs in (a best-effort pod).
    pub fn pod_cgroup(self, node: &Path, pod: &str) -> PathBuf {
        self.container_cgroup(node, "besteffort", pod, "echo")
    }

    fn container_cgroup(self, node: &Path, qos: &str, pod: &str, container: &str) -> PathBuf {
        match self {
            Flavor::Plain if pod == "raftmesh-agent" => node.join("agent"),
            Flavor::Plain => node.join("pods").join(pod),
            // kubelet's cgroupfs driver: kubepods/<qos>/pod<uid>/<container id>.
            Flavor::Talos => node
                .join("kubepods")
                .join(qos)
                .join(format!("pod{pod}"))
                .join(container),
            // The systemd driver: slices, and containerd's scope.
            Flavor::Eks => {
                let uid = pod.replace('-', "_");
                node.join("kubepods.slice")
                    .join(format!("kubepods-{qos}.slice"))
                    .join(format!("kubepods-{qos}-pod{uid}.slice"))
                    .join(format!("cri-containerd-{container}.scope"))
            }
        }
    }

    /// The CNI's masquerade rules of a node, as (program, script): Flannel's nftables table
    /// for `nft -f`, the VPC CNI's chain for `iptables-restore --noflush`. `node_pods` is the
    /// node's pod range, `cluster_pods` the cluster's, `vpc` what the VPC CNI does not SNAT
    /// (the node network and the pod range), `node_ip` its primary address.
    pub fn masquerade(
        self,
        node_pods: &str,
        cluster_pods: &str,
        vpc: &[String],
        node_ip: &str,
    ) -> Option<(&'static str, String)> {
        match self {
            Flavor::Plain => None,
            // Flannel --ip-masq, nftables form (pkg/trafficmngr/nftables): traffic inside the
            // pod network returns; from the pod network to anywhere else is masqueraded.
            Flavor::Talos => Some((
                "nft",
                format!(
                    "table ip flannel-ipv4 {{\n\
                     \tchain postrtg {{\n\
                     \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                     \t\tmeta mark 0x4000 return\n\
                     \t\tip saddr {node_pods} ip daddr {cluster_pods} return\n\
                     \t\tip saddr {cluster_pods} ip daddr {node_pods} return\n\
                     \t\tip saddr != {node_pods} ip daddr {node_pods} return\n\
                     \t\tip saddr {cluster_pods} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
                     \t\tip saddr != {cluster_pods} ip daddr {cluster_pods} masquerade fully-random\n\
                     \t}}\n\
                     }}\n"
                ),
            )),
            // The VPC CNI (pkg/networkutils/network.go): RETURN for the VPC's CIDRs, SNAT to
            // the node's primary address for everything else not local.
            Flavor::Eks => {
                let mut s = String::from("*nat\n:AWS-SNAT-CHAIN-0 - [0:0]\n");
                s.push_str(
                    "-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n",
                );
                for cidr in vpc {
                    s.push_str(&format!(
                        "-A AWS-SNAT-CHAIN-0 -d {cidr} -m comment --comment \"AWS SNAT CHAIN\" -j RETURN\n"
                    ));
                }
                s.push_str(&format!(
                    "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {node_ip} --random-fully\nCOMMIT\n"
                ));
                Some(("iptables-restore", s))
            }
        }
    }
}

/// FNV-1a: a stable hash for interface names (the CNIs hash too; the exact function is theirs).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
