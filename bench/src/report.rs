//! The results of a `mesh-bench kv` run: a markdown table, the raw JSON and a PNG chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::floor::Floor;
use crate::kv::workloads::{Outcome, Sizes};
use crate::machine::Machine;
use crate::stats::Percentiles;

/// Which sizes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// The sizes of the committed results (about 10 minutes on 2 cores).
    Full,
    /// Every workload, tiny; proves the benchmark runs (CI).
    Smoke,
}

impl Size {
    pub fn sizes(self) -> Sizes {
        match self {
            Size::Full => Sizes::full(),
            Size::Smoke => Sizes::smoke(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Size::Full => "full",
            Size::Smoke => "smoke",
        }
    }
}

/// One server's outcomes, in workload order.
#[derive(Debug, Clone, Serialize)]
pub struct ServerRun {
    pub server: &'static str,
    pub version: String,
    pub outcomes: Vec<Outcome>,
}

impl ServerRun {
    pub fn outcome(&self, workload: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.workload == workload)
    }
}

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command line that produced it.
    pub command: String,
    pub size: Size,
    pub sizes: Sizes,
    pub machine: Machine,
    /// One flush and one round trip on this machine, measured before the servers ran.
    pub floor: Floor,
    /// How many times everything ran.
    pub rounds: u32,
    /// For each round, etcd first, then raftmesh.
    pub runs: Vec<ServerRun>,
}

/// One row of the table: a workload's headline figure.
#[derive(Debug)]
pub struct Row {
    pub workload: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub target: Option<Target>,
}

/// The target for a row: raftmesh's advantage over etcd (etcd's figure divided by
/// raftmesh's where lower is better) must reach `advantage`, and with `p99_at_most_etcd` its p99
/// latency must not exceed etcd's.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub advantage: f64,
    pub p99_at_most_etcd: bool,
    pub text: &'static str,
}

const fn target(advantage: f64, p99_at_most_etcd: bool, text: &'static str) -> Option<Target> {
    Some(Target {
        advantage,
        p99_at_most_etcd,
        text,
    })
}

pub const ROWS: &[Row] = &[
    row("put-1", "ops/s", target(1.5, false, "≥ 1.5× etcd")),
    row("put-1-follower", "ops/s", target(1.5, false, "≥ 1.5× etcd")),
    row("put-1-balanced", "ops/s", target(1.5, false, "≥ 1.5× etcd")),
    row(
        "put-256",
        "ops/s",
        target(2.0, true, "≥ 2× etcd, p99 ≤ etcd"),
    ),
    row("get-linearizable", "ops/s", target(2.0, false, "≥ 2× etcd")),
    row("get-serializable", "ops/s", None),
    row("get-shared", "ops/s", None),
    row("txn-cas", "ops/s", None),
    row(
        "watch-fanout-1w",
        "events/s",
        target(1.5, true, "≥ 1.5× etcd, p99 ≤ etcd"),
    ),
    row(
        "watch-fanout",
        "events/s",
        target(2.0, true, "≥ 2× etcd, p99 ≤ etcd"),
    ),
    row(
        "watch-agents",
        "events/s",
        target(2.0, true, "≥ 2× etcd, p99 ≤ etcd"),
    ),
    row("lease-grant", "ops/s", None),
    row("lease-keepalive", "ops/s", None),
    lower("rss", "MiB", target(1.0, false, "≤ etcd")),
    lower("disk", "MiB", target(0.5, false, "≤ 2× etcd")),
    lower("restart", "s", None),
    row("watch-idle", "ops/s", None),
    lower("failover", "s", target(1.0, false, "≤ etcd")),
];

const fn row(workload: &'static str, unit: &'static str, target: Option<Target>) -> Row {
    Row {
        workload,
        unit,
        higher_is_better: true,
        target,
    }
}

const fn lower(workload: &'static str, unit: &'static str, target: Option<Target>) -> Row {
    Row {
        workload,
        unit,
        higher_is_better: false,
        target,
    }
}

