//! `mesh-bench datapath`: connect() to a service VIP with 10 … 100,000 services programmed,
//! against the backend address directly (the floor) and kube-proxy-style iptables DNAT rules
//! for the same services, in one run.
//!
//! The setup is one node out of network namespaces (see `lab`): a client pod and a backend pod
//! (`mesh-echo serve`) on a bridge. Socket load balancing is measured with the client in the
//! cgroup the programs are attached to, the service maps written directly through the node
//! agent's library (no API server: this measures the datapath alone). iptables is measured
//! with the client outside that cgroup and `iptables-restore`d rules in a second client's namespace,
//! shaped as kube-proxy writes them (`KUBE-SERVICES` → `KUBE-SVC-*` → `KUBE-SEP-*` DNAT), the
//! measured service's rule last in `KUBE-SERVICES` (a linear chain's worst case; the average
//! is half of it). Each configuration runs `mesh-echo probe` twice: `--connect-only` (connect
//! latency) and a full short connection (connect, read the reply, close) for the rate.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use lab::cgroup::Cgroup;
use lab::netns::{self, Netns};
use lab::process::Process;
use node_agent::datapath::{Pins, Programs};
use node_agent::maps::{Backend, Frontend, PROTO_TCP, backend_flags};
use node_agent::reconcile::Programmer;
use serde_json::{Value, json};

use crate::machine::Machine;

/// `mesh-bench datapath`'s options.
#[derive(Debug, clap::Args)]
pub struct DatapathArgs {
    /// Numbers of services programmed, measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000,100000")]
    pub services: Vec<u32>,
    /// Connections per measurement.
    #[arg(long, default_value_t = 2_000)]
    pub connects: u32,
    /// Largest service count measured with iptables (loading 100,000 services' rules takes a
    /// while).
    #[arg(long, default_value_t = 100_000)]
    pub iptables_max: u32,
    /// Directory for datapath.md and .json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// kube-proxy's VIPs live elsewhere, so the socket programs never match them.
const IPTABLES_BASE: u32 = 0x0a70_0000; // 10.112.0.0/12

/// Rounds of every measurement.
const ROUNDS: usize = 5;

fn median(probes: &[Probe]) -> Probe {
    let pick = |f: fn(&Probe) -> f64| {
        let mut v: Vec<f64> = probes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Probe {
        p50_us: pick(|p| p.p50_us),
        p99_us: pick(|p| p.p99_us),
        per_second: pick(|p| p.per_second),
    }
}

/// One probe's summary line.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
}

struct Bench {
    ns: Netns,
    /// The client of the direct and socket load-balancing runs.
    client: Netns,
    /// The client of the iptables runs: its own namespace, so conntrack (which the nat rules
    /// switch on for a namespace) never touches the other runs.
    ipt_client: Netns,
    cgroup: Cgroup,
    echo: PathBuf,
    connects: u32,
}

impl Bench {
    /// Runs `mesh-echo probe` from the client pod, in the programs' cgroup or not.
    fn probe(&self, target: &str, in_cgroup: bool, connect_only: bool) -> Result<Probe> {
        let client = if target.starts_with("10.112.") {
            &self.ipt_client
        } else {
            &self.client
        };
        let mut cmd = client.command(&self.echo);
        cmd.args([
            "probe",
            "--tcp",
            target,
            "--summary",
            "--timeout-ms",
            "2000",
        ])
        .args(["--count", &self.connects.to_string()]);
        if connect_only {
            cmd.arg("--connect-only");
        }
        let mut cmd = if in_cgroup {
            self.cgroup.wrap(&cmd)
        } else {
            cmd
        };
        let out = cmd.output().context("running mesh-echo probe")?;
        let line: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("probe output: {}", String::from_utf8_lossy(&out.stderr)))?;
        ensure!(
            line["failures"] == 0,
            "{target}: {} of {} connections failed",
            line["failures"],
            line["attempts"]
        );
        Ok(Probe {
            p50_us: line["p50_us"].as_f64().unwrap_or(0.0),
            p99_us: line["p99_us"].as_f64().unwrap_or(0.0),
            per_second: line["per_second"].as_f64().unwrap_or(0.0),
        })
    }

    /// Connect latency and short connections: the median of each figure over `ROUNDS`
    /// rounds (the machine is noisy; one round is a few hundred milliseconds).
    fn measure(&self, target: &str, in_cgroup: bool) -> Result<(Probe, Probe)> {
        let mut connect = Vec::new();
        let mut short = Vec::new();
        for _ in 0..ROUNDS {
            connect.push(self.probe(target, in_cgroup, true)?);
            short.push(self.probe(target, in_cgroup, false)?);
        }
        Ok((median(&connect), median(&short)))
    }

