//! node-agent: raftmesh's per-node agent. Parses flags, sets up logging, validates (exit 64 on
//! bad configuration) and calls [`node_agent::agent::run`]; `maps` and `--uninstall` work on
//! the pinned datapath without a running agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use node_agent::config::{Config, Flags, WgBackend, default_bpffs, wg_interface};
use node_agent::datapath::Pins;

/// raftmesh's node agent: programs global services and cross-cluster policy into eBPF maps,
/// from the cluster's mesh API server. With no subcommand it runs the agent.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Remove the datapath (links, tc filters, maps, pins; the WireGuard interface; the routing
    /// rules and the nft table) from --bpffs (or the default of --node) and exit. A directory
    /// the agent did not make (a bpffs mount point) is never removed.
    #[arg(long)]
    uninstall: bool,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the pinned maps decoded (services, backends, ipcache, policy, verdicts on new
    /// flows by source identity, counters) and how the policy programs are attached to this
    /// namespace's interfaces (tcx or tc).
    Maps {
        /// The pin directory [default: /sys/fs/bpf/raftmesh/<--node>].
        #[arg(long)]
        bpffs: Option<PathBuf>,
        /// The node whose default pin directory to read.
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print the WireGuard interface's peers: cluster and node, endpoint, allowed IPs, bytes,
    /// and how long ago their transfer counters last changed (boringtun's handshake time is
    /// not reliable).
    Wg {
        /// The interface.
        #[arg(long, default_value = "raftmesh0")]
        wg_interface: String,
        /// Its backend.
        #[arg(long, value_enum, default_value_t = WgBackend::Auto)]
        wg_backend: WgBackend,
        /// The agent's state directory (for the peers' names and counter ages).
        #[arg(long, default_value = "/var/lib/raftmesh/agent")]
        state_dir: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn pin_dir(bpffs: Option<PathBuf>, node: Option<&str>) -> Result<PathBuf, String> {
    match (bpffs, node) {
        (Some(p), _) => Ok(p),
        (None, Some(n)) => Ok(default_bpffs(n)),
        (None, None) => Err("give --bpffs PATH or --node NAME".to_owned()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn show_wg(flags: &Flags, output: Output) -> ExitCode {
    let interface = match wg_interface(flags) {
        Ok(Some(i)) => i,
        Ok(None) => {
            eprintln!("node-agent wg: --wg-backend none has no interface");
            return ExitCode::from(64);
        }
        Err(e) => {
            eprintln!("node-agent wg: {e}");
            return ExitCode::from(64);
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match node_agent::show::wg::read(&interface, &flags.state_dir, now_ms) {
        Ok(rows) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&node_agent::show::wg::to_json(
                        interface.name(),
                        &rows
                    ))
                    .expect("json")
                ),
                Output::Table => print!(
                    "{}",
                    node_agent::show::wg::to_table(interface.name(), &rows)
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("node-agent wg: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Wg {
        wg_interface,
        wg_backend,
        state_dir,
        output,
    }) = cli.command
    {
        let flags = Flags {
            wg_interface,
            wg_backend,
            state_dir,
            ..cli.flags
        };
        return show_wg(&flags, output);
    }
    if let Some(Command::Maps {
        bpffs,
        node,
        output,
    }) = cli.command
    {
        let dir = match pin_dir(bpffs, node.as_deref()) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("node-agent maps: {e}");
                return ExitCode::from(64);
            }
        };
        return match node_agent::show::read(&Pins::new(&dir)) {
            Ok(shown) => {
                match output {
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&node_agent::show::to_json(&shown))
                            .expect("json")
                    ),
                    Output::Table => print!("{}", node_agent::show::to_table(&shown)),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("node-agent maps: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    if cli.uninstall {
        let dir = match pin_dir(cli.flags.bpffs.clone(), cli.flags.node.as_deref()) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("node-agent --uninstall: {e}");
                return ExitCode::from(64);
            }
        };
        match wg_interface(&cli.flags) {
            Ok(Some(i)) => match i.delete() {
                Ok(true) => println!("deleted WireGuard interface {}", i.name()),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("node-agent --uninstall: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Ok(None) => {}
            Err(e) => eprintln!("node-agent --uninstall: WireGuard left alone: {e}"),
        }
        match node_agent::datapath::uninstall_tc_filters() {
            Ok(interfaces) if !interfaces.is_empty() => println!(
                "removed the policy tc filters from {}",
                interfaces.join(", ")
            ),
            Ok(_) => {}
            Err(e) => {
                eprintln!("node-agent --uninstall: {e}");
                return ExitCode::FAILURE;
            }
        }
        for what in node_agent::wg::Wg::uninstall_plumbing(Some(&cli.flags.nft_program)) {
            println!("removed {what}");
        }
        return match Pins::new(&dir).uninstall() {
            Ok(removed) => {
                println!(
                    "removed {} pins under {} (links detached, maps freed)",
                    removed.len(),
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("node-agent --uninstall: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let filter = tracing_subscriber::EnvFilter::try_new(&cli.flags.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let mut config = match Config::validate(&cli.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("node-agent: invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    // The WireGuard backend is settled by trying: the kernel creates the interface (loading
    // the module on demand) or says why not.
    if let Some(wg) = config.wg.as_mut() {
        match wg.interface.resolve() {
            Ok(refused) => wg.kernel_refused = refused,
            Err(e) => {
                tracing::error!("node-agent: --wg-backend: {e}");
                eprintln!("node-agent: --wg-backend: {e}");
                return ExitCode::from(64);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let listener = node_agent::agent::bind_metrics(&config).await?;
        node_agent::agent::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("node-agent: {e}");
            eprintln!("node-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
