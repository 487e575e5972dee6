//! `node-agent maps`: the pinned maps decoded, without the agent (like `cilium-dbg bpf lb
//! list`).

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::datapath::{self, AttachMode, Counters, KernelMaps, Pins, Result};
use crate::maps::{
    Iface, Tables, Verdict, backend_flags, iface_flags, ipcache_flags, protocol_name,
};

/// What `node-agent maps` shows.
#[derive(Debug, Clone)]
pub struct Shown {
    /// The maps' contents.
    pub tables: Tables,
    /// The counters.
    pub counters: Counters,
    /// The verdicts on new flows, by endpoint and source identity.
    pub verdicts: Vec<Verdict>,
    /// Where the policy programs are attached in this network namespace, and how.
    pub attachments: Vec<(String, AttachMode)>,
    /// What is behind each pod interface, by ifindex.
    pub ifaces: std::collections::BTreeMap<u32, Iface>,
}

/// What the maps under `pins` hold, and where the policy programs are attached.
pub fn read(pins: &Pins) -> Result<Shown> {
    let maps = KernelMaps::open(pins)?;
    let (tables, _) = maps.read()?;
    Ok(Shown {
        tables,
        counters: maps.counters()?,
        verdicts: maps.verdicts()?,
        attachments: datapath::attachments(pins),
        ifaces: maps.ifaces()?,
    })
}

