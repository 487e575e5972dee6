//! The eBPF maps: their names, the encoding of every key and value, and [`Tables`], the
//! decoded contents the agent computes and compares.
//!
//! The keys and values are the C structs of `ebpf/abi.h`, which the programs include. Here
//! they cross into the kernel as byte arrays, encoded and decoded field by field at the
//! offsets of [`abi`] — the Rust mirror of that header, checked against what the C compiler
//! makes of it when the crate builds — so no `unsafe` `Pod` implementation is needed. IPv4
//! addresses and service ports are in network order (as the socket hooks see them); policy
//! ports, identities and counters in host order (as the programs compute them).
//!
//! # Update order
//! A connect reads a service's slot count, then one slot. The writer keeps that safe without
//! locks: a service grows by writing the new slots before the count, and shrinks by writing
//! the count before deleting the slots beyond it; a slot that still vanishes between the two
//! lookups (a shrink racing the read) falls back to slot 0, which exists while the count is
//! non-zero. See [`crate::reconcile`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::Serialize;

use abi::{get, put};

pub mod abi;

/// `struct svc_key` as bytes.
pub type SvcKey = [u8; abi::svc_key::SIZE];
/// `struct svc_value` as bytes.
pub type SvcValue = [u8; abi::svc_value::SIZE];
/// `struct backend_key` as bytes.
pub type BackendKey = [u8; abi::backend_key::SIZE];
/// `struct backend_value` as bytes.
pub type BackendValue = [u8; abi::backend_value::SIZE];
/// `struct ipcache_value` as bytes.
pub type IpcacheValue = [u8; abi::ipcache_value::SIZE];
/// `struct policy_key` as bytes.
pub type PolicyKey = [u8; abi::policy_key::SIZE];
/// `struct verdict_key` as bytes.
pub type VerdictKey = [u8; abi::verdict_key::SIZE];
/// `struct iface_value` as bytes.
pub type IfaceValue = [u8; abi::iface_value::SIZE];
/// `struct pod_flow_key` as bytes.
pub type PodFlowKey = [u8; abi::pod_flow_key::SIZE];
/// `struct pod_flow_value` as bytes.
pub type PodFlowValue = [u8; abi::pod_flow_value::SIZE];

/// Socket load balancing: frontend → slot count.
pub const LB_SERVICES: &str = "lb_services";
/// Socket load balancing: (frontend, slot) → backend.
pub const LB_BACKENDS: &str = "lb_backends";
/// Socket load balancing: (socket cookie, backend) → frontend, for replies and getpeername.
pub const LB_REVNAT: &str = "lb_revnat";
/// Socket load balancing counters.
pub const LB_COUNTERS: &str = "lb_counters";
/// IP prefix → identity (LPM trie).
pub const IPCACHE: &str = "ipcache";
/// Identities some policy selects.
pub const POL_ENFORCED: &str = "pol_enforced";
/// (endpoint identity, peer identity, port, protocol) allowed.
pub const POL_RULES: &str = "pol_rules";
/// Flows enforced pods started (UDP, ICMP echo), so their replies pass: slots per pod
/// interface.
pub const POL_POD_FLOWS: &str = "pol_pod_flows";
/// What is behind each pod interface ([`Iface`]), by ifindex.
pub const POL_IFACES: &str = "pol_ifaces";
/// Policy counters ([`POL_COUNTER_NAMES`]).
pub const POL_COUNTERS: &str = "pol_stats";
/// New flows judged, by (endpoint identity, source identity, verdict) (per-CPU LRU).
pub const POL_VERDICTS: &str = "pol_verdicts";

/// Maps of the socket load-balancing object.
pub const LB_MAPS: [&str; 4] = [LB_SERVICES, LB_BACKENDS, LB_REVNAT, LB_COUNTERS];
/// Maps of the policy object.
pub const POL_MAPS: [&str; 7] = [
    IPCACHE,
    POL_ENFORCED,
    POL_RULES,
    POL_POD_FLOWS,
    POL_IFACES,
    POL_COUNTERS,
    POL_VERDICTS,
];

/// Maps earlier versions pinned that this one no longer uses (a shared LRU of flows; the
/// four policy counters): their pins are removed at start and by `--uninstall`.
pub const RETIRED_MAPS: [&str; 2] = ["pol_flows", "pol_counters"];

/// [`Iface`] flags.
pub mod iface_flags {
    /// `--enforce-unknown-pods`: a pod whose identity is unknown takes only this node's host.
    pub const DENY_UNKNOWN: u32 = 1;
}

/// What is behind a pod interface (`struct iface_value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Iface {
    /// The pod's identity; 0 while unknown (the program learns it from what is delivered).
    pub identity: u32,
    /// [`iface_flags`].
    pub flags: u32,
    /// The pod's address when the agent knows it (a /32 route to the interface), else
    /// unspecified: packets from the pod with another source are dropped.
    pub pod_ip: Ipv4Addr,
    /// This node's `host` identity (admitted to a pod whose identity is unknown).
    pub host: u32,
}

