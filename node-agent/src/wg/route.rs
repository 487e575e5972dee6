//! The WireGuard interface's link state and routes, over rtnetlink.
//!
//! wireguard-control sets keys and peers only; bringing the link up and routing the peers'
//! pod CIDRs through it are ours. Our routes carry their own protocol number
//! ([`RTPROT_RAFTMESH`], `proto 109` in `ip route`), so the agent lists exactly the routes it
//! made and never touches another's.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink;

use super::peers::Cidr;

/// The protocol number of the agent's routes.
pub const RTPROT_RAFTMESH: u8 = 109;

/// The interface index of `name`, if it exists.
pub fn index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Sets link `index` up with `mtu`.
pub fn link_up(index: u32, mtu: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    netlink::change(RouteNetlinkMessage::SetLink(msg), 0)
}

/// Creates a WireGuard link `name` in the kernel; where WireGuard is a module, the kernel
/// loads it for this request. The error is the kernel's (`EOPNOTSUPP` without the module).
pub fn create_wireguard(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Wireguard,
        )]));
    netlink::change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
}

/// Deletes link `index`.
pub fn delete_link(index: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    netlink::change(RouteNetlinkMessage::DelLink(msg), 0)
}

fn route(index: u32, (dst, len): Cidr) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = len;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Other(RTPROT_RAFTMESH);
    msg.header.scope = RouteScope::Link;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

/// Routes `cidr` through link `index` (replacing a route of ours to it), with `src` as the
/// source address for the host's own connections.
pub fn add(index: u32, cidr: Cidr, src: Option<Ipv4Addr>) -> io::Result<()> {
    let mut msg = route(index, cidr);
    if let Some(src) = src {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
    }
    netlink::change(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Removes our route to `cidr` through link `index`.
pub fn delete(index: u32, cidr: Cidr) -> io::Result<()> {
    netlink::change(RouteNetlinkMessage::DelRoute(route(index, cidr)), 0)
}

/// Our routes through link `index` in the main table, with their source address.
pub fn list(index: u32) -> io::Result<BTreeSet<(Cidr, Option<Ipv4Addr>)>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    let mut out = BTreeSet::new();
    for reply in netlink::dump(RouteNetlinkMessage::GetRoute(msg))? {
        let RouteNetlinkMessage::NewRoute(r) = reply else {
            continue;
        };
        if r.header.protocol != RouteProtocol::Other(RTPROT_RAFTMESH)
            || r.header.table != RouteHeader::RT_TABLE_MAIN
        {
            continue;
        }
        let mut dst = None;
        let mut oif = None;
        let mut src = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => src = Some(*s),
                _ => {}
            }
        }
        if oif == Some(index) {
            let dst = dst.unwrap_or(Ipv4Addr::UNSPECIFIED);
            out.insert(((dst, r.header.destination_prefix_length), src));
        }
    }
    Ok(out)
}

/// An address of this host (in this network namespace) inside one of `cidrs`: the source for
/// host connections to remote pods, so replies come back through the tunnel (the remote
/// node accepts only our pod CIDRs from us).
pub fn local_address_in(cidrs: &[Cidr]) -> Option<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .find(|ip| cidrs.iter().any(|c| contains(*c, *ip)))
}

/// Whether `cidr` holds `ip`.
pub fn contains((net, len): Cidr, ip: Ipv4Addr) -> bool {
    let mask = u32::MAX
        .checked_shl(u32::from(32 - len.min(32)))
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c = ("10.1.2.0".parse().unwrap(), 24);
        assert!(contains(c, "10.1.2.1".parse().unwrap()));
        assert!(!contains(c, "10.1.3.1".parse().unwrap()));
        assert!(contains(
            ("0.0.0.0".parse().unwrap(), 0),
            "1.2.3.4".parse().unwrap()
        ));
    }
}
