//! `node-agent maps`: the pinned maps decoded, without the agent (like `cilium-dbg bpf lb
//! list`).

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::datapath::{Counters, KernelMaps, Pins, Result};
use crate::maps::{Tables, backend_flags, ipcache_flags, protocol_name};

/// What the maps under `pins` hold.
pub fn read(pins: &Pins) -> Result<(Tables, Counters)> {
    let maps = KernelMaps::open(pins)?;
    let (tables, _) = maps.read()?;
    Ok((tables, maps.counters()?))
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
pub fn to_json(t: &Tables, c: &Counters) -> Value {
    json!({
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
pub fn to_table(t: &Tables, c: &Counters) -> String {
    let mut out = String::new();
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
