//! `mesh-chaos`: runs fault scenarios on the lab and checks that nothing was lost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use chaos::report;
use chaos::scenario::{self, Options, SCENARIOS};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about, long_about)]
/// Fault scenarios on the lab (partitions, kills, delay and loss) with KV load, service churn
/// and connections, judged by checkers: linearizability, watch guarantees, no acknowledged
/// write lost, convergence of mirrors and agents' maps, availability of local work. Needs
/// root (the lab) and the workspace's binaries next to this one.
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs scenarios and writes a report (markdown + JSON) per scenario; exits 1 if any
    /// checker found a violation.
    Run(RunArgs),
    /// Lists the scenarios.
    List,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// One scenario (default: all of them, one after another).
    #[arg(long)]
    scenario: Option<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long the faults last (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = mesh_api::duration::parse)]
    duration: Duration,
    /// Workloads alone before the faults and after convergence.
    #[arg(long, default_value = "5s", value_parser = mesh_api::duration::parse)]
    settle: Duration,
    /// How long convergence may take after the faults end before it is a violation.
    #[arg(long, default_value = "60s", value_parser = mesh_api::duration::parse)]
    converge_within: Duration,
    /// Where to write the reports.
    #[arg(long, default_value = "chaos/results")]
    out: PathBuf,
    /// The mesh-apiserver to run instead of the one beside mesh-chaos (the suite's
    /// must-fail test runs one built with test faults).
    #[arg(long)]
    apiserver: Option<PathBuf>,
    /// More flags for every node agent, one per use (e.g. `--agent-arg=--reachability-port=0`:
    /// the suite's must-fail failover test runs the agents without their probes).
    #[arg(long, allow_hyphen_values = true)]
    agent_arg: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.command {
        Command::List => {
            for (name, about) in SCENARIOS {
                println!("{name:24} {about}");
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mesh-chaos: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let run = async {
                let names: Vec<&str> = match &args.scenario {
                    Some(s) => vec![s.as_str()],
                    None => SCENARIOS.iter().map(|(n, _)| *n).collect(),
                };
                run(&names, &args, &command).await
            };
            match runtime.block_on(run) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(n) => {
                    eprintln!("mesh-chaos: {n} violations");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("mesh-chaos: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

async fn run(names: &[&str], args: &RunArgs, command: &str) -> Result<usize> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("mesh-chaos needs root (the lab: network namespaces, cgroups, eBPF)");
    }
    for n in names {
        scenario::known(n)?;
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("mesh-chaos's directory")?;
    let work = tempfile::tempdir()?;
    let mut bins = lab::binaries::Binaries::find(dir)?;
    if let Some(a) = &args.apiserver {
        anyhow::ensure!(a.is_file(), "--apiserver {}: no such file", a.display());
        bins.apiserver = a.clone();
    }
    let opts = Options {
        seed: args.seed,
        fault: args.duration,
        settle: args.settle,
        converge_within: args.converge_within,
        bins,
        base: work.path().to_owned(),
        agent_args: args.agent_arg.clone(),
    };
    let mut violations = 0;
    for name in names {
        let r = scenario::run(name, &opts, &|line: &str| eprintln!("{line}")).await?;
        violations += r.violation_count();
        report::write(&args.out, &r, command)?;
    }
    Ok(violations)
}