impl Row {
    /// What the row measured, with the run's sizes.
    pub fn title(&self, s: &Sizes) -> String {
        match self.workload {
            "put-1" => "put, 1 client, 1 connection, to the leader".to_owned(),
            "put-1-follower" => "put, 1 client, 1 connection, to a follower".to_owned(),
            "put-1-balanced" => {
                "put, 1 client balanced over the 3 members (as etcdctl, clientv3)".to_owned()
            }
            "put-256" => "put, 256 clients, 16 connections".to_owned(),
            "get-linearizable" => "get, linearizable, 16 clients".to_owned(),
            "get-serializable" => "get, serializable, 16 clients".to_owned(),
            "get-shared" => "get, linearizable, 16 clients sharing 1 connection".to_owned(),
            "watch-idle" => format!(
                "put, 1 client, sequential, with {} idle watchers",
                s.idle_watchers
            ),
            "failover" => "failover: leader killed, first write through a follower".to_owned(),
            "txn-cas" => "CAS txn, 16 clients".to_owned(),
            "watch-fanout-1w" => format!(
                "watch fan-out, {} watchers × {} puts by 1 sequential writer (to the leader)",
                s.watchers, s.watch_puts
            ),
            "watch-fanout" => format!(
                "watch fan-out, {} watchers × {} puts by 16 writers",
                s.watchers, s.watch_puts
            ),
            "watch-agents" => format!(
                "watch as agents do: {} streams on one follower, one per connection, prefix mesh/v1/ × {} puts",
                s.agent_watchers, s.watch_puts
            ),
            "lease-grant" => "lease grant, 16 clients".to_owned(),
            "lease-keepalive" => format!("lease keep-alive, {} leases", s.leases),
            "rss" => format!("RSS after {} puts, largest member", s.footprint_keys),
            "disk" => format!("data dir after {} puts, largest member", s.footprint_keys),
            "restart" => format!("restarted member serving, {} keys", s.footprint_keys),
            other => other.to_owned(),
        }
    }

    /// How many times better raftmesh did than etcd (> 1 is better, whichever the direction).
    pub fn advantage(&self, etcd: &Outcome, raftmesh: &Outcome) -> f64 {
        if self.higher_is_better {
            raftmesh.value / etcd.value
        } else {
            etcd.value / raftmesh.value
        }
    }

    /// Whether the row's target is met; `None` without a target.
    pub fn met(&self, etcd: &Outcome, raftmesh: &Outcome) -> Option<bool> {
        let target = self.target?;
        let p99_ok = match (target.p99_at_most_etcd, etcd.latency, raftmesh.latency) {
            (false, _, _) => true,
            (true, Some(e), Some(r)) => r.p99_ms <= e.p99_ms,
            (true, _, _) => false,
        };
        Some(raftmesh.errors == 0 && self.advantage(etcd, raftmesh) >= target.advantage && p99_ok)
    }
}

/// Each round's etcd and raftmesh runs.
fn rounds(report: &Report) -> Vec<(&ServerRun, &ServerRun)> {
    report
        .runs
        .chunks(2)
        .filter_map(|pair| match pair {
            [e, r] if e.server == "etcd" && r.server == "raftmesh" => Some((e, r)),
            _ => None,
        })
        .collect()
}

/// The pair of outcomes of each row that both servers produced, in the first round.
fn pairs(report: &Report) -> Vec<(&'static Row, &Outcome, &Outcome)> {
    rounds(report)
        .first()
        .map_or_else(Vec::new, |(etcd, raftmesh)| row_pairs(etcd, raftmesh))
}

fn row_pairs<'a>(
    etcd: &'a ServerRun,
    raftmesh: &'a ServerRun,
) -> Vec<(&'static Row, &'a Outcome, &'a Outcome)> {
    ROWS.iter()
        .filter_map(|row| {
            Some((
                row,
                etcd.outcome(row.workload)?,
                raftmesh.outcome(row.workload)?,
            ))
        })
        .collect()
}