/// The attachment modes in use, e.g. `tcx (4 interfaces)` or `none`.
fn modes(attachments: &[(String, AttachMode)]) -> String {
    let mut parts = Vec::new();
    for mode in [AttachMode::Tcx, AttachMode::Tc] {
        let n = attachments.iter().filter(|(_, m)| *m == mode).count();
        if n > 0 {
            parts.push(format!("{} ({n} interfaces)", mode.name()));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn flag_names(flags: u32) -> Vec<&'static str> {
    [
        (backend_flags::READY, "ready"),
        (backend_flags::TERMINATING, "terminating"),
        (backend_flags::LOCAL, "local"),
        (backend_flags::STALE, "stale"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

fn ip_kind(flags: u16) -> &'static str {
    match flags {
        f if f & ipcache_flags::HOST != 0 => "host",
        f if f & ipcache_flags::NODE != 0 => "node",
        _ => "pod",
    }
}

/// An identity as `cluster-id/local-id (number)`.
fn identity(id: u32) -> String {
    format!("{}/{} ({id})", id >> 16, id & 0xffff)
}

/// As JSON.
pub fn to_json(shown: &Shown) -> Value {
    let (t, c) = (&shown.tables, &shown.counters);
    json!({
        "policyAttach": {
            "modes": modes(&shown.attachments),
            "interfaces": shown.attachments.iter().map(|(name, mode)| json!({
                "interface": name,
                "mode": mode.name(),
            })).collect::<Vec<_>>(),
        },
        "podInterfaces": shown.ifaces.iter().map(|(index, i)| json!({
            "ifindex": index,
            "identity": i.identity,
            "podAddress": (!i.pod_ip.is_unspecified()).then(|| i.pod_ip.to_string()),
            "denyUnknown": i.flags & iface_flags::DENY_UNKNOWN != 0,
        })).collect::<Vec<_>>(),
        "verdicts": shown.verdicts.iter().map(|v| json!({
            "endpoint": v.endpoint,
            "peer": v.peer,
            "verdict": v.verdict,
            "flows": v.flows,
        })).collect::<Vec<_>>(),
        "services": t.services.iter().map(|(f, backends)| json!({
            "frontend": format!("{}:{}", f.vip, f.port),
            "protocol": protocol_name(f.proto),
            "backends": backends.iter().enumerate().map(|(slot, b)| json!({
                "slot": slot,
                "address": format!("{}:{}", b.ip, b.port),
                "clusterId": b.cluster_id,
                "flags": flag_names(b.flags),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "ipcache": t.ipcache.iter().map(|(p, i)| json!({
            "prefix": format!("{}/{}", p.ip, p.len),
            "identity": i.identity,
            "clusterId": i.cluster_id,
            "kind": ip_kind(i.flags),
        })).collect::<Vec<_>>(),
        "policy": {
            "enforced": t.enforced,
            "rules": t.rules.iter().map(|r| json!({
                "endpoint": r.endpoint,
                "peer": r.peer,
                "port": r.port,
                "protocol": protocol_name(r.proto),
            })).collect::<Vec<_>>(),
        },
        "counters": {
            "lb": c.lb.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "policy": c.policy.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
    })
}

/// As tables for people.
pub fn to_table(shown: &Shown) -> String {
    let (t, c) = (&shown.tables, &shown.counters);
    let mut out = String::new();
    let _ = writeln!(out, "POLICY ATTACH: {}", modes(&shown.attachments));
    for (name, mode) in &shown.attachments {
        let _ = writeln!(out, "  {name:<20} {}", mode.name());
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "SERVICES ({} frontends, {} backend slots)",
        t.services.len(),
        t.backends()
    );
    let _ = writeln!(
        out,
        "{:<24} {:<5} {:>4}  {:<22} {:>7}  FLAGS",
        "FRONTEND", "PROTO", "SLOT", "BACKEND", "CLUSTER"
    );
    for (f, backends) in &t.services {
        let frontend = format!("{}:{}", f.vip, f.port);
        if backends.is_empty() {
            let _ = writeln!(
                out,
                "{frontend:<24} {:<5} {:>4}  (no usable backend: connects are refused)",
                protocol_name(f.proto),
                "-"
            );
        }
        for (slot, b) in backends.iter().enumerate() {
            let _ = writeln!(
                out,
                "{frontend:<24} {:<5} {slot:>4}  {:<22} {:>7}  {}",
                protocol_name(f.proto),
                format!("{}:{}", b.ip, b.port),
                b.cluster_id,
                flag_names(b.flags).join(",")
            );
        }
    }
    let _ = writeln!(out, "\nIPCACHE ({} entries)", t.ipcache.len());
    let _ = writeln!(out, "{:<20} {:<20} KIND", "PREFIX", "IDENTITY");
    for (p, i) in &t.ipcache {
        let _ = writeln!(
            out,
            "{:<20} {:<20} {}",
            format!("{}/{}", p.ip, p.len),
            identity(i.identity),
            ip_kind(i.flags)
        );
    }
    let _ = writeln!(
        out,
        "\nPOLICY ({} enforced identities, {} rules)",
        t.enforced.len(),
        t.rules.len()
    );
    for e in &t.enforced {
        let _ = writeln!(out, "enforced {}", identity(*e));
    }
    let _ = writeln!(
        out,
        "{:<20} {:<20} {:>5}  PROTO",
        "ENDPOINT", "PEER", "PORT"
    );
    for r in &t.rules {
        let port = if r.port == 0 {
            "any".to_owned()
        } else {
            r.port.to_string()
        };
        let _ = writeln!(
            out,
            "{:<20} {:<20} {port:>5}  {}",
            identity(r.endpoint),
            identity(r.peer),
            protocol_name(r.proto)
        );
    }
    let _ = writeln!(out, "\nPOD INTERFACES ({})", shown.ifaces.len());
    let _ = writeln!(
        out,
        "{:<8} {:<20} {:<16} UNKNOWN POD",
        "IFINDEX", "IDENTITY", "ADDRESS"
    );
    for (index, i) in &shown.ifaces {
        let id = if i.identity == 0 {
            "(not known)".to_owned()
        } else {
            identity(i.identity)
        };
        let address = if i.pod_ip.is_unspecified() {
            "-".to_owned()
        } else {
            i.pod_ip.to_string()
        };
        let deny = if i.flags & iface_flags::DENY_UNKNOWN != 0 {
            "denied"
        } else {
            "open"
        };
        let _ = writeln!(out, "{index:<8} {id:<20} {address:<16} {deny}");
    }
    let _ = writeln!(
        out,
        "\nVERDICTS ON NEW FLOWS ({} rows)",
        shown.verdicts.len()
    );
    let _ = writeln!(
        out,
        "{:<20} {:<20} {:<16} {:>8}",
        "ENDPOINT", "SOURCE", "VERDICT", "FLOWS"
    );
    for v in &shown.verdicts {
        let peer = if v.peer == 0 {
            "(none)".to_owned()
        } else {
            identity(v.peer)
        };
        let _ = writeln!(
            out,
            "{:<20} {peer:<20} {:<16} {:>8}",
            identity(v.endpoint),
            v.verdict,
            v.flows
        );
    }
    let _ = writeln!(out, "\nCOUNTERS");
    for (name, n) in
        c.lb.iter()
            .map(|(k, v)| (format!("lb {k}"), v))
            .chain(c.policy.iter().map(|(k, v)| (format!("policy {k}"), v)))
    {
        let _ = writeln!(out, "{name:<26} {n}");
    }
    out
}

/// `node-agent wg`: the interface's peers as the interface reports them, named and aged from
/// the running agent's notes (`wireguard-peers.json` in its state directory).
pub mod wg {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::path::Path;

    use serde_json::{Value, json};

    use crate::wg::device::{Error, Interface};
    use crate::wg::{PeerNote, STATUS_FILE, key};

    /// One peer, for display.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Row {
        /// Public key (base64).
        pub public_key: String,
        /// Cluster and node, from the agent's notes (`?` when unknown).
        pub cluster: String,
        /// Node.
        pub node: String,
        /// Endpoint the interface reports.
        pub endpoint: Option<String>,
        /// Allowed IPs.
        pub allowed_ips: Vec<String>,
        /// Bytes received and sent.
        pub rx: u64,
        /// Bytes sent.
        pub tx: u64,
        /// Seconds since the transfer counters last changed, if the agent saw them change.
        pub transfer_age_secs: Option<i64>,
        /// Persistent keepalive.
        pub keepalive: Option<u16>,
        /// Whether the node answers the agent's reachability probes (`None`: not probed).
        pub reachable: Option<bool>,
    }

    /// Reads `interface` and the notes in `state_dir`.
    pub fn read(interface: &Interface, state_dir: &Path, now_ms: i64) -> Result<Vec<Row>, Error> {
        let peers = interface.read()?;
        let notes: BTreeMap<String, PeerNote> =
            std::fs::read_to_string(state_dir.join(STATUS_FILE))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        Ok(peers
            .into_iter()
            .map(|(k, s)| {
                let public_key = key::encode(&k);
                let note = notes.get(&public_key);
                Row {
                    cluster: note.map_or("?", |n| n.cluster.as_str()).to_owned(),
                    node: note.map_or("?", |n| n.node.as_str()).to_owned(),
                    transfer_age_secs: note
                        .and_then(|n| n.changed_at_ms)
                        .map(|at| (now_ms - at).max(0) / 1000),
                    public_key,
                    endpoint: s.endpoint.map(|e| e.to_string()),
                    allowed_ips: s
                        .applied
                        .allowed
                        .iter()
                        .map(|(a, l)| format!("{a}/{l}"))
                        .collect(),
                    rx: s.rx,
                    tx: s.tx,
                    keepalive: s.applied.keepalive,
                    reachable: note.and_then(|n| n.reachable),
                }
            })
            .collect())
    }

    /// As JSON.
    pub fn to_json(interface: &str, rows: &[Row]) -> Value {
        json!({
            "interface": interface,
            "peers": rows.iter().map(|r| json!({
                "cluster": r.cluster,
                "node": r.node,
                "publicKey": r.public_key,
                "endpoint": r.endpoint,
                "allowedIps": r.allowed_ips,
                "rxBytes": r.rx,
                "txBytes": r.tx,
                "transferAgeSeconds": r.transfer_age_secs,
                "persistentKeepalive": r.keepalive,
                "reachable": r.reachable,
            })).collect::<Vec<_>>(),
        })
    }

    /// As a table, like `wg show`.
    pub fn to_table(interface: &str, rows: &[Row]) -> String {
        let mut out = format!("interface: {interface} ({} peers)\n", rows.len());
        for r in rows {
            let _ = writeln!(out, "\npeer: {} ({}/{})", r.public_key, r.cluster, r.node);
            let _ = writeln!(
                out,
                "  endpoint: {}",
                r.endpoint.as_deref().unwrap_or("(none)")
            );
            let _ = writeln!(out, "  allowed ips: {}", r.allowed_ips.join(", "));
            let _ = writeln!(
                out,
                "  transfer: {} B received, {} B sent; {}",
                r.rx,
                r.tx,
                match r.transfer_age_secs {
                    Some(s) => format!("last changed {s} s ago"),
                    None => "no change seen by the agent".to_owned(),
                }
            );
            if let Some(k) = r.keepalive {
                let _ = writeln!(out, "  persistent keepalive: every {k} s");
            }
            let _ = writeln!(
                out,
                "  reachability: {}",
                match r.reachable {
                    Some(true) => "answers probes",
                    Some(false) => "answers no probe (its backends are a last resort)",
                    None => "not probed",
                }
            );
        }
        out
    }
}
