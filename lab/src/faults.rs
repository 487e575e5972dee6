//! Faults between clusters, enforced at the fabric by one nftables table that is rebuilt whole
//! (in one transaction) from the lab's recorded faults on every change, so what is enforced is
//! always exactly what `meshctl lab status` says.
//!
//! - A partition drops every packet between two clusters' prefixes (node network, pod range,
//!   members' host addresses), both ways.
//! - Loss drops a share of them: `numgen random mod 100 < P` (per packet, both ways).
//! - An isolated member drops every packet to and from its cluster's other members, in its own
//!   namespace ([`isolation_ruleset`]); the host, the agents and remote clusters still reach it.
//! - An unplugged node drops every packet to and from its address and its pod range that
//!   crosses the fabric: to the rest of the world it is a dead node (its processes run on,
//!   and its cluster's records still call its pods ready, as Kubernetes' do for 40 s or more
//!   after a node dies).
//! - Delay: this kernel has no netem, so delayed packets go to an NFQUEUE, one per degraded
//!   pair, that the lab's delay stage (the `mesh-delay` program, in the fabric) serves: it
//!   holds each packet for the pair's delay (± jitter) before it accepts it. The kernel has no
//!   nftables `queue` expression either (CONFIG_NFT_QUEUE is off) but has xtables' NFQUEUE
//!   target, so these rules are iptables rules ([`Faults::delay_rules`], chain
//!   [`DELAY_CHAIN`] in the filter table's FORWARD, after the nftables drops at priority -10).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::{Plan, indexed};
use crate::spec::LabSpec;

/// The nftables table of the faults (in the fabric's namespace).
pub const TABLE: &str = "raftmesh_lab_faults";
/// The iptables chain of the delay rules.
pub const DELAY_CHAIN: &str = "RAFTMESH_LAB_DELAY";
/// The NFQUEUE number of the first delayed pair (the next pairs take the next numbers).
pub const DELAY_QUEUE: u16 = 100;

/// Degradation of the link between two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degrade {
    /// Added one-way delay, in milliseconds.
    pub delay_ms: u32,
    /// Each packet's delay is uniform in `delay_ms` ± this (at most `delay_ms`).
    #[serde(default)]
    pub jitter_ms: u32,
    /// Packets dropped, in percent (0..=100).
    pub loss_pct: u8,
}

/// The faults in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Pairs of clusters (sorted names) cut from each other.
    pub partitions: Vec<(String, String)>,
    /// Degraded pairs (sorted names).
    pub degraded: BTreeMap<String, Degrade>,
    /// API-server members cut off from their cluster's other members (`cluster/member`,
    /// sorted); clients and agents still reach them.
    #[serde(default)]
    pub isolated: Vec<String>,
    /// Nodes cut off from the network (`cluster/node-1`, sorted).
    #[serde(default)]
    pub unplugged: Vec<String>,
}

/// The key of a pair, its names sorted: `a|b`.
pub fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

fn pair_key(a: &str, b: &str) -> String {
    let (a, b) = pair(a, b);
    format!("{a}|{b}")
}

impl Faults {
    /// Cuts `a` from `b`; false if already cut.
    pub fn partition(&mut self, a: &str, b: &str) -> bool {
        let p = pair(a, b);
        if self.partitions.contains(&p) {
            return false;
        }
        self.partitions.push(p);
        self.partitions.sort();
        true
    }

    /// Restores traffic between `a` and `b` (the partition and any degradation); false if
    /// nothing was in force.
    pub fn heal(&mut self, a: &str, b: &str) -> bool {
        let p = pair(a, b);
        let before = self.partitions.len();
        self.partitions.retain(|q| *q != p);
        let degraded = self.degraded.remove(&pair_key(a, b)).is_some();
        before != self.partitions.len() || degraded
    }

    /// Degrades the link between `a` and `b` (zero delay and loss removes the degradation).
    pub fn degrade(&mut self, a: &str, b: &str, d: Degrade) {
        if d.delay_ms == 0 && d.loss_pct == 0 {
            self.degraded.remove(&pair_key(a, b));
        } else {
            self.degraded.insert(pair_key(a, b), d);
        }
    }

    /// Cuts member `member` (`cluster/m1`) off from its peers; false if it was already.
    pub fn isolate(&mut self, member: &str) -> bool {
        if self.isolated.iter().any(|m| m == member) {
            return false;
        }
        self.isolated.push(member.to_owned());
        self.isolated.sort();
        true
    }

    /// Cuts node `node` (`cluster/node-1`) off the network; false if it was already.
    pub fn unplug(&mut self, node: &str) -> bool {
        if self.unplugged.iter().any(|n| n == node) {
            return false;
        }
        self.unplugged.push(node.to_owned());
        self.unplugged.sort();
        true
    }

    /// Puts node `node` back on the network; false if it was not unplugged.
    pub fn plug(&mut self, node: &str) -> bool {
        let before = self.unplugged.len();
        self.unplugged.retain(|n| n != node);
        before != self.unplugged.len()
    }

    /// Lets member `member` reach its peers again; false if it was not isolated.
    pub fn rejoin(&mut self, member: &str) -> bool {
        let before = self.isolated.len();
        self.isolated.retain(|m| m != member);
        before != self.isolated.len()
    }

    /// The degradation between `a` and `b`, if any.
    pub fn degradation(&self, a: &str, b: &str) -> Option<Degrade> {
        self.degraded.get(&pair_key(a, b)).copied()
    }

    /// Whether any pair is delayed (the delay stage must run).
    pub fn delays(&self) -> bool {
        self.degraded.values().any(|d| d.delay_ms > 0)
    }