/// `struct iface_value`.
pub fn iface_value(i: &Iface) -> IfaceValue {
    use abi::iface_value as l;
    let mut v = [0u8; l::SIZE];
    put(&mut v, l::IDENTITY, i.identity.to_ne_bytes());
    put(&mut v, l::FLAGS, i.flags.to_ne_bytes());
    put(&mut v, l::POD_IP, i.pod_ip.octets());
    put(&mut v, l::HOST, i.host.to_ne_bytes());
    v
}

/// Decodes `struct iface_value`.
pub fn iface_of(v: &IfaceValue) -> Iface {
    use abi::iface_value as l;
    Iface {
        identity: u32::from_ne_bytes(get(v, l::IDENTITY)),
        flags: u32::from_ne_bytes(get(v, l::FLAGS)),
        pod_ip: Ipv4Addr::from(get::<4>(v, l::POD_IP)),
        host: u32::from_ne_bytes(get(v, l::HOST)),
    }
}

/// The interface of a `struct pod_flow_key`.
pub fn pod_flow_ifindex(k: &PodFlowKey) -> u32 {
    u32::from_ne_bytes(get(k, abi::pod_flow_key::IFINDEX))
}

/// The verdicts of [`POL_VERDICTS`], by number.
pub const VERDICT_NAMES: [&str; 3] = ["allowed", "denied", "unknown_identity"];

/// One row of [`POL_VERDICTS`], summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The endpoint's identity.
    pub endpoint: u32,
    /// The source's identity (0: it had none).
    pub peer: u32,
    /// `allowed`, `denied` or `unknown_identity`.
    pub verdict: &'static str,
    /// New flows.
    pub flows: u64,
}

/// A [`POL_VERDICTS`] key (`struct verdict_key`): endpoint, peer, verdict, host order.
pub fn verdict_of(key: &VerdictKey, flows: u64) -> Verdict {
    use abi::verdict_key as l;
    let word = |f| u32::from_ne_bytes(get(key, f));
    Verdict {
        endpoint: word(l::ENDPOINT),
        peer: word(l::PEER),
        verdict: VERDICT_NAMES
            .get(word(l::VERDICT) as usize)
            .copied()
            .unwrap_or("other"),
        flows,
    }
}

/// Load-balancing counters, by slot (`enum lb_counter`).
pub const LB_COUNTER_NAMES: [&str; 4] = ["redirected", "no_backend", "slot_missing", "reversed"];
/// Policy counters, by slot (`enum pol_counter`).
pub const POL_COUNTER_NAMES: [&str; 7] = [
    "allowed",
    "policy_denied",
    "unknown_identity",
    "reply",
    "ipv6_denied",
    "spoofed",
    "awaiting_identity",
];

/// The policy counters that count drops.
pub const POL_DROPS: [&str; 5] = [
    "policy_denied",
    "unknown_identity",
    "ipv6_denied",
    "spoofed",
    "awaiting_identity",
];

/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// SCTP (policy only: the socket hooks balance TCP and UDP).
pub const PROTO_SCTP: u8 = 132;
/// ICMP (policy only).
pub const PROTO_ICMP: u8 = 1;

/// The protocol number of a Kubernetes protocol name; 0 for empty (any).
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "" => Some(0),
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

/// The name of a protocol number, for people.
pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        0 => "any",
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        PROTO_ICMP => "ICMP",
        _ => "other",
    }
}

/// A service frontend: VIP, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frontend {
    /// The cluster IP.
    pub vip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
}

/// Backend flags, for people and metrics (the program does not read them).
pub mod backend_flags {
    /// Ready.
    pub const READY: u32 = 1;
    /// Terminating but serving: used only while no backend is ready.
    pub const TERMINATING: u32 = 2;
    /// In this node's cluster.
    pub const LOCAL: u32 = 4;
    /// In a remote disconnected longer than `--remote-stale-after`.
    pub const STALE: u32 = 8;
}

/// One backend slot's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Backend {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// The cluster it is in.
    pub cluster_id: u16,
    /// [`backend_flags`].
    pub flags: u32,
}

/// An ipcache prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Prefix {
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

/// ipcache flags, for people.
pub mod ipcache_flags {
    /// A pod.
    pub const POD: u16 = 1;
    /// This node.
    pub const HOST: u16 = 2;
    /// Another node (of any cluster).
    pub const NODE: u16 = 4;
}

/// What an ipcache prefix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IpInfo {
    /// `cluster_id << 16 | local_id`.
    pub identity: u32,
    /// The owning cluster.
    pub cluster_id: u16,
    /// [`ipcache_flags`].
    pub flags: u16,
}

/// One allowed (endpoint, peer, port, protocol); 0 port or protocol means any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Rule {
    /// The selected endpoint's identity.
    pub endpoint: u32,
    /// The peer's identity.
    pub peer: u32,
    /// Destination port, 0 for any.
    pub port: u16,
    /// Protocol number, 0 for any.
    pub proto: u8,
}

