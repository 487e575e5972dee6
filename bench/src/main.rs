//! `mesh-bench`: raftmesh measured side by side against its anchor, in one run.
//!
//! Machines here are noisy, so only ratios measured in the same run mean anything: every
//! subcommand runs the reference and raftmesh one after the other with the same client code and
//! writes both to `bench/results/` with the command and the machine's facts.
//!
//! # Layout
//! - [`datapath`]: `mesh-bench datapath`, connect() to a VIP through socket load balancing
//!   against the backend directly and kube-proxy-style iptables rules.
//! - [`agent`]: `mesh-bench agent`, the node agent's initial programming, memory per remote
//!   endpoint and store-change-to-map latency.
//! - [`kv`]: `mesh-bench kv`, the store against etcd (workloads, load driver).
//! - [`publish`]: `mesh-bench publish`, publishing a cluster's objects as records.
//! - [`mirror`]: `mesh-bench mirror`, one cluster's records reaching another (against etcd's
//!   make-mirror).
//! - [`propagation`]: `mesh-bench propagation`, a new backend in one lab cluster's manifests
//!   to the other cluster's agents' maps and first connection, before and after a leader kill.
//! - [`dns`]: `mesh-bench dns`, the agent's `clusterset.local` DNS: queries/s and latency with
//!   10,000 imports against dnsmasq and a UDP echo floor; ServiceExport → resolution in the lab.
//! - [`scale`]: `mesh-bench scale`, one cluster with real agents mirroring up to 255
//!   synthetic remotes (served by this process).
//! - [`report`]: the markdown table, the raw JSON and the PNG chart.
//! - [`machine`]: cores, CPU, kernel, versions.
//! - [`stats`]: latency samples and percentiles.
//! - [`synthetic`]: clusters of a given size as manifests, for `publish` and `mirror`.
//! - [`progress`]: progress lines on stderr.

mod agent;
mod churn;
mod datapath;
mod dns;
mod floor;
mod kv;
mod machine;
mod mirror;
mod procfs;
mod progress;
mod propagation;
mod publish;
mod report;
mod scale;
mod stats;
mod synthetic;
mod wireguard;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about, long_about)]
/// Benchmarks raftmesh against its anchor, side by side in one run, and writes the results
/// (markdown table, raw JSON, PNG chart) with the command and machine facts.
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The mesh API server's store against etcd: 3-member clusters of each on loopback, driven
    /// by the same etcd-API client code (puts, gets, CAS txns, watch fan-out, leases, memory,
    /// disk and restart time). Needs etcd (Debian's etcd-server) and a mesh-apiserver binary.
    Kv(kv::KvArgs),
    /// Publishing a synthetic cluster (default 1,000 services, 10,000 pods) from
    /// --manifests-dir: initial sync time, writes, keys, bytes in the store, disk and memory.
    Publish(publish::PublishArgs),
    /// Mirroring between two connected clusters (cluster A publishes 1,000 services, 10,000
    /// pods): initial mirror time and writes, propagation of single changes (p50/p99/max under
    /// background churn), and the writes a restart costs; against etcd's `etcdctl
    /// make-mirror` on the same data. Needs meshctl next to mesh-bench, and etcd for the anchor.
    Mirror(mirror::MirrorArgs),
    /// connect() to a service VIP with 10 to 100,000 services programmed: socket load
    /// balancing against the backend directly and kube-proxy-style iptables DNAT (root).
    Datapath(datapath::DatapathArgs),
    /// The node agent with 100,000 remote endpoints: initial programming, bytes per endpoint,
    /// store change → map latency (root).
    Agent(agent::AgentArgs),
    /// Pod-to-pod TCP throughput and latency between two lab clusters through the agents'
    /// WireGuard tunnels (userspace boringtun) against the same path in the clear (root;
    /// needs iperf3 and boringtun-cli).
    Wireguard(wireguard::WireguardArgs),
    /// In the lab (root): the time from a new backend pod in one cluster's manifests to the
    /// other cluster's store, its agents' maps and the first connection the pod answers,
    /// p50/p99 over --changes changes; then the same after killing both leaders on the path.
    /// The manifests poll (1 s, lab only) is reported as its own stage.
    Propagation(propagation::PropagationArgs),
    /// In the lab (root): apps' API-server members' memory while a remote rewrites a record at
    /// the most apps takes from one remote, and while a stolen agent certificate rewrites as
    /// fast as one identity may, for --minutes each; with the store's quota and its bound.
    Churn(churn::ChurnArgs),
    /// The node agent's clusterset.local DNS: queries/s and p50/p99 latency answered from
    /// --services imports (default 10,000), against dnsmasq with the same names as host records
    /// and a UDP echo floor, with the same client; with --lab (root), the time from a
    /// ServiceExport in one lab cluster to the name resolving in the other (p50/p99). Needs
    /// dnsmasq (Debian's dnsmasq-base).
    Dns(dns::DnsArgs),
    /// One real 3-member cluster with real agents mirroring 10 to 255 synthetic remote
    /// clusters (each 100 nodes, 1,000 endpoints by default, served over TLS by this process):
    /// initial mirror, leader memory and CPU per remote, propagation under churn, a new agent,
    /// a restart of every member; scale.md, scale.json and a PNG plot of each series against
    /// the number of clusters (root).
    Scale(scale::ScaleArgs),
}

/// Resolves with the signal's name on SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("mesh-bench")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mesh-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let run = async {
            match cli.command {
                Command::Kv(args) => kv::run(args, command).await,
                Command::Publish(args) => publish::run(args, command).await,
                Command::Mirror(args) => mirror::run(args, command).await,
                Command::Datapath(args) => datapath::run(args, command).await,
                Command::Agent(args) => agent::run(args, command).await,
                Command::Wireguard(args) => wireguard::run(args, command).await,
                Command::Propagation(args) => propagation::run(args, command).await,
                Command::Churn(args) => churn::run(args, command).await,
                Command::Dns(args) => dns::run(args, command).await,
                Command::Scale(args) => scale::run(args, command).await,
            }
        };
        // On Ctrl-C or SIGTERM the run is dropped, so the clusters, agents, pins and cgroups
        // it started are stopped and removed by their guards, as on an error.
        tokio::select! {
            result = run => result,
            signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
