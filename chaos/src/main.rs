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
    Run {
        /// One scenario (default: all of them, one after another).
        #[arg(long)]
        scenario: Option<String>,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long the faults last (e.g. 60s).
        #[arg(long, default_value = "60s", value_parser = duration)]
        duration: Duration,
        /// Workloads alone before the faults and after convergence.
        #[arg(long, default_value = "5s", value_parser = duration)]
        settle: Duration,
        /// How long convergence may take after the faults end before it is a violation.
        #[arg(long, default_value = "60s", value_parser = duration)]
        converge_within: Duration,
        /// Where to write the reports.
        #[arg(long, default_value = "chaos/results")]
        out: PathBuf,
    },
    /// Lists the scenarios.
    List,
}

fn duration(s: &str) -> Result<Duration, String> {
    lab::spec::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 60s or 500ms"))
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
        Command::Run {
            scenario,
            seed,
            duration,
            settle,
            converge_within,
            out,
        } => {
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
                let names: Vec<&str> = match &scenario {
                    Some(s) => vec![s.as_str()],
                    None => SCENARIOS.iter().map(|(n, _)| *n).collect(),
                };
                run(
                    &names,
                    seed,
                    duration,
                    settle,
                    converge_within,
                    &out,
                    &command,
                )
                .await
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

async fn run(
    names: &[&str],
    seed: u64,
    fault: Duration,
    settle: Duration,
    converge_within: Duration,
    out: &std::path::Path,
    command: &str,
) -> Result<usize> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("mesh-chaos needs root (the lab: network namespaces, cgroups, eBPF)");
    }
    for n in names {
        scenario::known(n)?;
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("mesh-chaos's directory")?;
    let work = tempfile::tempdir()?;
    let opts = Options {
        seed,
        fault,
        settle,
        converge_within,
        bins: lab::mesh::Binaries::find(dir)?,
        base: work.path().to_owned(),
    };
    let mut violations = 0;
    for name in names {
        let r = scenario::run(name, &opts, &|line: &str| eprintln!("{line}")).await?;
        violations += r.violation_count();
        report::write(out, &r, command)?;
    }
    Ok(violations)
}
