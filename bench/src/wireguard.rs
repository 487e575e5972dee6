//! `mesh-bench wireguard`: pod-to-pod TCP throughput and latency between two clusters of the
//! lab, through the agents' WireGuard tunnels (boringtun, userspace: this kernel has no
//! WireGuard module) against the same path in the clear (the fabric routes pod CIDRs, so
//! without the agents' routes the packets go directly).
//!
//! Throughput is iperf3's (one TCP stream, received bits per second); latency is ping's
//! round trip (and a TCP request/response with `mesh-echo`). Both paths are measured in one
//! run, on the same namespaces and pods: first in the clear, then with the agents started.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use lab::process::Process;
use serde_json::json;
use testkit::mesh::{Binaries, Mesh};

use crate::machine::Machine;

/// `mesh-bench wireguard` flags.
#[derive(Debug, Args)]
pub struct WireguardArgs {
    /// Seconds of iperf3 per path.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Pings per path.
    #[arg(long, default_value_t = 500)]
    pub pings: u32,
    /// Where to write wireguard.md and wireguard.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// One path's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    gbits: f64,
    retransmits: u64,
    ping_avg_ms: f64,
    ping_mdev_ms: f64,
    tcp_rr_p50_ms: f64,
    tcp_rr_p99_ms: f64,
}

/// Runs the benchmark.
pub async fn run(args: WireguardArgs, command: String) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("mesh-bench wireguard needs root (network namespaces, boringtun)");
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("mesh-bench's directory")?.to_owned();
    tokio::task::spawn_blocking(move || measure(&args, &dir, command)).await?
}

fn measure(args: &WireguardArgs, dir: &std::path::Path, command: String) -> Result<()> {
    let bins = Binaries::in_dir(dir);
    let machine = Machine::read([("boringtun", bins.boringtun.as_path())]);
    eprintln!("building two clusters of two nodes (API servers, meshctl connect)…");
    let mut mesh = Mesh::new(bins);
    let server = mesh.pod_ip("infra", "node-1");
    let mut iperf = mesh.node("infra", "node-1").pods[0].ns.command("iperf3");
    iperf.args(["-s", "--one-off"]);
    let log = mesh.path("iperf3-server.log");
    mesh.workloads.push(Process::spawn(iperf, Some(&log))?);
    mesh.serve("infra", "node-1");
    mesh.wait_ping("apps", "node-1", server);

    eprintln!(
        "in the clear ({} s of iperf3, {} pings)…",
        args.seconds, args.pings
    );
    let clear = path_figures(&mesh, args, server)?;

    eprintln!("starting the agents (WireGuard, userspace)…");
    mesh.start_agents();
    mesh.wait_full_mesh();
    mesh.wait_ping("apps", "node-1", server);
    let mut iperf = mesh.node("infra", "node-1").pods[0].ns.command("iperf3");
    iperf.args(["-s", "--one-off"]);
    mesh.workloads.push(Process::spawn(iperf, Some(&log))?);
    std::thread::sleep(Duration::from_millis(300));
    let key = mesh
        .published_key("apps", "infra", "node-1")
        .context("infra/node-1's key")?;
    let before = mesh.wg_peers("apps", "node-1")[&key].tx;
    eprintln!("through the tunnel…");
    let tunnel = path_figures(&mesh, args, server)?;
    let sent = mesh.wg_peers("apps", "node-1")[&key].tx - before;
    let tunneled_bytes = sent;
    if tunneled_bytes < 1_000_000 {
        bail!("only {tunneled_bytes} B went through the tunnel: the measurement did not use it");
    }

    let row = |name: &str, f: &Figures| {
        format!(
            "| {name} | {:.2} | {} | {:.3} ± {:.3} | {:.3} / {:.3} |\n",
            f.gbits, f.retransmits, f.ping_avg_ms, f.ping_mdev_ms, f.tcp_rr_p50_ms, f.tcp_rr_p99_ms
        )
    };
    let mut md = format!(
        "# mesh-bench wireguard\n\n\
         Command: `{command}`\n\n\
         - Machine: {machine}\n\
         - Path: a pod of `apps`/node-1 to a pod of `infra`/node-1, two network namespaces \
         (nodes) joined by a fabric namespace. In the clear the fabric routes pod CIDRs \
         directly; with the agents up the nodes route them through `raftmesh`'s WireGuard \
         interfaces, **userspace boringtun 0.7 (this kernel has no WireGuard module)**, which \
         encrypt to the other node's WireGuard UDP port. {tunneled_bytes} B went through the \
         tunnel during its measurement.\n\
         - Throughput: iperf3, one TCP stream for {} s (received). Latency: {} pings 10 ms \
         apart (average ± mdev); a TCP request/response over a new connection each time \
         (`mesh-echo probe --tcp`, 200 connections: p50 / p99).\n\n\
         | path | TCP Gbit/s | retransmits | ping RTT ms | TCP connect+echo ms p50 / p99 |\n\
         |---|---:|---:|---:|---:|\n",
        args.seconds, args.pings
    );
    md.push_str(&row("in the clear", &clear));
    md.push_str(&row("WireGuard (boringtun, userspace)", &tunnel));
    md.push_str(&format!(
        "\nThroughput through the tunnel is {:.0}% of the clear path's on this 2-core machine \
         (boringtun's encryption runs on the same two cores as both ends of the stream); the \
         kernel module could not be measured here.\n",
        100.0 * tunnel.gbits / clear.gbits
    ));
    let raw = json!({
        "command": command,
        "machine": machine.to_string(),
        "tunneled_bytes": tunneled_bytes,
        "clear": figures_json(&clear),
        "wireguard_userspace": figures_json(&tunnel),
    });
    crate::report::write_table(&args.out, "wireguard", &md, &raw)
}

