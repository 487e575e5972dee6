//! Policy routing: `ip rule to <remote pod CIDR> lookup main`, so traffic to other clusters
//! finds the tunnel's routes in the main table whatever table a pod's own rules pick.
//!
//! The AWS VPC CNI puts every pod of a secondary ENI behind `from <pod IP> lookup <ENI table>`
//! (priority 1536), whose only route is the default one out of that ENI: without a rule of
//! ours ahead of it, such a pod's traffic to a remote cluster's pods would leave the node
//! outside the tunnel. Our rules carry the agent's protocol number
//! ([`super::route::RTPROT_RAFTMESH`], `proto 109` in `ip rule`), so the agent lists and removes
//! exactly its own.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{RouteHeader, RouteProtocol};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::peers::Cidr;
use super::route::RTPROT_RAFTMESH;
use crate::netlink;

fn rule((dst, len): Cidr, priority: u32) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.dst_len = len;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.action = RuleAction::ToTable;
    msg.attributes
        .push(RuleAttribute::Destination(IpAddr::V4(dst)));
    msg.attributes.push(RuleAttribute::Priority(priority));
    msg.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(
            RTPROT_RAFTMESH,
        )));
    msg.attributes
        .push(RuleAttribute::Table(u32::from(RouteHeader::RT_TABLE_MAIN)));
    msg
}

/// Adds `to <cidr> lookup main` at `priority`.
pub fn add(cidr: Cidr, priority: u32) -> io::Result<()> {
    netlink::change(
        RouteNetlinkMessage::NewRule(rule(cidr, priority)),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes our rule for `cidr` at `priority`.
pub fn delete(cidr: Cidr, priority: u32) -> io::Result<()> {
    netlink::change(RouteNetlinkMessage::DelRule(rule(cidr, priority)), 0)
}

/// Our rules (IPv4, our protocol): (destination, priority).
pub fn list() -> io::Result<BTreeSet<(Cidr, u32)>> {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    let mut out = BTreeSet::new();
    for reply in netlink::dump(RouteNetlinkMessage::GetRule(msg))? {
        let RouteNetlinkMessage::NewRule(r) = reply else {
            continue;
        };
        let mut ours = false;
        let mut dst = None;
        let mut priority = 0;
        for a in &r.attributes {
            match a {
                RuleAttribute::Protocol(p) => ours = *p == RouteProtocol::Other(RTPROT_RAFTMESH),
                RuleAttribute::Destination(IpAddr::V4(d)) => dst = Some(*d),
                RuleAttribute::Priority(p) => priority = *p,
                _ => {}
            }
        }
        if ours && let Some(dst) = dst {
            out.insert(((dst, r.header.dst_len), priority));
        }
    }
    Ok(out)
}