/// Every round's pair of outcomes of each row.
fn row_rounds(report: &Report) -> Vec<(&'static Row, Vec<(&Outcome, &Outcome)>)> {
    let rounds = rounds(report);
    ROWS.iter()
        .filter_map(|row| {
            let pairs: Vec<(&Outcome, &Outcome)> = rounds
                .iter()
                .filter_map(|(e, r)| Some((e.outcome(row.workload)?, r.outcome(row.workload)?)))
                .collect();
            (!pairs.is_empty()).then_some((row, pairs))
        })
        .collect()
}

/// `lo–hi` of `values` with `digits` decimals, or the one value when they are all equal.
fn range(values: impl IntoIterator<Item = f64>, digits: usize) -> String {
    let (lo, hi) = values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (a, b) = (format!("{lo:.digits$}"), format!("{hi:.digits$}"));
    if a == b { a } else { format!("{a}–{b}") }
}

pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let m = &report.machine;
    let _ = writeln!(md, "# mesh-bench kv ({} size)\n", report.size.name());
    let _ = writeln!(md, "Command: `{}`\n", report.command);
    let _ = writeln!(md, "- Started: {} (commit {})", m.started, m.git_commit);
    let _ = writeln!(
        md,
        "- Machine: {} cores ({}), {} GiB RAM, Linux {}, {}",
        m.cores, m.cpu, m.memory_gib, m.kernel, m.os
    );
    let _ = writeln!(md, "- Data dirs: {}", m.data_dir);
    if report.rounds > 1 {
        let _ = writeln!(
            md,
            "- Rounds: {} (etcd, then raftmesh, each round); each figure is its range over the \
             rounds, the ratio is taken per round, latencies are p50 / p99",
            report.rounds
        );
    }
    for (server, version) in &m.servers {
        let _ = writeln!(md, "- {server}: {version}");
    }
    let _ = writeln!(
        md,
        "- Both: 3 members on loopback, default flags (fsync per commit, snapshot every 100,000 \
         entries, no compaction during the run); keys of 8 bytes, values of 256 bytes; same \
         client code (etcd-client crate) for both.\n"
    );
    let percentiles = if report.rounds > 1 {
        "p50 / p99"
    } else {
        "p50 / p99 / p99.9"
    };
    let _ = writeln!(
        md,
        "| workload | etcd | raftmesh | raftmesh/etcd | etcd {percentiles} ms | raftmesh \
         {percentiles} ms | target | met |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|");
    for (row, rounds) in row_rounds(report) {
        let met: Vec<Option<bool>> = rounds.iter().map(|(e, r)| row.met(e, r)).collect();
        let met_in = met.iter().filter(|m| **m == Some(true)).count();
        let met = match met.first() {
            None | Some(None) => String::new(),
            Some(Some(_)) if met_in == met.len() => "yes".to_owned(),
            Some(Some(_)) if met_in == 0 => "**no**".to_owned(),
            Some(Some(_)) => format!("in {met_in} of {}", met.len()),
        };
        let figures = |side: usize| {
            let outcomes: Vec<&Outcome> = rounds
                .iter()
                .map(|(e, r)| if side == 0 { *e } else { *r })
                .collect();
            if let [one] = outcomes.as_slice() {
                return (figure(row, one), latency(one.latency));
            }
            let digits = if matches!(row.unit, "MiB" | "s") {
                2
            } else {
                0
            };
            let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
            let mut value = format!(
                "{} {}",
                range(outcomes.iter().map(|o| o.value), digits),
                row.unit
            );
            if errors > 0 {
                value.push_str(&format!(" ({errors} errors)"));
            }
            let latencies: Vec<Percentiles> = outcomes.iter().filter_map(|o| o.latency).collect();
            let latency = if latencies.is_empty() {
                String::new()
            } else {
                format!(
                    "{} / {}",
                    range(latencies.iter().map(|p| p.p50_ms), 2),
                    range(latencies.iter().map(|p| p.p99_ms), 2)
                )
            };
            (value, latency)
        };
        let ((etcd_value, etcd_latency), (raftmesh_value, raftmesh_latency)) =
            (figures(0), figures(1));
        let _ = writeln!(
            md,
            "| {} | {etcd_value} | {raftmesh_value} | {} | {etcd_latency} | {raftmesh_latency} | {} | {met} |",
            row.title(&report.sizes),
            range(rounds.iter().map(|(e, r)| r.value / e.value), 2),
            row.target.map_or("", |t| t.text),
        );
    }
    // The sequential puts against the physical floor (the "within 2×").
    let floor = &report.floor;
    let mut against = Vec::new();
    for (row, rounds) in row_rounds(report) {
        if !row.workload.starts_with("put-1") {
            continue;
        }
        let p50 = |side: usize| {
            range(
                rounds.iter().filter_map(|(e, r)| {
                    let o = if side == 0 { e } else { r };
                    o.latency.map(|p| p.p50_ms / floor.put_ms())
                }),
                1,
            )
        };
        against.push(format!(
            "{}: raftmesh p50 {}× the floor, etcd {}×",
            row.workload,
            p50(1),
            p50(0)
        ));
    }
    let _ = writeln!(md, "\nFloor (measured before the servers ran): {floor}.");
    if !against.is_empty() {
        let _ = writeln!(md, "Sequential puts against it: {}.", against.join("; "));
    }
    let rounds = report.rounds;
    let details: Vec<String> = report
        .runs
        .iter()
        .enumerate()
        .flat_map(|(i, run)| {
            let tag = if rounds > 1 {
                format!(" (round {})", i / 2 + 1)
            } else {
                String::new()
            };
            run.outcomes.iter().filter_map(move |o| {
                let detail = o.detail.as_deref().map(|d| format!("{}: {d}", o.workload));
                let errors = o
                    .first_error
                    .as_deref()
                    .map(|e| format!("{}: {} errors, first: {e}", o.workload, o.errors));
                let text: Vec<String> = detail.into_iter().chain(errors).collect();
                (!text.is_empty()).then(|| format!("- {}{tag} {}", run.server, text.join("; ")))
            })
        })
        .collect();
    if !details.is_empty() {
        let _ = writeln!(md, "\n{}", details.join("\n"));
    }
    md
}