    /// The delayed pairs' queues: (queue number, degradation), in the ruleset's order.
    pub fn delay_queues(&self) -> Vec<(u16, Degrade)> {
        self.degraded
            .values()
            .filter(|d| d.delay_ms > 0)
            .enumerate()
            .map(|(i, d)| (DELAY_QUEUE + i as u16, *d))
            .collect()
    }

    /// The nftables script that replaces the faults table with what is in force.
    pub fn ruleset(&self, plan: &Plan, spec: &LabSpec) -> String {
        let set = |name: &str| format!("@c_{}", name.replace('-', "_"));
        let mut out =
            format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
        for (i, c) in indexed(spec) {
            out.push_str(&format!(
                "\tset c_{} {{ type ipv4_addr; flags interval; elements = {{ {} }}; }}\n",
                c.name.replace('-', "_"),
                plan.cluster_prefixes(i, c).join(", ")
            ));
        }
        out.push_str(
            "\tchain forward {\n\t\ttype filter hook forward priority -10; policy accept;\n",
        );
        for (a, b) in &self.partitions {
            for (x, y) in [(a, b), (b, a)] {
                out.push_str(&format!(
                    "\t\tip saddr {} ip daddr {} counter drop comment \"partition {x} {y}\"\n",
                    set(x),
                    set(y)
                ));
            }
        }
        for label in &self.unplugged {
            let Some(node) = unplugged_node(plan, spec, label) else {
                continue;
            };
            let set = format!("{{ {}, {}/24 }}", node.ip, node.pod_net);
            for dir in ["saddr", "daddr"] {
                out.push_str(&format!(
                    "\t\tip {dir} {set} counter drop comment \"unplugged {label}\"\n"
                ));
            }
        }
        for (key, d) in &self.degraded {
            let (a, b) = key.split_once('|').expect("pair keys hold |");
            for (x, y) in [(a, b), (b, a)] {
                let sel = format!("ip saddr {} ip daddr {}", set(x), set(y));
                // `numgen random mod 100` is 0..=99: 100% is every packet.
                let chance = match d.loss_pct {
                    0 => None,
                    100.. => Some(String::new()),
                    p => Some(format!(" numgen random mod 100 < {p}")),
                };
                if let Some(chance) = chance {
                    out.push_str(&format!(
                        "\t\t{sel}{chance} counter drop comment \"loss {x} {y}\"\n"
                    ));
                }
            }
        }
        out.push_str("\t}\n}\n");
        out
    }
}

/// The plan of node `label` (`cluster/node-1`), if the lab has it.
fn unplugged_node(plan: &Plan, spec: &LabSpec, label: &str) -> Option<crate::plan::NodePlan> {
    let (cluster, node) = label.split_once('/')?;
    let c = spec.clusters.iter().find(|c| c.name == cluster)?;
    plan.nodes(c).into_iter().find(|n| n.name == node)
}

/// The nftables table that isolates a member (in the member's own namespace: members of a
/// cluster share a bridge in the fabric, so the fabric does not route between them).
pub const ISOLATE_TABLE: &str = "raftmesh_lab_isolate";

/// The nftables script for one member's namespace: with `isolated`, every packet to or from
/// `peers` (the other members' addresses) is dropped; without, the table is removed.
pub fn isolation_ruleset(isolated: bool, peers: &[std::net::Ipv4Addr]) -> String {
    let mut out = format!("table ip {ISOLATE_TABLE} {{}}\ndelete table ip {ISOLATE_TABLE}\n");
    if isolated && !peers.is_empty() {
        let set = peers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "table ip {ISOLATE_TABLE} {{\n\
             \tset peers {{ type ipv4_addr; elements = {{ {set} }}; }}\n\
             \tchain input {{\n\t\ttype filter hook input priority -10; policy accept;\n\
             \t\tip saddr @peers counter drop comment \"isolated\"\n\t}}\n\
             \tchain output {{\n\t\ttype filter hook output priority -10; policy accept;\n\
             \t\tip daddr @peers counter drop comment \"isolated\"\n\t}}\n}}\n"
        ));
    }
    out
}

impl Faults {
    /// The `iptables-restore --noflush` script that replaces the delay chain's rules: packets
    /// between a delayed pair's prefixes go to the pair's queue. An accept verdict from the
    /// stage resumes after this hook, so a packet is held once; `--queue-bypass`: should the
    /// stage be gone, packets pass undelayed.
    pub fn delay_rules(&self, plan: &Plan, spec: &LabSpec) -> String {
        let prefixes = |name: &str| -> Vec<String> {
            indexed(spec)
                .find(|(_, c)| c.name == name)
                .map(|(i, c)| plan.cluster_prefixes(i, c))
                .unwrap_or_default()
        };
        let mut out = format!("*filter\n:{DELAY_CHAIN} - [0:0]\n");
        let mut queue = DELAY_QUEUE;
        for (key, d) in &self.degraded {
            if d.delay_ms == 0 {
                continue;
            }
            let (a, b) = key.split_once('|').expect("pair keys hold |");
            for (x, y) in [(a, b), (b, a)] {
                for src in prefixes(x) {
                    for dst in prefixes(y) {
                        out.push_str(&format!(
                            "-A {DELAY_CHAIN} -s {src} -d {dst} -j NFQUEUE --queue-num {queue} --queue-bypass\n"
                        ));
                    }
                }
            }
            queue += 1;
        }
        out.push_str("COMMIT\n");
        out
    }
}

#[cfg(test)]
mod tests;
