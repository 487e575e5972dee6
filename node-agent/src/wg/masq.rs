//! The masquerade exemption: pod traffic to other clusters' pods keeps its pod source address.
//!
//! CNIs masquerade pod traffic that leaves the pod network: Flannel's `--ip-masq` (Talos's
//! default) MASQUERADEs everything from the cluster's pod range to anywhere outside it, the AWS
//! VPC CNI SNATs everything to non-VPC destinations to the node's primary address
//! (AWS-SNAT-CHAIN-0), ip-masq-agent and Cilium's iptables masquerade do the same for their
//! ranges. Traffic into the tunnel would then leave with a node address: the remote node's
//! WireGuard drops it (the source is not among our allowed IPs), and if it did not, the remote's
//! policy would see this cluster's `remote-node` instead of the pod's identity.
//!
//! The exemption is one nftables table of the agent's own, `ip raftmesh`, with a NAT chain at
//! postrouting priority `srcnat - 10`: it runs before every masquerading rule, whether that rule
//! lives in iptables-nft, iptables-legacy or a native nftables table (all sit at `srcnat`, 100).
//! For traffic from this node's pods (`sources`) to other clusters' pods (`destinations`), it
//! sets up a NAT binding to the packet's own source address: a no-op, but the kernel runs NAT
//! chains of a hook only until one sets up a binding (`nf_nat_inet_fn`), so no later
//! masquerade applies to the connection. An ACCEPT would not do: it ends only its own chain.
//! Verified on this machine against a MASQUERADE rule in iptables-nft, in iptables-legacy and
//! in a native nftables chain (the privileged tests and the lab's Talos and EKS flavors run it
//! against Flannel's and the VPC CNI's rules). Cilium's BPF masquerade acts on the native
//! devices only, which tunneled packets reach already encrypted.
//!
//! The table is written whole in one `nft -f` transaction (so it is idempotent), read back
//! with `nft -j` and compared on every tick, and deleted by `--uninstall`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::peers::Cidr;
use super::route::contains;

/// The agent's nftables table (family `ip`).
pub const TABLE: &str = "raftmesh";
/// Its NAT chain.
pub const CHAIN: &str = "nomasq";
/// The chain's priority: `srcnat - 10`, ahead of every masquerading rule at `srcnat`.
pub const PRIORITY: i64 = 90;

/// A failure running nft.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// nft could not run.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// nft refused.
    #[error("{program} {what}: {stderr}")]
    Nft {
        /// The program.
        program: String,
        /// What it was asked.
        what: &'static str,
        /// Its complaint.
        stderr: String,
    },
    /// nft's JSON was not what nft prints.
    #[error("{program} -j: unexpected output: {reason}")]
    Json {
        /// The program.
        program: String,
        /// What was wrong.
        reason: String,
    },
}

/// What the exemption covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exemption {
    /// This node's pods (its pod CIDRs, or its pods' /32s).
    pub sources: BTreeSet<Cidr>,
    /// Other clusters' pods (every WireGuard peer's allowed IPs).
    pub destinations: BTreeSet<Cidr>,
}

impl Exemption {
    /// The exemption with each set reduced to the CIDRs no other of its CIDRs contains (an
    /// interval set refuses overlapping elements).
    pub fn new(
        sources: impl IntoIterator<Item = Cidr>,
        destinations: impl IntoIterator<Item = Cidr>,
    ) -> Exemption {
        Exemption {
            sources: outermost(sources),
            destinations: outermost(destinations),
        }
    }
}

/// The CIDRs of `cidrs` (normalized to their network address) that no other contains.
fn outermost(cidrs: impl IntoIterator<Item = Cidr>) -> BTreeSet<Cidr> {
    let all: BTreeSet<Cidr> = cidrs.into_iter().map(normalize).collect();
    all.iter()
        .filter(|(ip, len)| {
            !all.iter()
                .any(|(o, olen)| olen < len && contains((*o, *olen), *ip))
        })
        .copied()
        .collect()
}

fn normalize((ip, len): Cidr) -> Cidr {
    let len = len.min(32);
    let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
    (Ipv4Addr::from(u32::from(ip) & mask), len)
}

fn elements(set: &BTreeSet<Cidr>) -> String {
    if set.is_empty() {
        return String::new();
    }
    let list: Vec<String> = set
        .iter()
        .map(|(ip, len)| {
            if *len == 32 {
                ip.to_string()
            } else {
                format!("{ip}/{len}")
            }
        })
        .collect();
    format!(" elements = {{ {} }};", list.join(", "))
}