    /// kube-proxy-style rules for `n` services in the iptables client's namespace; returns the load
    /// time in seconds.
    fn iptables(&self, n: u32) -> Result<f64> {
        let mut rules = String::from("*nat\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
        for i in 0..n {
            rules.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n:KUBE-SEP-{i} - [0:0]\n"));
        }
        rules.push_str("-A OUTPUT -j KUBE-SERVICES\n");
        // The measured service (index 0) is matched last.
        for i in (0..n).rev() {
            let vip = Ipv4Addr::from(IPTABLES_BASE + 1 + i);
            rules.push_str(&format!(
                "-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}\n-A KUBE-SVC-{i} -j KUBE-SEP-{i}\n-A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination {BACKEND}:8080\n"
            ));
        }
        rules.push_str("COMMIT\n");
        let started = Instant::now();
        let mut child = self
            .ipt_client
            .command("iptables-restore")
            .stdin(Stdio::piped())
            .spawn()
            .context("iptables-restore")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(rules.as_bytes())?;
        let status = child.wait()?;
        ensure!(status.success(), "iptables-restore failed");
        let loaded = started.elapsed().as_secs_f64();
        // One client reusing its source ports every few seconds would meet its own flows in
        // conntrack's TIME_WAIT (120 s) and stall on SYN retransmits: a benchmark artifact,
        // not kube-proxy's cost.
        let out = self
            .ipt_client
            .command("sysctl")
            .args(["-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"])
            .output()?;
        ensure!(out.status.success(), "sysctl conntrack: {out:?}");
        Ok(loaded)
    }

    fn iptables_flush(&self) -> Result<()> {
        for args in [["-t", "nat", "-F"], ["-t", "nat", "-X"]] {
            let out = self.ipt_client.command("iptables").args(args).output()?;
            ensure!(out.status.success(), "iptables {args:?}: {out:?}");
        }
        Ok(())
    }
}

/// The `i`th filler VIP (10.96.0.2 onwards).
fn filler_vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(TARGET_VIP) + 1 + i)
}

pub async fn run(args: DatapathArgs, command: String) -> Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(args, command)).await?
}

fn run_blocking(args: DatapathArgs, command: String) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "mesh-bench datapath needs root (namespaces, cgroups, eBPF)"
    );
    let echo = std::env::current_exe()?.with_file_name("mesh-echo");
    ensure!(
        echo.is_file(),
        "{} is missing (cargo build -p lab)",
        echo.display()
    );
    lab::ensure_bpffs()?;
    let id = lab::unique("rmb");
    let ns = Netns::new(&format!("{id}-node"))?;
    netns::bridge(&ns, "br0", "10.244.0.1/16")?;
    let client = Netns::new(&format!("{id}-client"))?;
    netns::pod_link(
        &ns,
        &format!("lxc{id}c"),
        Some("br0"),
        &client,
        "10.244.0.10/16",
        "10.244.0.1",
    )?;
    let ipt_client = Netns::new(&format!("{id}-ipt"))?;
    netns::pod_link(
        &ns,
        &format!("lxc{id}i"),
        Some("br0"),
        &ipt_client,
        "10.244.0.11/16",
        "10.244.0.1",
    )?;
    let backend = Netns::new(&format!("{id}-backend"))?;
    netns::pod_link(
        &ns,
        &format!("lxc{id}b"),
        Some("br0"),
        &backend,
        &format!("{BACKEND}/16"),
        "10.244.0.1",
    )?;
    // Hundreds of thousands of short connections from one address to one backend.
    for (ns, name) in [
        (&client, "client"),
        (&ipt_client, "iptables client"),
        (&backend, "backend"),
    ] {
        let out = ns
            .command("sysctl")
            .args([
                "-qw",
                "net.ipv4.ip_local_port_range=1024 65535",
                "net.ipv4.tcp_tw_reuse=1",
            ])
            .output()?;
        ensure!(out.status.success(), "sysctl in {name}: {out:?}");
    }
    let mut serve = backend.command(&echo);
    serve.args(["serve", "--name", "backend", "--tcp", "8080"]);
    let _server = Process::spawn(serve, None)?;
    let cgroup = Cgroup::new(&lab::cgroup2_root()?, &id)?;
    let pins = Pins::new(PathBuf::from("/sys/fs/bpf").join(&id));
    struct Unpin<'a>(&'a Pins);
    impl Drop for Unpin<'_> {
        fn drop(&mut self) {
            let _ = self.0.uninstall();
        }
    }
    let _unpin = Unpin(&pins);
    let (_programs, mut maps, _) =
        Programs::install(&pins, cgroup.path(), node_agent::datapath::AttachMode::Tcx)?;
    let bench = Bench {
        ns,
        client,
        ipt_client,
        cgroup,
        echo,
        connects: args.connects,
    };
    let _ = &bench.ns;
    wait_for_backend(&bench)?;

    let machine = Machine::read([]);
    let direct_target = format!("{BACKEND}:8080");
    let backend = Backend {
        ip: BACKEND,
        port: 8080,
        cluster_id: 1,
        flags: backend_flags::READY | backend_flags::LOCAL,
    };
    let frontend = |vip| Frontend {
        vip,
        port: 80,
        proto: PROTO_TCP,
    };
    maps.set_service(&frontend(TARGET_VIP), &[], &[backend])?;
    let mut programmed = 1u32;
    let mut sizes = args.services.clone();
    sizes.sort_unstable();
    let mut rows = Vec::new();
    for n in sizes {
        let started = Instant::now();
        while programmed < n {
            maps.set_service(&frontend(filler_vip(programmed)), &[], &[backend])?;
            programmed += 1;
        }
        let program_s = started.elapsed().as_secs_f64();
        eprintln!(
            "datapath: {n} services: direct, then socket load balancing (programmed in {program_s:.2} s)"
        );
        let direct = bench.measure(&direct_target, false)?;
        let lb = bench.measure(&format!("{TARGET_VIP}:80"), true)?;
        let iptables = if n <= args.iptables_max {
            eprintln!("datapath: {n} services: iptables");
            let load_s = bench.iptables(n)?;
            let target = format!("{}:80", Ipv4Addr::from(IPTABLES_BASE + 1));
            let m = bench.measure(&target, false);
            bench.iptables_flush()?;
            Some((m?, load_s))
        } else {
            None
        };
        rows.push((n, direct, lb, iptables, program_s));
    }
    write_report(&args.out, &command, &machine, args.connects, &rows)
}

