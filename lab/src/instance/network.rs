//! The lab's network: namespaces, links, routes, the fabric's rulesets (the watch table, the
//! faults in force), and the ENI pods of `eks` nodes.

use super::*;
use crate::netns;

impl Lab {
    pub(super) fn build_network(&self) -> Result<()> {
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
                netns::create(&m.netns)?;
                netns::veth(
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
                netns::create(&n.netns)?;
                netns::veth(
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
                netns::create(&pod.netns)?;
                resolv_conf(&pod.netns, &pod.spec.namespace, node.ip)?;
                match c.flavor.bridge() {
                    Some(bridge) => {
                        let gw = Ipv4Addr::from(u32::from(node.pod_net) + 1);
                        netns::veth(
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

    /// Counters of traffic between clusters at the fabric, by pair: WireGuard (UDP between
    /// node addresses, but for the agents' reachability probes) and pod traffic in the clear.
    /// Not UDP to the WireGuard port alone: the EKS flavor's SNAT (`--random-fully`, as the VPC
    /// CNI's) gives a node's own WireGuard packets a random source port when it opens the
    /// flow, and the peer then sends to that port (WireGuard's roaming), so either port may be
    /// another.
    pub(super) fn watch_ruleset(&self) -> String {
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
                    "\t\tip saddr @nodes_{x} ip daddr @nodes_{y} udp sport != {PROBE_PORT} udp dport != {PROBE_PORT} counter comment \"tunnel {} {}\"\n\
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
    pub(super) fn apply_faults(&self, was_isolated: &[String]) -> Result<()> {
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

    /// Peers on WireGuard interface `iface` (`wg show`), if it exists.
    pub(super) fn wg_peer_count(&self, iface: &str) -> Option<usize> {
        let out = Command::new("wg")
            .args(["show", iface, "peers"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
    }
}

/// A router: forwarding on, and no reverse-path filter (replies may come back another way).
/// `/etc/netns/<netns>/resolv.conf` of a pod: its node's agent answers `clusterset.local`, with
/// the search path a pod of `namespace` has for it. `ip netns exec` mounts it over
/// `/etc/resolv.conf`, so glibc's resolver (getaddrinfo) in the pod uses it.
pub(super) fn resolv_conf(netns: &str, namespace: &str, node: Ipv4Addr) -> Result<()> {
    let dir = resolv_dir(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = format!(
        "# Written by the raftmesh lab: this pod's node agent answers clusterset.local.\n\
         nameserver {node}\n\
         search {namespace}.svc.clusterset.local svc.clusterset.local\n\
         options ndots:5 timeout:1 attempts:2\n"
    );
    let file = dir.join("resolv.conf");
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))
}

/// `/etc/netns/<netns>`: what `ip netns exec` mounts into namespace `netns`.
pub(super) fn resolv_dir(netns: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(netns)
}

pub(super) fn router(ns: &str) -> Result<()> {
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        sh(in_netns(ns, "sysctl").args(["-qw", s]))?;
    }
    Ok(())
}

/// A pod as the AWS VPC CNI links it: an `eni…` veth without a bridge, the pod's address a /32
/// with the link-local gateway 169.254.1.1 pinned to the host side's MAC, a host route to the
/// pod, `to <pod> lookup main`, and for a pod of a secondary ENI `from <pod> lookup <table>`.
pub(super) fn eni_pod(node: &str, pod: &PodPlan, secondary: bool) -> Result<()> {
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
