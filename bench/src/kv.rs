//! `mesh-bench kv`: the mesh API server's store against etcd, side by side in one run.
//!
//! Both servers run as 3-member clusters on loopback (data dirs under `$TMPDIR`, so on the same
//! disk), each started with its default flags: both fsync every commit, both snapshot every
//! 100,000 entries, neither compacts within the run. The same workload code (the `etcd-client`
//! crate) drives first etcd, then raftmesh; each server gets a fresh cluster for the throughput
//! workloads and another for the footprint ones.

mod load;
pub(crate) mod workloads;

use std::path::PathBuf;

use anyhow::{Context, Result};
use testkit::localcluster::{Cluster, Flavor, Spec};

use crate::machine::{self, Machine};
use crate::progress::Progress;
use crate::report::{self, Report};
pub use crate::report::{ServerRun, Size};
pub use workloads::{Outcome, Sizes};
use workloads::{
    Target, Via, failover, footprint, get, leases, put, txn_cas, watch_agents, watch_fanout,
    watch_idle,
};

use load::Load;

/// `mesh-bench kv`'s options.
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    /// Workload sizes: `full` for numbers worth comparing, `smoke` to check that every workload
    /// runs.
    #[arg(long, value_enum, default_value_t = Size::Full)]
    pub size: Size,
    /// Directory for kv-<size>.md, .json and .png.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// The mesh-apiserver binary [default: next to mesh-bench].
    #[arg(long)]
    pub raftmesh_bin: Option<PathBuf>,
    /// The etcd binary (Debian's etcd-server package installs /usr/bin/etcd).
    #[arg(long, default_value = testkit::localcluster::flavor::DEFAULT_ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// Run only these workloads (comma-separated), e.g. to profile one: put-1,
    /// put-1-follower, put-1-balanced, put-256, get-linearizable, get-serializable, get-shared,
    /// txn-cas, watch-fanout-1w, watch-fanout, watch-agents, watch-idle, leases, footprint,
    /// failover.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(WORKLOADS))]
    pub workloads: Vec<String>,
    /// How many times to run everything (etcd, then raftmesh, each time); the table gives each
    /// figure's range over the rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
}

/// The names `--workloads` accepts, in run order.
const WORKLOADS: [&str; 15] = [
    "put-1",
    "put-1-follower",
    "put-1-balanced",
    "put-256",
    "get-linearizable",
    "get-serializable",
    "get-shared",
    "txn-cas",
    "watch-fanout-1w",
    "watch-fanout",
    "watch-agents",
    "watch-idle",
    "leases",
    "footprint",
    "failover",
];

