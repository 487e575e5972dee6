//! `mesh-bench dns`: the node agent's `clusterset.local` DNS server (`node_agent::dns`), in two
//! parts.
//!
//! 1. **Queries answered by one agent**, in-process: a [`MeshState`] built from the records of
//!    `--services` imported services (ClusterSetIP imports; one in a hundred headless, with three
//!    ready endpoints each), `refresh_clusterset` and [`Zone::replace`], as the agent does after
//!    its first list, then [`node_agent::dns::serve`] on a loopback port, on a current-thread
//!    runtime of its own as in the agent. A UDP load generator — `--clients` sockets on one
//!    current-thread runtime, each sending the next A query as soon as the last one is answered
//!    — asks for random existing names (seeded) and a share of names that do not exist, for
//!    `--duration`, and checks every answer against the state (the ClusterSetIP, the headless
//!    endpoints, NXDOMAIN); a wrong answer fails the run. The same client, in the same run,
//!    measures:
//!    - **dnsmasq** (the anchor: an in-memory DNS server we can run here, CoreDNS is not
//!      installable), as its own process on another loopback port, serving the same names as
//!      host records (`--addn-hosts`, `--local=/clusterset.local/` so a missing name is
//!      NXDOMAIN, no cache or upstream);
//!    - **the floor**: a UDP echo responder (the request's bytes sent back with the QR bit
//!      set) on one thread, which bounds what the client and loopback can do.
//!
//!    Every server is measured `--rounds` times, interleaved; the report gives the range. Each
//!    server's CPU time during the measured window comes from `/proc` (the server thread, or
//!    dnsmasq's process), as µs per answered query.
//! 2. **ServiceExport → the name resolves**, in the lab (`--lab`, root): the default lab plus
//!    one new exported service `demo/bench-<i>` in `infra` per change (selecting its echo
//!    pods), made with `Lab::apply` after a seeded random pause of 0–1 s (so the publisher's
//!    1 s manifests poll is sampled uniformly); from the apply returning, a UDP socket in `apps`'
//!    node-1 network namespace asks that node's agent for `bench-<i>.demo.svc.clusterset.local`
//!    every `--lab-poll` (20 ms) until it answers with an address. A watch on `infra`'s store
//!    notes when the service record is published, so the manifests poll (a lab-only cost: on
//!    Kubernetes the publisher watches the API) is reported as its own stage.
//!    `--lab-rounds` rounds of `--lab-changes` changes; the report gives the range of each
//!    round's p50/p99 and the pooled figures.
//!
//! Layout: [`load`] (the state, the query mix, the client and its checks), [`servers`] (the
//! three servers, stopped on drop), [`in_lab`] (the lab part), [`report`] (markdown and JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use clap::Args;
use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use lab::binaries::Binaries;
use lab::instance::{Lab, UpOptions};
use lab::spec::{LabSpec, PortSpec, ServiceSpec};
use mesh_api::records::{ClusterRecord, Endpoint, EndpointsRecord, Port, ServiceRecord};
use mesh_api::{Key, Record, SCHEMA};
use mesh_client::Settings;
use mesh_client::pki::PkiDir;
use node_agent::dns::{DEFAULT_ZONE, DnsMetrics, Zone};
use node_agent::state::MeshState;
use serde::Serialize;
use serde_json::json;

use crate::machine::Machine;
use crate::stats::{Percentiles, Samples};

mod in_lab;
mod load;
mod report;
mod servers;

use in_lab::*;
use load::*;
use report::*;
use servers::*;

