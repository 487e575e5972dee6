//! Legacy tc for kernels without tcx (before Linux 6.6: EKS AL2023 nodes of Kubernetes
//! 1.28–1.32 and Bottlerocket variants up to 1.32 run 6.1): the policy programs as
//! direct-action `cls_bpf` filters on the pod interface's `clsact` qdisc.
//!
//! Our filters sit at priority [`PRIORITY`] (1, the first priority a filter can have) with
//! one of two fixed handles ([`HANDLES`]). Cilium's legacy tc and the AWS network policy agent
//! both use priority 1 with handle 1; filters of one priority share one `cls_bpf` instance,
//! which runs them newest first, so a filter added after ours would run before it (and end the
//! chain if it returns anything but `TC_ACT_UNSPEC`). The agent checks the order on every scan
//! and moves ours back to the front without a gap: it adds the program under the other handle
//! (a new filter goes to the front) and then deletes the old one.
//!
//! Filters are not pinned: a filter holds its program, so the policy stays while the agent is
//! down, and a restarted agent finds its filters by priority, handle and program name and
//! adopts them as they are. `--uninstall` removes them from every interface.
//! The programs return `TC_ACT_UNSPEC` (-1, the same value as `TCX_NEXT`) unless they drop,
//! so a CNI's filters after ours still run.

use std::io;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_utils::nla::{Nla, NlasIterator};

use crate::netlink;

/// The priority of our filters.
pub const PRIORITY: u16 = 1;
/// The two handles our filters alternate between when moved to the front (`0x524d`, `0x524e`:
/// "RM", "RN").
pub const HANDLES: [u32; 2] = [0x524d, 0x524e];

/// `TCA_BPF_NAME` and `TCA_BPF_ID` in a `cls_bpf` filter's options.
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;

/// Which side of the clsact qdisc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Packets the interface receives (from the pod).
    Ingress,
    /// Packets the interface sends (into the pod).
    Egress,
}

impl Direction {
    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Direction::Ingress => 0xfff2,
                Direction::Egress => 0xfff3,
            },
        }
    }
}

/// A filter on one side of an interface's clsact qdisc, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Its priority (`pref` in `tc filter show`).
    pub priority: u16,
    /// Its handle.
    pub handle: u32,
    /// Its classifier (`bpf`, `u32`, `flower`, …).
    pub kind: String,
    /// A bpf filter's program name, as its loader named it.
    pub name: Option<String>,
    /// A bpf filter's program id.
    pub program_id: Option<u32>,
}

impl Filter {
    /// Whether it is our filter for `program`.
    pub fn is_ours(&self, program: &str) -> bool {
        self.kind == "bpf"
            && self.priority == PRIORITY
            && HANDLES.contains(&self.handle)
            && self.name.as_deref().is_some_and(|n| n.starts_with(program))
    }
}

/// The filters on `direction` of interface `index`, in the order the kernel runs them; none
/// when the interface has no clsact qdisc.
pub fn list(index: u32, direction: Direction) -> io::Result<Vec<Filter>> {
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.parent = direction.parent();
    let replies = match netlink::dump(RouteNetlinkMessage::GetTrafficFilter(msg)) {
        Ok(r) => r,
        // No clsact qdisc: nothing attached.
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewTrafficFilter(f) = reply else {
            continue;
        };
        let handle = u32::from(f.header.handle.major) << 16 | u32::from(f.header.handle.minor);
        // Each priority's classifier is listed once with handle 0 before its filters.
        if handle == 0 {
            continue;
        }
        let mut filter = Filter {
            priority: (f.header.info >> 16) as u16,
            handle,
            kind: String::new(),
            name: None,
            program_id: None,
        };
        for a in &f.attributes {
            match a {
                TcAttribute::Kind(k) => filter.kind = k.clone(),
                TcAttribute::Options(options) => {
                    for o in options {
                        if let TcOption::Other(nla) = o {
                            read_bpf_options(nla, &mut filter);
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(filter);
    }
    Ok(out)
}

/// `cls_bpf`'s options arrive as one nested attribute the netlink crate does not decode.
fn read_bpf_options(nested: &impl Nla, filter: &mut Filter) {
    let mut bytes = vec![0u8; nested.value_len()];
    nested.emit_value(&mut bytes);
    for nla in NlasIterator::new(&bytes[..]).flatten() {
        let value = nla.value();
        match nla.kind() {
            TCA_BPF_NAME => {
                let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                filter.name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
            }
            TCA_BPF_ID if value.len() == 4 => {
                filter.program_id =
                    Some(u32::from_ne_bytes([value[0], value[1], value[2], value[3]]));
            }
            _ => {}
        }
    }
}

/// What to do on one side of an interface so that our filter for a program runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Ours is there and first.
    Keep,
    /// Not there: add it with this handle.
    Add(u32),
    /// There but behind another filter: add it with the first handle, delete the second.
    MoveToFront(u32, u32),
}

/// The plan for `program` given the side's `filters` (kernel order).
pub fn plan(filters: &[Filter], program: &str) -> Plan {
    let ours = filters.iter().position(|f| f.is_ours(program));
    let free = |taken: Option<u32>| {
        HANDLES.into_iter().find(|h| {
            Some(*h) != taken
                && !filters
                    .iter()
                    .any(|f| f.priority == PRIORITY && f.handle == *h)
        })
    };
    match ours {
        Some(0) => Plan::Keep,
        Some(i) => match free(Some(filters[i].handle)) {
            Some(h) => Plan::MoveToFront(h, filters[i].handle),
            // Someone holds our other handle: stay where we are (reported as not first).
            None => Plan::Keep,
        },
        None => match free(None) {
            Some(h) => Plan::Add(h),
            None => Plan::Add(HANDLES[0]),
        },
    }
}

#[cfg(test)]
mod tests;
