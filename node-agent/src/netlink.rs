//! rtnetlink requests, in one place: a dump and its messages, or a change and its
//! acknowledgement (the kernel's error, errno and all, when it refuses).

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_request::netlink_request_rtnl;

/// Sends `request` as a dump and returns the messages of the reply.
pub fn dump(request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let replies = netlink_request_rtnl(request, Some(NLM_F_REQUEST | NLM_F_DUMP))?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r.payload {
            NetlinkPayload::InnerMessage(m) => Some(m),
            _ => None,
        })
        .collect())
}

/// Sends `request` with `flags` (besides REQUEST and ACK) and waits for the acknowledgement.
pub fn change(request: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    netlink_request_rtnl(request, Some(NLM_F_REQUEST | NLM_F_ACK | flags))?;
    Ok(())
}