/// The decoded contents of the programmable maps (not the LRU and counter maps): what the
/// agent computes as desired and reads back as applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tables {
    /// Frontends and their slots, in slot order. An empty list refuses connections.
    pub services: BTreeMap<Frontend, Vec<Backend>>,
    /// ipcache.
    pub ipcache: BTreeMap<Prefix, IpInfo>,
    /// Identities some policy selects.
    pub enforced: BTreeSet<u32>,
    /// Allowed flows to enforced identities.
    pub rules: BTreeSet<Rule>,
}

impl Tables {
    /// Number of backend slots.
    pub fn backends(&self) -> usize {
        self.services.values().map(Vec::len).sum()
    }
}

/// `struct svc_key`.
pub fn svc_key(f: &Frontend) -> SvcKey {
    use abi::svc_key as l;
    let mut k = [0u8; l::SIZE];
    put(&mut k, l::VIP, f.vip.octets());
    put(&mut k, l::PORT, f.port.to_be_bytes());
    put(&mut k, l::PROTO, [f.proto]);
    k
}

/// Decodes `struct svc_key`.
pub fn frontend_of(k: &SvcKey) -> Frontend {
    use abi::svc_key as l;
    Frontend {
        vip: Ipv4Addr::from(get::<4>(k, l::VIP)),
        port: u16::from_be_bytes(get(k, l::PORT)),
        proto: get::<1>(k, l::PROTO)[0],
    }
}

/// `struct svc_value`.
pub fn svc_value(count: u32) -> SvcValue {
    use abi::svc_value as l;
    let mut v = [0u8; l::SIZE];
    put(&mut v, l::COUNT, count.to_ne_bytes());
    v
}

/// The slot count of a `struct svc_value`.
pub fn count_of(v: &SvcValue) -> u32 {
    u32::from_ne_bytes(get(v, abi::svc_value::COUNT))
}

/// `struct backend_key`.
pub fn backend_key(f: &Frontend, slot: u32) -> BackendKey {
    use abi::backend_key as l;
    let mut k = [0u8; l::SIZE];
    put(&mut k, l::SVC, svc_key(f));
    put(&mut k, l::SLOT, slot.to_ne_bytes());
    k
}

/// Decodes `struct backend_key`.
pub fn slot_of(k: &BackendKey) -> (Frontend, u32) {
    use abi::backend_key as l;
    (
        frontend_of(&get(k, l::SVC)),
        u32::from_ne_bytes(get(k, l::SLOT)),
    )
}

/// `struct backend_value`.
pub fn backend_value(b: &Backend) -> BackendValue {
    use abi::backend_value as l;
    let mut v = [0u8; l::SIZE];
    put(&mut v, l::IP, b.ip.octets());
    put(&mut v, l::PORT, b.port.to_be_bytes());
    put(&mut v, l::CLUSTER_ID, b.cluster_id.to_ne_bytes());
    put(&mut v, l::FLAGS, b.flags.to_ne_bytes());
    v
}

/// Decodes `struct backend_value`.
pub fn backend_of(v: &BackendValue) -> Backend {
    use abi::backend_value as l;
    Backend {
        ip: Ipv4Addr::from(get::<4>(v, l::IP)),
        port: u16::from_be_bytes(get(v, l::PORT)),
        cluster_id: u16::from_ne_bytes(get(v, l::CLUSTER_ID)),
        flags: u32::from_ne_bytes(get(v, l::FLAGS)),
    }
}

/// `struct ipcache_value`.
pub fn ipcache_value(i: &IpInfo) -> IpcacheValue {
    use abi::ipcache_value as l;
    let mut v = [0u8; l::SIZE];
    put(&mut v, l::IDENTITY, i.identity.to_ne_bytes());
    put(&mut v, l::CLUSTER_ID, i.cluster_id.to_ne_bytes());
    put(&mut v, l::FLAGS, i.flags.to_ne_bytes());
    v
}

/// Decodes `struct ipcache_value`.
pub fn ipinfo_of(v: &IpcacheValue) -> IpInfo {
    use abi::ipcache_value as l;
    IpInfo {
        identity: u32::from_ne_bytes(get(v, l::IDENTITY)),
        cluster_id: u16::from_ne_bytes(get(v, l::CLUSTER_ID)),
        flags: u16::from_ne_bytes(get(v, l::FLAGS)),
    }
}

/// `struct policy_key`.
pub fn rule_key(r: &Rule) -> PolicyKey {
    use abi::policy_key as l;
    let mut k = [0u8; l::SIZE];
    put(&mut k, l::ENDPOINT, r.endpoint.to_ne_bytes());
    put(&mut k, l::PEER, r.peer.to_ne_bytes());
    put(&mut k, l::PORT, r.port.to_ne_bytes());
    put(&mut k, l::PROTO, [r.proto]);
    k
}

/// Decodes `struct policy_key`.
pub fn rule_of(k: &PolicyKey) -> Rule {
    use abi::policy_key as l;
    Rule {
        endpoint: u32::from_ne_bytes(get(k, l::ENDPOINT)),
        peer: u32::from_ne_bytes(get(k, l::PEER)),
        port: u16::from_ne_bytes(get(k, l::PORT)),
        proto: get::<1>(k, l::PROTO)[0],
    }
}

#[cfg(test)]
mod tests;
