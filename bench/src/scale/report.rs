//! `scale.md`, `scale.json` and `scale.png`: every figure against the number of clusters,
//! with the targets.

use anyhow::{Result, anyhow};
use serde_json::json;

use super::{Figures, ScaleArgs, Shape};
use crate::machine::Machine;
use crate::stats::Percentiles;

/// One reported series: its label, unit, how it is read off a size, and its target (a bound
/// the figure must stay at or under).
struct Series {
    label: &'static str,
    unit: &'static str,
    value: fn(&Figures) -> Option<f64>,
    target: Option<f64>,
}

fn p(f: Option<Percentiles>, p99: bool) -> Option<f64> {
    f.map(|p| if p99 { p.p99_ms } else { p.p50_ms })
}

const SERIES: &[Series] = &[
    Series {
        label: "initial mirror (connect → every key local)",
        unit: "s",
        value: |f| Some(f.initial_mirror_s),
        target: None,
    },
    Series {
        label: "initial mirror → every agent programmed",
        unit: "s",
        value: |f| Some(f.initial_programmed_s),
        target: None,
    },
    Series {
        label: "leader RSS",
        unit: "MiB",
        value: |f| Some(f.leader_rss_mib),
        target: None,
    },
    Series {
        label: "leader RSS per remote",
        unit: "MiB",
        value: |f| Some(f.leader_rss_per_remote_mib),
        target: Some(40.0),
    },
    Series {
        label: "follower RSS (largest)",
        unit: "MiB",
        value: |f| f.follower_rss_mib.iter().copied().reduce(f64::max),
        target: None,
    },
    Series {
        label: "member RSS at its peak (largest VmHWM)",
        unit: "MiB",
        value: |f| f.member_peak_rss_mib,
        target: None,
    },
    Series {
        label: "leader CPU with no remote, at rest",
        unit: "ms/s",
        value: |f| Some(f.leader_cpu_alone_ms_per_s),
        target: None,
    },
    Series {
        label: "leader CPU per remote, at rest",
        unit: "ms/s",
        value: |f| Some(f.leader_cpu_idle_ms_per_s_per_remote),
        target: None,
    },
    Series {
        label: "leader CPU per remote, under churn",
        unit: "ms/s",
        value: |f| Some(f.leader_cpu_churn_ms_per_s_per_remote),
        target: None,
    },
    Series {
        label: "churn achieved",
        unit: "changes/s",
        value: |f| Some(f.churn_per_s),
        target: None,
    },
    Series {
        label: "remote write → local store, p50",
        unit: "ms",
        value: |f| p(f.mirror, false),
        target: None,
    },
    Series {
        label: "remote write → local store, p99",
        unit: "ms",
        value: |f| p(f.mirror, true),
        target: None,
    },
    Series {
        label: "local store → agent map, p50",
        unit: "ms",
        value: |f| p(f.store_to_agent, false),
        target: None,
    },
    Series {
        label: "local store → agent map, p99",
        unit: "ms",
        value: |f| p(f.store_to_agent, true),
        target: Some(1_000.0),
    },
    Series {
        label: "remote write → agent map, p99",
        unit: "ms",
        value: |f| p(f.end_to_end, true),
        target: None,
    },
    Series {
        label: "new agent → every backend programmed",
        unit: "s",
        value: |f| Some(f.new_agent_s),
        target: Some(10.0),
    },
    Series {
        label: "agent RSS",
        unit: "MiB",
        value: |f| Some(f.agent_rss_mib),
        target: None,
    },
    Series {
        label: "agent bytes per remote endpoint",
        unit: "B",
        value: |f| Some(f.agent_bytes_per_remote_endpoint),
        target: Some(500.0),
    },
    Series {
        label: "restart of every member → leader",
        unit: "s",
        value: |f| Some(f.restart_leader_s),
        target: None,
    },
    Series {
        label: "restart → every remote connected",
        unit: "s",
        value: |f| Some(f.restart_connected_s),
        target: None,
    },
    Series {
        label: "restart → a change on every remote in every agent",
        unit: "s",
        value: |f| Some(f.restart_reconverged_s),
        target: Some(60.0),
    },
];