pub async fn run(args: KvArgs, command: String) -> Result<()> {
    let raftmesh_bin = match args.raftmesh_bin {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("mesh-apiserver"),
    };
    let servers = [
        ("etcd", Flavor::Etcd(args.etcd_bin)),
        ("raftmesh", Flavor::Raftmesh(raftmesh_bin)),
    ];
    for (name, flavor) in &servers {
        anyhow::ensure!(
            flavor.program().is_file(),
            "{name} binary {} not found",
            flavor.program().display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let sizes = args.size.sizes();
    let machine = Machine::read(servers.iter().map(|(name, f)| (*name, f.program())));
    eprintln!("mesh-bench kv ({}): {machine}", args.size.name());
    let floor = crate::floor::measure(&std::env::temp_dir())?;
    eprintln!("floor: {floor}");

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for (name, flavor) in &servers {
            if args.rounds > 1 {
                eprintln!("[{name}] round {round} of {}", args.rounds);
            }
            let version = machine::version_of(flavor.program());
            let outcomes = run_server(name, flavor.clone(), sizes, &args.workloads).await?;
            for outcome in outcomes.iter().filter(|o| o.errors > 0) {
                eprintln!(
                    "[{name}] {}: {} errors, first: {}",
                    outcome.workload,
                    outcome.errors,
                    outcome.first_error.as_deref().unwrap_or("?")
                );
            }
            runs.push(ServerRun {
                server: name,
                version,
                outcomes,
            });
        }
    }
    let report = Report {
        command,
        size: args.size,
        sizes,
        machine,
        floor,
        rounds: args.rounds,
        runs,
    };
    let written = report::write(&report, &args.out)?;
    println!("{}", report::markdown(&report));
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn run_server(
    name: &'static str,
    flavor: Flavor,
    sizes: Sizes,
    only: &[String],
) -> Result<Vec<Outcome>> {
    let progress = Progress::new(name);
    let mut outcomes = Vec::new();
    let wanted = |workload: &str| only.is_empty() || only.iter().any(|w| w == workload);

    progress.say("starting a 3-member cluster");
    let cluster = Cluster::start(flavor.clone(), Spec::default()).await?;
    let target = connect_target(&cluster, progress.clone()).await?;
    let leader = [target.leader.clone()];
    let follower = [target.follower.clone()];
    let one = Load {
        clients: 1,
        connections: 1,
        ops: sizes.put_one,
    };
    for (workload, via) in [
        ("put-1", Via::Members(&leader)),
        ("put-1-follower", Via::Members(&follower)),
        ("put-1-balanced", Via::Balanced(&target.endpoints)),
    ] {
        if wanted(workload) {
            outcomes.push(put(&target, workload, via, one).await?);
        }
    }
    let many = Load {
        clients: 256,
        connections: 16,
        ops: sizes.put_many,
    };
    if wanted("put-256")
        || wanted("get-linearizable")
        || wanted("get-serializable")
        || wanted("get-shared")
    {
        // The gets read the keys this workload writes.
        outcomes.push(put(&target, "put-256", Via::Members(&target.endpoints), many).await?);
    }
    let readers = |ops| Load {
        clients: 16,
        connections: 16,
        ops,
    };
    let populated = sizes.put_many;
    for (workload, serializable) in [("get-linearizable", false), ("get-serializable", true)] {
        if wanted(workload) {
            let load = readers(sizes.gets);
            outcomes.push(get(&target, workload, serializable, populated, load).await?);
        }
    }
    if wanted("get-shared") {
        // Clients we do not control share connections: 16 clients on one.
        let load = Load {
            clients: 16,
            connections: 1,
            ops: sizes.gets,
        };
        outcomes.push(get(&target, "get-shared", false, populated, load).await?);
    }
    if wanted("txn-cas") {
        outcomes.push(txn_cas(&target, readers(sizes.txns)).await?);
    }
    for workload in ["watch-fanout-1w", "watch-fanout"] {
        if wanted(workload) {
            outcomes.push(watch_fanout(&target, workload, sizes.watchers, sizes.watch_puts).await?);
        }
    }
    if wanted("watch-agents") {
        outcomes
            .push(watch_agents(&cluster, &target, sizes.agent_watchers, sizes.watch_puts).await?);
    }
    if wanted("watch-idle") {
        outcomes.push(watch_idle(&target, sizes.idle_watchers, sizes.idle_puts).await?);
    }
    if wanted("leases") {
        outcomes.extend(leases(&target, sizes.leases, sizes.keepalive_secs).await?);
    }
    drop(cluster);
    if !wanted("footprint") && !wanted("failover") {
        return Ok(outcomes);
    }

    progress.say("starting a fresh cluster for the footprint and failover workloads");
    let mut cluster = Cluster::start(flavor, Spec::default()).await?;
    let target = connect_target(&cluster, progress.clone()).await?;
    if wanted("footprint") {
        outcomes.extend(footprint(&mut cluster, &target, sizes.footprint_keys).await?);
    }
    if wanted("failover") {
        outcomes.push(failover(&mut cluster, &target, sizes.failover_puts).await?);
    }
    Ok(outcomes)
}

async fn connect_target(cluster: &Cluster, progress: Progress) -> Result<Target> {
    let leader = cluster.leader().await?;
    let pids = (0..cluster.len())
        .map(|i| cluster.pid(i).context("a member is not running"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Target {
        endpoints: cluster.client_urls(),
        leader: cluster.client_url(leader),
        follower: cluster.client_url((leader + 1) % cluster.len()),
        pids,
        leader_index: leader,
        progress,
    })
}
