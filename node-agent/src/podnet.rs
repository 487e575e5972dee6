//! Pod interfaces, found by what they are, and the pod addresses of this node that no
//! interface with the policy programs leads to.
//!
//! Every CNI connects a pod the same way: a veth pair with one end in the pod's network
//! namespace. Only the host ends' names differ — `lxc…` (Cilium), `eni…` (the AWS VPC CNI),
//! `veth…` (Flannel's bridge ports of `cni0`, Talos's default), `cali…` (Calico) — so the
//! agent takes the host end of every veth whose peer is in another network namespace
//! (`IFLA_LINK_NETNSID` is set) and that holds no IPv4 address. The last condition leaves
//! out a node's own uplink where that is a veth too (a node in a container, as kind makes, or
//! the lab's nodes); no CNI addresses the host side of a pod veth. `--pod-interface-prefix`
//! adds links of other kinds by name.
//!
//! An interface the agent could not attach to, or a pod reached through something else than
//! a pod interface (a bridge with a port that is not one, a tunnel, a dummy), leaves pods
//! without policy. [`unenforced`] finds them from the main routing table — how the node
//! delivers traffic to the pod — so the agent can count them and report itself degraded
//! instead of enforcing nothing silently.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink;
use crate::wg::peers::Cidr;
use crate::wg::route::contains;

/// A network interface of this namespace, as far as finding pod interfaces needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its kind (`veth`, `bridge`, `dummy`, …), if it has one (a physical NIC has none).
    pub kind: Option<String>,
    /// Its peer (a veth's other end) is in another network namespace.
    pub peer_elsewhere: bool,
    /// The bridge (or bond) it is a port of.
    pub master: Option<u32>,
    /// It holds an IPv4 address.
    pub has_ipv4: bool,
}

/// A route of the main table, as far as reaching a pod needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its destination.
    pub dst: Cidr,
    /// Its output interface (none for a multipath route).
    pub oif: Option<u32>,
    /// It goes through a gateway (the destination is not on a link of this node).
    pub via_gateway: bool,
}

/// The interfaces of this network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let mut links = Vec::new();
    for reply in netlink::dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        let RouteNetlinkMessage::NewLink(l) = reply else {
            continue;
        };
        let mut link = Link {
            index: l.header.index,
            name: String::new(),
            kind: None,
            peer_elsewhere: false,
            master: None,
            has_ipv4: false,
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::LinkNetNsId(_) => link.peer_elsewhere = true,
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(match k {
                                InfoKind::Veth => "veth".to_owned(),
                                other => other.to_string(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        links.push(link);
    }
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let mut addressed = BTreeSet::new();
    for reply in netlink::dump(RouteNetlinkMessage::GetAddress(msg))? {
        if let RouteNetlinkMessage::NewAddress(a) = reply
            && a.attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(_))))
        {
            addressed.insert(a.header.index);
        }
    }
    for l in &mut links {
        l.has_ipv4 = addressed.contains(&l.index);
    }
    Ok(links)
}

/// The unicast IPv4 routes of the main table.
pub fn main_routes() -> io::Result<Vec<Route>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    let mut out = Vec::new();
    for reply in netlink::dump(RouteNetlinkMessage::GetRoute(msg))? {
        let RouteNetlinkMessage::NewRoute(r) = reply else {
            continue;
        };
        let mut table = u32::from(r.header.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut oif = None;
        let mut via_gateway = false;
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(_) => via_gateway = true,
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
            continue;
        }
        out.push(Route {
            dst: (dst, r.header.destination_prefix_length),
            oif,
            via_gateway,
        });
    }
    Ok(out)
}

/// The pod interfaces among `links`: with `discover`, veths whose peer is in another
/// namespace and that hold no IPv4 address; and links named with one of `prefixes`.
/// (name, index).
pub fn pod_interfaces(
    links: &[Link],
    discover: bool,
    prefixes: &[String],
) -> BTreeSet<(String, u32)> {
    links
        .iter()
        .filter(|l| {
            (discover && l.kind.as_deref() == Some("veth") && l.peer_elsewhere && !l.has_ipv4)
                || prefixes.iter().any(|p| l.name.starts_with(p.as_str()))
        })
        .map(|l| (l.name.clone(), l.index))
        .collect()
}

/// The pods of `pods` that traffic reaches through no interface in `enforcing` (indexes of
/// interfaces with the policy programs), each with why. A pod behind a bridge is enforced
/// when every port of that bridge is.
pub fn unenforced(
    pods: &BTreeSet<Ipv4Addr>,
    routes: &[Route],
    links: &[Link],
    enforcing: &BTreeSet<u32>,
) -> BTreeMap<Ipv4Addr, String> {
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    let name = |i: u32| {
        by_index
            .get(&i)
            .map_or_else(|| format!("#{i}"), |l| l.name.clone())
    };
    let mut out = BTreeMap::new();
    for ip in pods {
        let route = routes
            .iter()
            .filter(|r| contains(r.dst, *ip))
            .max_by_key(|r| r.dst.1);
        let why = match route {
            None => Some("no route to it".to_owned()),
            Some(r) if r.via_gateway => Some(format!(
                "routed through a gateway{} (not a pod of this node's links)",
                r.oif
                    .map(|i| format!(" out of {}", name(i)))
                    .unwrap_or_default()
            )),
            Some(Route { oif: None, .. }) => Some("routed over several paths".to_owned()),
            Some(Route { oif: Some(i), .. }) if enforcing.contains(i) => None,
            Some(Route { oif: Some(i), .. }) => match by_index.get(i) {
                Some(l) if l.kind.as_deref() == Some("bridge") => {
                    let ports: Vec<&&Link> =
                        by_index.values().filter(|p| p.master == Some(*i)).collect();
                    let bare: Vec<String> = ports
                        .iter()
                        .filter(|p| !enforcing.contains(&p.index))
                        .map(|p| p.name.clone())
                        .collect();
                    if ports.is_empty() {
                        Some(format!("behind bridge {} with no ports", l.name))
                    } else if bare.is_empty() {
                        None
                    } else {
                        Some(format!(
                            "behind bridge {}, whose ports {} have no policy programs",
                            l.name,
                            bare.join(", ")
                        ))
                    }
                }
                Some(l) => Some(format!(
                    "routed via {} ({}), which has no policy programs",
                    l.name,
                    l.kind.as_deref().unwrap_or("device")
                )),
                None => Some(format!("routed via interface #{i}, which is gone")),
            },
        };
        if let Some(why) = why {
            out.insert(*ip, why);
        }
    }
    out
}

#[cfg(test)]
mod tests;