fn figure(row: &Row, outcome: &Outcome) -> String {
    let value = match row.unit {
        "MiB" => format!("{:.1} MiB", outcome.value),
        "s" => format!("{:.2} s", outcome.value),
        unit => format!("{:.0} {unit}", outcome.value),
    };
    if outcome.errors > 0 {
        format!("{value} ({} errors)", outcome.errors)
    } else {
        value
    }
}

fn latency(p: Option<Percentiles>) -> String {
    p.map_or_else(String::new, |p| {
        format!("{:.2} / {:.2} / {:.2}", p.p50_ms, p.p99_ms, p.p999_ms)
    })
}

/// Writes kv-<size>.md, .json and .png into `dir`; returns their paths.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let stem = format!("kv-{}", report.size.name());
    let md = dir.join(format!("{stem}.md"));
    let json = dir.join(format!("{stem}.json"));
    let png = dir.join(format!("{stem}.png"));
    std::fs::write(&md, markdown(report)).with_context(|| format!("writing {}", md.display()))?;
    let raw = serde_json::to_string_pretty(report)?;
    std::fs::write(&json, raw + "\n").with_context(|| format!("writing {}", json.display()))?;
    chart(report, &png).with_context(|| format!("drawing {}", png.display()))?;
    Ok(vec![md, json, png])
}

