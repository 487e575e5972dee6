//! A scenario's report: markdown for people, JSON with everything.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::scenario::Report;

/// The markdown of `r`.
pub fn markdown(r: &Report, command: &str) -> String {
    let mut md = format!(
        "# mesh-chaos: {}\n\nCommand: `{command}`\n\nSeed {}, faults for {:.0} s, {:.0} s in all.\n\n",
        r.scenario, r.seed, r.fault_s, r.took_s
    );
    md.push_str("## Faults\n\n| at (s) | fault |\n|---:|---|\n");
    for f in &r.faults {
        let _ = writeln!(md, "| {:.1} | {} |", f.at_s, f.what);
    }
    md.push_str("\n## Violations\n\n| checker | violations |\n|---|---:|\n");
    for (checker, v) in &r.violations {
        let _ = writeln!(md, "| {checker} | {} |", v.len());
    }
    let _ = write!(
        md,
        "\n## Convergence\n\n{}\n\n",
        match r.convergence_s {
            Some(s) =>
                format!("Mirrors and every agent's maps agreed {s:.1} s after the faults ended."),
            None => "Mirrors and maps did **not** agree within the bound.".to_owned(),
        }
    );
    md.push_str("## Per cluster\n\n| cluster | KV answered / unanswered | acknowledged writes (deletes, leased puts) | watch events (reconnects) | writes during faults (failed) | KV answered during faults (required) | local connections during faults (failed; required) | resync writes / churn changes during faults |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (cluster, o) in &r.operations {
        let a = r.availability.get(cluster).cloned().unwrap_or(json!({}));
        let s = r.resync.get(cluster).cloned().unwrap_or(json!({}));
        let _ = writeln!(
            md,
            "| {cluster} | {} / {} | {} ({}, {}) | {} ({}) | {} ({}) | {} ({}) | {} ({}; {}) | {} / {} |",
            o["kv_answered"],
            o["kv_unanswered"],
            o["acknowledged_writes"],
            o["acknowledged_deletes"],
            o["acknowledged_leased_puts"],
            o["watch_events"],
            o["watch_reconnects"],
            a["writes_during_faults"],
            a["writes_failed_during_faults"],
            a["activity"]["kv_answered"],
            a["activity"]["kv_minimum"],
            a["local_connections_during_faults"],
            a["local_connections_failed_during_faults"],
            a["activity"]["connections_minimum"],
            s["writes"],
            s["churn_changes_during_faults"],
        );
    }
    let _ = writeln!(
        md,
        "\nA fault window is judged only if each honest cluster's clients had at least {} KV \
         operations answered and its probe made at least {} connections per second of it \
         (`inactive` otherwise).",
        crate::check::available::KV_ANSWERED_PER_S,
        crate::check::available::CONNECTIONS_PER_S
    );
    if let Some(g) = r
        .availability
        .get("apps")
        .and_then(|a| a.get("global_while_stale"))
    {
        let _ = write!(
            md,
            "\nWhile infra was surely stale (from the longer of --remote-stale-after and the mirror's \
             3 s of silence, plus 2 s, after the partition, to the \
             heal), apps/client's connections to demo/echo: {} of {} answered by apps, {} \
             failed; after convergence {} of {} answered by infra.\n",
            g["local"], g["connections"], g["failed"], g["remote_after_heal"], g["after_heal"]
        );
    }
    if let Some(f) = r.availability.get("apps").and_then(|a| a.get("failover")) {
        let _ = write!(
            md,
            "\nFailover: apps/client's connections to demo/echo (backends in both clusters) \
             begun in the first {} s of the fault: {} failed of {}; after that until the fault \
             ended: {} failed of {}.\n",
            f["window_s"], f["failed_within"], f["within"], f["failed_after"], f["after"]
        );
    }
    if r.violation_count() > 0 {
        md.push_str("\n## Violation details\n\n```json\n");
        md.push_str(&serde_json::to_string_pretty(&r.violations).unwrap_or_default());
        md.push_str("\n```\n");
    }
    md
}

/// Writes `<out>/<scenario>.md` and `.json`.
pub fn write(out: &Path, r: &Report, command: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let md = markdown(r, command);
    std::fs::write(out.join(format!("{}.md", r.scenario)), &md)?;
    let mut raw = serde_json::to_value(r).unwrap_or(json!({}));
    raw["command"] = json!(command);
    std::fs::write(
        out.join(format!("{}.json", r.scenario)),
        serde_json::to_string_pretty(&raw).unwrap_or_default() + "\n",
    )?;
    println!("{md}");
    Ok(())
}