/// The PNG's grid: every series, in [`SERIES`]' order.
const GRID: (usize, usize) = (4, 6);

fn cell(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The markdown table.
pub fn markdown(
    args: &ScaleArgs,
    shape: Shape,
    machine: &Machine,
    command: &str,
    all: &[Figures],
) -> String {
    let mut md = format!(
        "# mesh-bench scale\n\nCommand: `{command}`\n\n- Machine: {machine}\n- Remotes: synthetic (one process serves them all over TLS, etcd's Range and Watch with progress, from the store's own MVCC engine), each {} nodes, {} endpoints in {} services (slices of ≤ 100), one ipcache entry per endpoint, {} keys per remote.\n- Local cluster: 3 real `mesh-apiserver` members (plaintext client port; the mirror's remote connections are mutual TLS), a global Service per remote service; {} real `node-agent`s (host namespace, WireGuard off).\n- Churn: {} pod replacements/s over all remotes (one remote revision each), probe flips {}/s timed remote write → local store (a watch of the bench) → every agent's map (lookup each ms); idle window {} s, churn window {} s.\n- Targets from issue 31; a figure over its target is marked ✗.\n\n| figure | unit |",
        shape.nodes,
        shape.endpoints,
        shape.services,
        shape.keys(),
        args.agents,
        args.churn,
        args.probe_rate,
        args.idle_seconds,
        args.churn_seconds,
    );
    for f in all {
        md.push_str(&format!(" {} clusters |", f.clusters));
    }
    md.push_str(" target |\n|---|---|");
    for _ in all {
        md.push_str("---:|");
    }
    md.push_str("---:|\n");
    for s in SERIES {
        md.push_str(&format!("| {} | {} |", s.label, s.unit));
        for f in all {
            let v = (s.value)(f);
            let over = matches!((v, s.target), (Some(v), Some(t)) if v > t);
            md.push_str(&format!(" {}{} |", cell(v), if over { " ✗" } else { "" }));
        }
        md.push_str(&format!(
            " {} |\n",
            s.target
                .map_or(String::new(), |t| format!("≤ {}", cell(Some(t))))
        ));
    }
    md.push_str("\n| size | mirrored keys | remote endpoints | probe flips | mirror errors |\n|---:|---:|---:|---:|---|\n");
    for f in all {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            f.clusters,
            f.remote_keys,
            f.remote_endpoints,
            f.probes,
            if f.mirror_errors.values().all(|v| *v == 0.0) {
                "none".to_owned()
            } else {
                format!("{:?}", f.mirror_errors)
            }
        ));
    }
    md
}

/// Writes the three files.
pub fn write(
    args: &ScaleArgs,
    shape: Shape,
    machine: &Machine,
    command: &str,
    all: &[Figures],
) -> Result<()> {
    let md = markdown(args, shape, machine, command, all);
    let raw = json!({
        "command": command,
        "machine": machine.to_string(),
        "shape": {"nodes": shape.nodes, "endpoints": shape.endpoints, "services": shape.services, "keys": shape.keys()},
        "sizes": all,
    });
    crate::report::write_table(&args.out, "scale", &md, &raw)?;
    let png = args.out.join("scale.png");
    chart(all, &machine.to_string(), &png)?;
    eprintln!("wrote {}", png.display());
    Ok(())
}

/// Draws `<out>/scale.png` again from an earlier run's `scale.json`.
pub fn replot(json: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    let sizes: Vec<Figures> = serde_json::from_value(raw["sizes"].clone())?;
    let machine = raw["machine"].as_str().unwrap_or_default();
    std::fs::create_dir_all(out)?;
    let png = out.join("scale.png");
    chart(&sizes, machine, &png)?;
    eprintln!("wrote {}", png.display());
    Ok(())
}