/// The font the chart's text is drawn with (Debian's fonts-dejavu-core).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers [`FONT`] as plotters' "sans-serif", once per process.
pub fn register_font() -> Result<()> {
    use plotters::style::FontStyle;
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let font = std::fs::read(FONT)
                .map_err(|e| format!("reading {FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(font.into_boxed_slice()),
            )
            .map_err(|_| format!("{FONT} is not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A horizontal bar per row: raftmesh's advantage over etcd, with 1× and the target marked.
fn chart(report: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;

    register_font()?;

    let rows = pairs(report);
    let (width, left, right) = (1100i32, 380i32, 1020i32);
    let (top, bar_height) = (80i32, 38i32);
    let height = top + bar_height * rows.len() as i32 + 50;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let text = |size| ("sans-serif", size).into_font();
    root.draw(&Text::new(
        format!(
            "raftmesh vs etcd 3-member clusters: advantage (× etcd, > 1 is better), {} size{}",
            report.size.name(),
            if report.rounds > 1 {
                format!(", round 1 of {}", report.rounds)
            } else {
                String::new()
            }
        ),
        (20, 15),
        text(20.0),
    ))?;
    root.draw(&Text::new(
        format!("{}", report.machine),
        (20, 42),
        text(13.0).color(&RGBColor(90, 90, 90)),
    ))?;

    // A log scale, so 0.5× and 2× sit equally far from 1×; bars grow from the 1× line.
    let marks = rows
        .iter()
        .flat_map(|(row, e, r)| [row.advantage(e, r), row.target.map_or(1.0, |t| t.advantage)]);
    let (lo, hi) = marks
        .filter(|a| a.is_finite() && *a > 0.0)
        .fold((0.5f64, 2.0f64), |(lo, hi), a| (lo.min(a), hi.max(a)));
    let (lo, hi) = ((lo / 1.3).ln(), (hi * 1.3).ln());
    let x = |advantage: f64| {
        let a = advantage.clamp(lo.exp(), hi.exp()).ln();
        left + ((right - left) as f64 * (a - lo) / (hi - lo)) as i32
    };
    for (i, (row, etcd, raftmesh)) in rows.iter().enumerate() {
        let y = top + bar_height * i as i32;
        let advantage = row.advantage(etcd, raftmesh);
        let color = match row.met(etcd, raftmesh) {
            Some(false) => RGBColor(222, 120, 40),
            _ => RGBColor(60, 140, 90),
        };
        root.draw(&Text::new(
            row.title(&report.sizes),
            (20, y + 10),
            text(14.0),
        ))?;
        root.draw(&Rectangle::new(
            [(x(1.0), y + 6), (x(advantage), y + bar_height - 6)],
            color.filled(),
        ))?;
        root.draw(&Text::new(
            format!("{advantage:.2}×"),
            (x(advantage).max(x(1.0)) + 6, y + 10),
            text(14.0),
        ))?;
        if let Some(target) = row.target {
            let tx = x(target.advantage);
            root.draw(&PathElement::new(
                vec![(tx, y + 2), (tx, y + bar_height - 2)],
                RED.stroke_width(3),
            ))?;
        }
    }
    let bottom = top + bar_height * rows.len() as i32;
    root.draw(&PathElement::new(
        vec![(x(1.0), top - 4), (x(1.0), bottom + 4)],
        BLACK.stroke_width(1),
    ))?;
    root.draw(&Text::new(
        "log scale; 1× = etcd; red tick = target; orange = target missed",
        (left, bottom + 16),
        text(13.0),
    ))?;
    root.present()?;
    Ok(())
}

/// Writes `<dir>/<name>.md` and `<dir>/<name>.json`, prints the markdown and says where they
/// went (the single-table benchmarks: publish, mirror).
pub fn write_table(dir: &Path, name: &str, md: &str, raw: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let md_path = dir.join(format!("{name}.md"));
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(&md_path, md)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(raw)? + "\n")?;
    println!("{md}");
    eprintln!("wrote {}\nwrote {}", md_path.display(), json_path.display());
    Ok(())
}