fn figures_json(f: &Figures) -> serde_json::Value {
    json!({
        "tcp_gbits": f.gbits,
        "retransmits": f.retransmits,
        "ping_avg_ms": f.ping_avg_ms,
        "ping_mdev_ms": f.ping_mdev_ms,
        "tcp_rr_p50_ms": f.tcp_rr_p50_ms,
        "tcp_rr_p99_ms": f.tcp_rr_p99_ms,
    })
}

fn output(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| what.to_owned())?;
    if !out.status.success() {
        bail!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_figures(mesh: &Mesh, args: &WireguardArgs, server: std::net::Ipv4Addr) -> Result<Figures> {
    let pod = &mesh.node("apps", "node-1").pods[0].ns;
    // Latency first, on an idle path.
    let mut ping = pod.command("ping");
    ping.args(["-q", "-i", "0.01", "-c", &args.pings.to_string()])
        .arg(server.to_string());
    let text = output(ping, "ping")?;
    let rtt = text
        .lines()
        .find_map(|l| l.split_once("rtt min/avg/max/mdev = "))
        .map(|(_, v)| v.trim_end_matches(" ms").split('/').collect::<Vec<_>>())
        .context("ping's summary")?;
    let ms = |i: usize| -> Result<f64> { Ok(rtt.get(i).context("rtt")?.parse()?) };
    let mut probe = pod.command(&mesh.bins.echo);
    probe
        .args([
            "probe",
            "--tcp",
            &format!("{server}:8080"),
            "--count",
            "200",
        ])
        .args(["--interval-ms", "5", "--timeout-ms", "2000"]);
    let text = output(probe, "mesh-echo probe")?;
    let mut rr = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v.get("attempts").is_some() {
            continue; // a summary line
        }
        if v["ok"] != true {
            bail!("mesh-echo probe failed: {line}");
        }
        rr.push(v["micros"].as_f64().context("micros")? / 1000.0);
    }
    if rr.len() != 200 {
        bail!("mesh-echo probe: {} answers of 200", rr.len());
    }
    rr.sort_by(f64::total_cmp);
    let mut iperf = pod.command("iperf3");
    iperf
        .args(["-J", "-t", &args.seconds.to_string(), "-c"])
        .arg(server.to_string());
    let report: serde_json::Value = serde_json::from_str(&output(iperf, "iperf3")?)?;
    let sum = &report["end"]["sum_received"];
    Ok(Figures {
        gbits: sum["bits_per_second"].as_f64().context("iperf3 result")? / 1e9,
        retransmits: report["end"]["sum_sent"]["retransmits"]
            .as_u64()
            .unwrap_or(0),
        ping_avg_ms: ms(1)?,
        ping_mdev_ms: ms(3)?,
        tcp_rr_p50_ms: rr[rr.len() / 2],
        tcp_rr_p99_ms: rr[rr.len() * 99 / 100],
    })
}