/// The nft script that replaces the table with `e` in one transaction (the first line makes
/// the delete succeed when the table is missing).
pub fn script(e: &Exemption) -> String {
    format!(
        "table ip {TABLE} {{}}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tset sources {{ type ipv4_addr; flags interval;{src} }}\n\
         \tset destinations {{ type ipv4_addr; flags interval;{dst} }}\n\
         \tchain {CHAIN} {{\n\
         \t\ttype nat hook postrouting priority {PRIORITY}; policy accept;\n\
         \t\tip saddr @sources ip daddr @destinations counter snat ip to ip saddr comment \"raftmesh: pod traffic to other clusters keeps its pod address\"\n\
         \t}}\n\
         }}\n",
        src = elements(&e.sources),
        dst = elements(&e.destinations),
    )
}

/// What the table of `nft -j list table ip raftmesh` exempts, and the packets its rule
/// counted; `None` when the chain or its rule is not as [`script`] writes it (edited, or half
/// deleted).
pub fn parse(json: &Value) -> Result<Option<(Exemption, u64)>, String> {
    let items = json["nftables"].as_array().ok_or("no \"nftables\" array")?;
    let mut exemption = Exemption::default();
    let mut chain_ok = false;
    let mut rule_packets = None;
    for item in items {
        if let Some(set) = item.get("set") {
            let target = match set["name"].as_str() {
                Some("sources") => &mut exemption.sources,
                Some("destinations") => &mut exemption.destinations,
                _ => continue,
            };
            for elem in set["elem"].as_array().into_iter().flatten() {
                target.insert(element(elem).ok_or_else(|| format!("set element {elem}"))?);
            }
        } else if let Some(chain) = item.get("chain") {
            if chain["name"] == CHAIN {
                chain_ok = chain["type"] == "nat"
                    && chain["hook"] == "postrouting"
                    && chain["prio"].as_i64() == Some(PRIORITY)
                    && chain["policy"] == "accept";
            }
        } else if let Some(rule) = item.get("rule") {
            if rule["chain"] != CHAIN {
                continue;
            }
            let expr = rule["expr"].as_array().ok_or("a rule without expr")?;
            let matches_set = |field: &str, set: &str| {
                expr.iter().any(|e| {
                    e["match"]["left"]["payload"]["field"] == field
                        && e["match"]["right"] == format!("@{set}").as_str()
                        && e["match"]["op"] == "=="
                })
            };
            let snat_to_self = expr
                .iter()
                .any(|e| e["snat"]["addr"]["payload"]["field"] == "saddr");
            if matches_set("saddr", "sources")
                && matches_set("daddr", "destinations")
                && snat_to_self
            {
                let packets = expr
                    .iter()
                    .find_map(|e| e["counter"]["packets"].as_u64())
                    .unwrap_or(0);
                rule_packets = Some(packets);
            }
        }
    }
    Ok(match (chain_ok, rule_packets) {
        (true, Some(packets)) => Some((exemption, packets)),
        _ => None,
    })
}

/// One element of an interval set: `"10.1.2.3"` or `{"prefix": {"addr": …, "len": …}}`.
fn element(v: &Value) -> Option<Cidr> {
    if let Some(s) = v.as_str() {
        return Some((s.parse().ok()?, 32));
    }
    let p = &v["prefix"];
    Some((
        p["addr"].as_str()?.parse().ok()?,
        u8::try_from(p["len"].as_u64()?).ok()?,
    ))
}

/// The nft program.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
}

impl Nft {
    /// nft at `program` (looked up in `PATH` when bare).
    pub fn new(program: &Path) -> Nft {
        Nft {
            program: program.to_path_buf(),
        }
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }

    fn run(&self, args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<String, Error> {
        let spawn = |source| Error::Spawn {
            program: self.name(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        if !out.status.success() {
            return Err(Error::Nft {
                program: self.name(),
                what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What the table exempts now, with its rule's packet count; `None` when the table is
    /// missing or not as the agent writes it.
    pub fn read(&self) -> Result<Option<(Exemption, u64)>, Error> {
        let out = match self.run(&["-j", "list", "table", "ip", TABLE], None, "list") {
            Ok(out) => out,
            // nft says "No such file or directory" for a missing table.
            Err(Error::Nft { stderr, .. }) if stderr.contains("No such file") => return Ok(None),
            Err(e) => return Err(e),
        };
        let json: Value = serde_json::from_str(&out).map_err(|e| Error::Json {
            program: self.name(),
            reason: e.to_string(),
        })?;
        parse(&json).map_err(|reason| Error::Json {
            program: self.name(),
            reason,
        })
    }

    /// Replaces the table with `e`.
    pub fn apply(&self, e: &Exemption) -> Result<(), Error> {
        self.run(&["-f", "-"], Some(&script(e)), "-f (writing the table)")
            .map(drop)
    }

    /// Deletes the table. Returns whether it existed.
    pub fn remove(&self) -> Result<bool, Error> {
        match self.run(&["delete", "table", "ip", TABLE], None, "delete table") {
            Ok(_) => Ok(true),
            Err(Error::Nft { stderr, .. }) if stderr.contains("No such file") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