fn wait_for_backend(bench: &Bench) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = bench
            .client
            .command(&bench.echo)
            .args([
                "probe",
                "--tcp",
                &format!("{BACKEND}:8080"),
                "--timeout-ms",
                "500",
            ])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the backend never answered");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

type Row = (
    u32,
    (Probe, Probe),
    (Probe, Probe),
    Option<((Probe, Probe), f64)>,
    f64,
);

fn write_report(
    out: &Path,
    command: &str,
    machine: &Machine,
    connects: u32,
    rows: &[Row],
) -> Result<()> {
    let us = |p: &Probe| format!("{:.0} / {:.0}", p.p50_us, p.p99_us);
    let mut md = format!(
        "# mesh-bench datapath\n\nCommand: `{command}`\n\n- Machine: {machine}\n- One client and one backend pod (network namespaces on a bridge); connect latency p50 / p99 in µs from `mesh-echo probe --connect-only`, short connections (connect, read the reply, close) per second from one client, one at a time.\n- Each figure is the median of {ROUNDS} rounds of {connects} connections; direct (the floor) is measured beside socket load balancing at every size, before that size's iptables rules are loaded.\n- iptables: kube-proxy-shaped DNAT rules restored in a second client's namespace (nf_tables backend), the measured service matched last; conntrack's TIME_WAIT is 1 s there, so one client reusing its ports does not stall on its own old flows.\n\n| services | socket LB connect µs | iptables connect µs | direct connect µs | socket LB short conn µs | iptables short conn µs | socket LB conn/s | iptables conn/s | direct conn/s | socket LB vs direct (rate) | iptables rules load |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut raw_rows = Vec::new();
    for (n, direct, lb, ipt, program_s) in rows {
        let (ipt_us, ipt_full, ipt_rate, ipt_load) = match ipt {
            Some(((c, r), load)) => (
                us(c),
                us(r),
                format!("{:.0}", r.per_second),
                format!("{load:.1} s"),
            ),
            None => (
                "not run".into(),
                "not run".into(),
                "not run".into(),
                "-".into(),
            ),
        };
        md.push_str(&format!(
            "| {n} | {} | {ipt_us} | {} | {} | {ipt_full} | {:.0} | {ipt_rate} | {:.0} | {:.2}× | {ipt_load} |\n",
            us(&lb.0),
            us(&direct.0),
            us(&lb.1),
            lb.1.per_second,
            direct.1.per_second,
            lb.1.per_second / direct.1.per_second,
        ));
        raw_rows.push(json!({
            "services": n,
            "programmed_seconds": program_s,
            "direct": {"connect_p50_us": direct.0.p50_us, "connect_p99_us": direct.0.p99_us, "short_p50_us": direct.1.p50_us, "short_p99_us": direct.1.p99_us, "per_second": direct.1.per_second},
            "socket_lb": {"connect_p50_us": lb.0.p50_us, "connect_p99_us": lb.0.p99_us, "short_p50_us": lb.1.p50_us, "short_p99_us": lb.1.p99_us, "per_second": lb.1.per_second},
            "iptables": ipt.map(|((c, r), load)| json!({"connect_p50_us": c.p50_us, "connect_p99_us": c.p99_us, "short_p50_us": r.p50_us, "short_p99_us": r.p99_us, "per_second": r.per_second, "load_seconds": load})),
        }));
    }
    let raw = json!({
        "command": command,
        "machine": machine.to_string(),
        "rounds": ROUNDS,
        "rows": raw_rows,
    });
    crate::report::write_table(out, "datapath", &md, &raw)
}