/// Writes `<out>/scale-runs.md`: for each figure and size, the range over the runs in `jsons`
/// that measured that size, marked when the worst of them misses the target.
pub fn summarize(jsons: &[std::path::PathBuf], out: &std::path::Path) -> Result<()> {
    let mut runs: Vec<(String, Vec<Figures>)> = Vec::new();
    for path in jsons {
        let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let sizes: Vec<Figures> = serde_json::from_value(raw["sizes"].clone())?;
        let command = raw["command"].as_str().unwrap_or_default().to_owned();
        runs.push((command, sizes));
    }
    let md = ranges(&runs)?;
    std::fs::create_dir_all(out)?;
    let path = out.join("scale-runs.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn ranges(runs: &[(String, Vec<Figures>)]) -> Result<String> {
    let sizes: std::collections::BTreeSet<usize> = runs
        .iter()
        .flat_map(|(_, s)| s.iter().map(|f| f.clusters))
        .collect();
    if sizes.is_empty() {
        return Err(anyhow!("no run has any size"));
    }
    // For each size, the figures of every run that measured it.
    let at = |n: usize| -> Vec<&Figures> {
        runs.iter()
            .filter_map(|(_, s)| s.iter().find(|f| f.clusters == n))
            .collect()
    };
    let mut md = format!(
        "# mesh-bench scale: {} runs\n\nEach cell is the range over the runs that measured that size (min–max); ✗ when the worst misses the target. The runs:\n\n",
        runs.len()
    );
    for (command, _) in runs {
        md.push_str(&format!("- `{command}`\n"));
    }
    md.push_str("\n| figure | unit |");
    for &n in &sizes {
        md.push_str(&format!(" {n} clusters ({} runs) |", at(n).len()));
    }
    md.push_str(" target |\n|---|---|");
    for _ in &sizes {
        md.push_str("---:|");
    }
    md.push_str("---:|\n");
    for s in SERIES {
        md.push_str(&format!("| {} | {} |", s.label, s.unit));
        for &n in &sizes {
            let values: Vec<f64> = at(n).into_iter().filter_map(|f| (s.value)(f)).collect();
            let lo = values.iter().copied().reduce(f64::min);
            let hi = values.iter().copied().reduce(f64::max);
            let over = matches!((hi, s.target), (Some(v), Some(t)) if v > t);
            let range = match (lo, hi) {
                (Some(lo), Some(hi)) if cell(Some(lo)) != cell(Some(hi)) => {
                    format!("{}–{}", cell(Some(lo)), cell(Some(hi)))
                }
                _ => cell(lo),
            };
            md.push_str(&format!(" {range}{} |", if over { " ✗" } else { "" }));
        }
        md.push_str(&format!(
            " {} |\n",
            s.target
                .map_or(String::new(), |t| format!("≤ {}", cell(Some(t))))
        ));
    }
    Ok(md)
}

/// One panel per series against the number of clusters, targets as red lines.
pub fn chart(all: &[Figures], subtitle: &str, path: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;

    crate::report::register_font()?;
    let root = BitMapBackend::new(path, (2400, 1500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        "raftmesh: one cluster mirroring N synthetic remotes (x: remote clusters)",
        (20, 10),
        ("sans-serif", 22.0).into_font(),
    ))?;
    title.draw(&Text::new(
        subtitle.to_owned(),
        (20, 38),
        ("sans-serif", 13.0)
            .into_font()
            .color(&RGBColor(90, 90, 90)),
    ))?;
    let x_max = all.iter().map(|f| f.clusters).max().unwrap_or(1) as f64 * 1.05;
    for (area, s) in body.split_evenly(GRID).iter().zip(SERIES) {
        let points: Vec<(f64, f64)> = all
            .iter()
            .filter_map(|f| Some((f.clusters as f64, (s.value)(f)?)))
            .collect();
        let y_max = points
            .iter()
            .map(|p| p.1)
            .chain(s.target)
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} ({})", s.label, s.unit),
                ("sans-serif", 14.0).into_font(),
            )
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(6)
            .label_style(("sans-serif", 12.0).into_font())
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        if let Some(t) = s.target {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, t), (x_max, t)],
                    RED.stroke_width(2),
                )))
                .map_err(|e| anyhow!("{e}"))?;
        }
        let blue = RGBColor(40, 90, 170);
        chart
            .draw_series(std::iter::once(PathElement::new(
                points.clone(),
                blue.stroke_width(2),
            )))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, blue.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(clusters: usize) -> Figures {
        let p = Some(Percentiles {
            p50_ms: 5.0,
            p99_ms: 40.0,
            p999_ms: 50.0,
            max_ms: 60.0,
        });
        Figures {
            clusters,
            remote_keys: clusters * 1_200,
            remote_endpoints: clusters * 1_000,
            initial_mirror_s: clusters as f64 * 0.1,
            initial_programmed_s: clusters as f64 * 0.2,
            leader_rss_mib: 100.0,
            leader_rss_per_remote_mib: 0.5,
            follower_rss_mib: vec![90.0, 95.0],
            member_peak_rss_mib: Some(120.0),
            leader_cpu_alone_ms_per_s: 20.0,
            leader_cpu_idle_ms_per_s_per_remote: 0.2,
            leader_cpu_churn_ms_per_s_per_remote: 1.0,
            churn_per_s: 325.0,
            mirror: p,
            store_to_agent: p,
            end_to_end: p,
            probes: 100,
            new_agent_s: 3.0,
            agent_rss_mib: 80.0,
            agent_bytes_per_remote_endpoint: 600.0,
            restart_leader_s: 2.0,
            restart_connected_s: 10.0,
            restart_reconverged_s: 12.0,
            mirror_errors: Default::default(),
        }
    }

    #[test]
    fn every_series_has_a_cell_and_a_missed_target_is_marked() {
        let args = <ScaleArgs as clap::FromArgMatches>::from_arg_matches(
            &<ScaleArgs as clap::Args>::augment_args(clap::Command::new("scale"))
                .get_matches_from(["scale"]),
        )
        .unwrap();
        let shape = Shape {
            nodes: 100,
            endpoints: 1_000,
            services: 10,
        };
        let machine = Machine::read([]);
        let md = markdown(&args, shape, &machine, "cmd", &[figures(10), figures(50)]);
        for s in SERIES {
            assert!(md.contains(s.label), "{}", s.label);
        }
        // 600 B per endpoint is over the 500 B target.
        assert!(
            md.contains("| agent bytes per remote endpoint | B | 600 ✗ | 600 ✗ | ≤ 500 |"),
            "{md}"
        );
        assert!(
            md.contains("| new agent → every backend programmed | s | 3.00 | 3.00 | ≤ 10.0 |"),
            "{md}"
        );
    }

    #[test]
    fn runs_are_summarized_as_ranges_over_the_runs_of_each_size() {
        let mut slow = figures(10);
        slow.new_agent_s = 12.0;
        let runs = vec![
            ("a".to_owned(), vec![figures(10)]),
            ("b".to_owned(), vec![slow]),
        ];
        let md = ranges(&runs).unwrap();
        assert!(md.contains("| 10 clusters (2 runs) | target |"), "{md}");
        assert!(
            md.contains("| new agent → every backend programmed | s | 3.00–12.0 ✗ | ≤ 10.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| churn achieved | changes/s | 325 |  |"),
            "{md}"
        );
        // A size only some runs measured is ranged over those.
        let other = vec![runs[0].clone(), ("c".to_owned(), vec![figures(50)])];
        let md = ranges(&other).unwrap();
        assert!(
            md.contains("| 10 clusters (1 runs) | 50 clusters (1 runs) |"),
            "{md}"
        );
        assert!(ranges(&[]).is_err());
    }

    #[test]
    fn the_chart_draws() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("scale.png");
        chart(&[figures(10), figures(50), figures(255)], "test", &png).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
        assert!(GRID.0 * GRID.1 >= SERIES.len(), "a series has no panel");
        // Drawn again from a run's JSON.
        let json = dir.path().join("scale.json");
        let raw = json!({"machine": "m", "sizes": [figures(10), figures(20)]});
        std::fs::write(&json, raw.to_string()).unwrap();
        let again = dir.path().join("again");
        replot(&json, &again).unwrap();
        assert!(std::fs::metadata(again.join("scale.png")).unwrap().len() > 10_000);
    }
}