/// `mesh-bench dns` flags.
#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Imported services in the agent's zone (and dnsmasq's host records).
    #[arg(long, default_value_t = 10_000)]
    pub services: u32,
    /// Concurrent client sockets, each with one query outstanding.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// How long each measurement sends queries (after a 0.5 s warm-up).
    #[arg(long, default_value = "5s", value_parser = mesh_api::duration::parse)]
    pub duration: Duration,
    /// Measurements of each server (interleaved).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Share of queries, in percent, for names that do not exist (NXDOMAIN).
    #[arg(long, default_value_t = 10)]
    pub nxdomain_percent: u32,
    /// Seed of the query mix and of the lab's pauses.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The dnsmasq binary [default: dnsmasq on PATH, else /usr/sbin/dnsmasq].
    #[arg(long)]
    pub dnsmasq: Option<PathBuf>,
    /// Also measure ServiceExport → resolution in the lab (root).
    #[arg(long)]
    pub lab: bool,
    /// Exports per lab round.
    #[arg(long, default_value_t = 20)]
    pub lab_changes: u32,
    /// Lab rounds.
    #[arg(long, default_value_t = 3)]
    pub lab_rounds: u32,
    /// Between the lab's DNS queries for a new export's name.
    #[arg(long, default_value = "20ms", value_parser = mesh_api::duration::parse)]
    pub lab_poll: Duration,
    /// How long one export may take to resolve before the run fails.
    #[arg(long, default_value = "30s", value_parser = mesh_api::duration::parse)]
    pub patience: Duration,
    /// Where to write dns.md and dns.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// Unrecorded head of every measurement: sockets set up, caches warm.
const WARMUP: Duration = Duration::from_millis(500);
/// A query unanswered for this long counts as a timeout (and the client moves on).
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// One import in this many is headless.
const HEADLESS_EVERY: u32 = 100;
/// Ready endpoints of each headless import.
const HEADLESS_ENDPOINTS: u32 = 3;
/// Namespaces the services are spread over.
const NAMESPACES: u32 = 100;
/// Distinct names that do not exist, asked for the NXDOMAIN share.
const ABSENT_NAMES: u32 = 1_000;
/// The agent's own cluster (its ClusterSetIP range allocates the addresses).
const OWN_CLUSTER: &str = "apps";
/// The exporting cluster.
const EXPORTER: &str = "infra";
/// The ClusterSetIP range: the chart's default (`clustersetServiceCIDR`, in RFC 2544's block).
const CLUSTERSET_CIDR: &str = "198.18.0.0/16";
/// /proc's clock ticks per second (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Runs the benchmark.
pub async fn run(args: DnsArgs, command: String) -> Result<()> {
    ensure!(args.services > 0, "--services must be at least 1");
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(
        args.nxdomain_percent <= 100,
        "--nxdomain-percent is 0..=100"
    );
    if args.lab {
        ensure!(
            nix::unistd::Uid::effective().is_root(),
            "mesh-bench dns --lab needs root (the lab: network namespaces, cgroups, eBPF)"
        );
        ensure!(
            args.lab_changes > 0 && args.lab_rounds > 0,
            "--lab-changes and --lab-rounds must be at least 1"
        );
    }
    let dnsmasq = match &args.dnsmasq {
        Some(p) => p.clone(),
        None => find_dnsmasq().context(
            "dnsmasq is missing (apt-get install dnsmasq-base, or pass --dnsmasq; \
             scripts/deps.sh installs it with RAFTMESH_NEED_ETCD_SERVER=1)",
        )?,
    };
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("mesh-bench's directory")?
        .to_owned();
    let mut servers = vec![("dnsmasq", dnsmasq.as_path())];
    let agent_bin = exe_dir.join("node-agent");
    if args.lab {
        servers.push(("node-agent", agent_bin.as_path()));
    }
    let machine = Machine::read(servers);

    let settings = InProcess {
        dnsmasq,
        services: args.services,
        clients: args.clients,
        duration: args.duration,
        rounds: args.rounds,
        nxdomain_percent: args.nxdomain_percent,
        seed: args.seed,
    };
    let served = tokio::task::spawn_blocking(move || in_process(&settings)).await??;
    let lab = if args.lab {
        Some(lab_phase(&args, &exe_dir).await?)
    } else {
        eprintln!("the lab part is skipped (run with --lab, as root)");
        None
    };
    report(&args, &served, lab.as_ref(), &machine, command)
}

/// `dnsmasq` on PATH, else `/usr/sbin/dnsmasq` (Debian's, outside a user's PATH).
fn find_dnsmasq() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Part 1: queries answered by one agent, against dnsmasq and the floor.

/// The next number of a xorshift64 sequence (query picks and pauses need no better).
fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

// ---------------------------------------------------------------------------------------------
// The report.
