//! `meshctl lab`: the whole mesh on one Linux box ([`lab::instance`]): clusters of API-server
//! members, nodes and pods built from network namespaces, processes and cgroups, connected
//! with `meshctl connect`, with faults to inject between them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use lab::binaries::Binaries;
use lab::faults::Degrade;
use lab::instance::{Lab, Refused, Target, UpOptions, base_dir};
use lab::spec::LabSpec;
use serde_json::Value;

use crate::Failure;
use crate::output::{Output, print, render};
use mesh_client::contexts::{ConfigFile, config_path};

/// Which lab.
#[derive(Debug, Args)]
pub struct LabName {
    /// The lab's name (labs live in $RAFTMESH_LAB_DIR, default /var/lib/raftmesh/labs).
    #[arg(long, env = "RAFTMESH_LAB", default_value = "lab", global = true)]
    name: String,
}

/// `meshctl lab` subcommands.
#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(flatten)]
    lab: LabName,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and start a lab: per cluster, API-server members and nodes in network
    /// namespaces, pods behind their nodes running an echo workload, each cluster's PKI,
    /// manifests and meshctl context; then connect the clusters and check that a global
    /// service answers from every cluster. Without --spec, the default lab: clusters `apps`
    /// (id 1) and `infra` (id 2), 3 members and 2 nodes each, global service demo/echo.
    Up(UpArgs),
    /// Stop and remove everything of the lab: processes, namespaces, interfaces, sockets,
    /// pins, cgroups, its contexts and its directory (also of a lab that crashed).
    Down,
    /// Show the lab: clusters, members, nodes, pods, services with their VIPs, manifests
    /// directories, contexts, faults, and each cluster's mesh status.
    Status(StatusArgs),
    /// Run a command in a pod's network namespace and cgroup (so socket load balancing
    /// applies to it), e.g. `meshctl lab exec apps/client -- mesh-echo probe --tcp
    /// 10.255.1.10:80 --count 10`.
    Exec(ExecArgs),
    /// Cut all traffic between two clusters at the fabric.
    Partition(PairArgs),
    /// Restore traffic between two clusters (ends a partition and a degradation).
    Heal(PairArgs),
    /// Add delay and loss between two clusters (zero for all removes them). Loss is per packet
    /// (nftables `numgen random`); delay is a userspace stage in the fabric (NFQUEUE, the
    /// kernel has no netem), exact to about a millisecond, applied in each direction.
    Degrade(DegradeArgs),
    /// Cut an API-server member (`apps/m1`) off from its cluster's other members; the host,
    /// agents and remote clusters still reach it (Raft loses it, clients do not).
    Isolate(TargetArgs),
    /// Let an isolated member reach its peers again.
    Rejoin(TargetArgs),
    /// Cut a node (`infra/node-2`) off the network at the fabric: every packet to or from
    /// its address and pod range is dropped, as if it had died; its processes run on and its
    /// cluster's records still call its pods ready (as Kubernetes' do until it notices).
    Unplug(TargetArgs),
    /// Put an unplugged node back on the network.
    Plug(TargetArgs),
    /// kill -9 a member (`apps/m1`), a node's agent (`apps/node-1`) or a pod's workload.
    Kill(TargetArgs),
    /// Start a member, agent or pod workload again (on its data).
    Start(TargetArgs),
    /// Stop a process with SIGSTOP (it keeps its sockets but answers nothing).
    Freeze(TargetArgs),
    /// Resume a frozen process (SIGCONT).
    Thaw(TargetArgs),
    /// Apply a changed spec: pods' labels and readiness, services and policies (the
    /// manifests are rewritten; the API servers publish the change).
    Apply(ApplyArgs),
}

/// Flags of `meshctl lab up`.
#[derive(Debug, Args)]
struct UpArgs {
    /// The lab's spec (YAML; the format is in the README and lab/examples/default.yaml).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Where node-agent, mesh-apiserver and mesh-echo are [default: meshctl's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Flags of `meshctl lab status`.
#[derive(Debug, Args)]
struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Flags of `meshctl lab exec`.
#[derive(Debug, Args)]
struct ExecArgs {
    /// The pod: `<cluster>/<pod>`.
    pod: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Two clusters.
#[derive(Debug, Args)]
struct PairArgs {
    /// One cluster.
    a: String,
    /// The other.
    b: String,
}

/// Flags of `meshctl lab degrade`.
#[derive(Debug, Args)]
struct DegradeArgs {
    /// One cluster.
    a: String,
    /// The other.
    b: String,
    /// Added one-way delay (e.g. 200ms).
    #[arg(long, default_value = "0ms")]
    delay: String,
    /// Each packet's delay is uniform in delay ± jitter (e.g. 50ms; at most the delay).
    #[arg(long, default_value = "0ms")]
    jitter: String,
    /// Packets dropped, in percent.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    loss: u8,
}

/// A process of the lab.
#[derive(Debug, Args)]
struct TargetArgs {
    /// `<cluster>/<member>` (m1 …), `<cluster>/<node>` (node-1 …: its agent) or
    /// `<cluster>/<pod>`.
    target: String,
}

/// Flags of `meshctl lab apply`.
#[derive(Debug, Args)]
struct ApplyArgs {
    /// The changed spec.
    #[arg(long)]
    spec: PathBuf,
}

/// A lab error: a refusal is bad input (64), anything else a failure (1).
fn fail(e: anyhow::Error) -> Failure {
    if e.downcast_ref::<Refused>().is_some() {
        Failure::BadInput(e)
    } else {
        Failure::Other(e)
    }
}

fn read_spec(path: &std::path::Path) -> Result<LabSpec, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(Failure::BadInput)?;
    LabSpec::parse(&text)
        .with_context(|| format!("{}", path.display()))
        .map_err(Failure::BadInput)
}

/// Runs `meshctl lab`.
pub fn run(args: LabArgs) -> Result<(), Failure> {
    let base = base_dir();
    let name = &args.lab.name;
    let find = || Lab::find(&base, name).map_err(fail);
    match args.command {
        Command::Up(a) => up(&base, name, a),
        Command::Down => {
            let lab = find()?;
            let started = Instant::now();
            let mut progress = progress_printer(started);
            lab.down(&mut progress).map_err(Failure::Other)?;
            println!("lab {name:?} is down: nothing of it is left");
            Ok(())
        }
        Command::Status(a) => {
            let lab = find()?;
            let status = lab.status();
            print(a.output, &status, || table(&status)).map_err(Failure::Other)
        }
        Command::Exec(a) => {
            let lab = find()?;
            let status = lab
                .exec(&a.pod, &a.command)
                .map_err(fail)?
                .status()
                .context("running the command")
                .map_err(Failure::Other)?;
            // Its exit code is ours, as with kubectl exec (128 + the signal if it was killed).
            let code = status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            });
            match u8::try_from(code) {
                Ok(0) => Ok(()),
                Ok(c) => Err(Failure::Exit(c)),
                Err(_) => Err(Failure::Exit(1)),
            }
        }
        Command::Partition(p) => {
            let mut lab = find()?;
            let changed = lab.partition(&p.a, &p.b).map_err(fail)?;
            println!(
                "{} {} and {}: no traffic crosses the fabric between them",
                if changed {
                    "partitioned"
                } else {
                    "already partitioned:"
                },
                p.a,
                p.b
            );
            Ok(())
        }
        Command::Heal(p) => {
            let mut lab = find()?;
            let changed = lab.heal(&p.a, &p.b).map_err(fail)?;
            println!(
                "{} {} and {}",
                if changed {
                    "healed"
                } else {
                    "nothing to heal between"
                },
                p.a,
                p.b
            );
            Ok(())
        }
        Command::Degrade(d) => {
            let ms = |flag: &str, v: &str| {
                mesh_api::duration::parse(v)
                    .ok()
                    .and_then(|d| u32::try_from(d.as_millis()).ok())
                    .ok_or_else(|| {
                        Failure::BadInput(anyhow::anyhow!(
                            "--{flag} {v:?}: a duration like 200ms or 1s"
                        ))
                    })
            };
            let (delay_ms, jitter_ms) = (ms("delay", &d.delay)?, ms("jitter", &d.jitter)?);
            if jitter_ms > delay_ms {
                return Err(Failure::BadInput(anyhow::anyhow!(
                    "--jitter {} is more than --delay {}",
                    d.jitter,
                    d.delay
                )));
            }
            let mut lab = find()?;
            lab.degrade(
                &d.a,
                &d.b,
                Degrade {
                    delay_ms,
                    jitter_ms,
                    loss_pct: d.loss,
                },
            )
            .map_err(fail)?;
            println!(
                "{} ↔ {}: {delay_ms} ms ± {jitter_ms} ms delay each way, {}% of packets dropped",
                d.a, d.b, d.loss
            );
            Ok(())
        }
        Command::Isolate(t) => {
            let mut lab = find()?;
            let target = lab.target(&t.target).map_err(fail)?;
            let changed = lab.isolate(&target).map_err(fail)?;
            println!(
                "{}: {} from its peers",
                target.label(),
                if changed {
                    "isolated"
                } else {
                    "already isolated"
                }
            );
            Ok(())
        }
        Command::Rejoin(t) => {
            let mut lab = find()?;
            let target = lab.target(&t.target).map_err(fail)?;
            let changed = lab.rejoin(&target).map_err(fail)?;
            println!(
                "{}: {}",
                target.label(),
                if changed {
                    "rejoined its peers"
                } else {
                    "was not isolated"
                }
            );
            Ok(())
        }
        Command::Unplug(t) => {
            let mut lab = find()?;
            let target = lab.target(&t.target).map_err(fail)?;
            let changed = lab.unplug(&target).map_err(fail)?;
            println!(
                "{}: {}",
                target.label(),
                if changed {
                    "unplugged (no packet reaches or leaves it)"
                } else {
                    "already unplugged"
                }
            );
            Ok(())
        }
        Command::Plug(t) => {
            let mut lab = find()?;
            let target = lab.target(&t.target).map_err(fail)?;
            let changed = lab.plug(&target).map_err(fail)?;
            println!(
                "{}: {}",
                target.label(),
                if changed {
                    "plugged back in"
                } else {
                    "was not unplugged"
                }
            );
            Ok(())
        }
        Command::Kill(t) => act(find()?, &t.target, "killed (SIGKILL)", |lab, t| lab.kill(t)),
        Command::Start(t) => act(find()?, &t.target, "started", |lab, t| lab.start(t)),
        Command::Freeze(t) => act(find()?, &t.target, "frozen (SIGSTOP)", |lab, t| {
            lab.freeze(t)
        }),
        Command::Thaw(t) => act(find()?, &t.target, "thawed (SIGCONT)", |lab, t| lab.thaw(t)),
        Command::Apply(a) => {
            let spec = read_spec(&a.spec)?;
            let mut lab = find()?;
            lab.apply(spec).map_err(fail)?;
            println!(
                "applied: manifests rewritten in {}",
                lab.dir.join("manifests").display()
            );
            Ok(())
        }
    }
}

fn act(
    lab: Lab,
    target: &str,
    done: &str,
    f: impl FnOnce(&Lab, &Target) -> anyhow::Result<()>,
) -> Result<(), Failure> {
    let t = lab.target(target).map_err(fail)?;
    f(&lab, &t).map_err(fail)?;
    println!("{}: {done}", t.label());
    Ok(())
}

/// Prints progress lines with the time since `started`.
fn progress_printer(started: Instant) -> impl FnMut(&str) {
    move |line: &str| println!("[{:5.1}s] {line}", started.elapsed().as_secs_f64())
}

fn up(base: &std::path::Path, name: &str, a: UpArgs) -> Result<(), Failure> {
    let spec = match &a.spec {
        Some(path) => read_spec(path)?,
        None => LabSpec::default_lab(),
    };
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("finding meshctl's directory")
            .map_err(Failure::Other)?
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
    };
    let bins = Binaries::find(&bin_dir).map_err(Failure::BadInput)?;
    // The contexts the lab will write must not be someone else's.
    let (config, file) = ConfigFile::load().map_err(Failure::BadInput)?;
    let lab_dir = base.join(name);
    for c in &spec.clusters {
        if let Some(e) = file.contexts.get(&c.name) {
            let ours = e.pki_dir.as_deref() == Some(lab_dir.join("pki").join(&c.name).as_path());
            if !ours {
                return Err(Failure::BadInput(anyhow::anyhow!(
                    "context {:?} already exists in {} and is not this lab's; remove it (meshctl config delete-context {}) or name the cluster differently in a --spec",
                    c.name,
                    config.display(),
                    c.name
                )));
            }
        }
    }
    let config = config_path().map_err(Failure::BadInput)?;
    let started = Instant::now();
    let mut progress = progress_printer(started);
    let lab = Lab::up(
        UpOptions {
            base: base.to_owned(),
            name: name.to_owned(),
            spec,
            bins,
            config,
        },
        &mut progress,
    )
    .map_err(|e| {
        if e.downcast_ref::<Refused>().is_some() {
            return Failure::BadInput(e);
        }
        Failure::Other(e.context(format!(
            "lab up failed; what was built stays, with its logs in {}/logs; `meshctl lab down --name {name}` removes it",
            lab_dir.display()
        )))
    })?;
    let first = &lab.state.spec.clusters[0].name;
    let probe = lab
        .state
        .spec
        .clusters
        .iter()
        .find(|c| c.pods.iter().any(|p| p.name == "client"))
        .and_then(|c| {
            let (i, s) = c.services.iter().enumerate().find(|(_, s)| s.global)?;
            Some(format!(
                "; `meshctl lab exec {}/client -- mesh-echo probe --tcp {}:{} --count 10`",
                c.name,
                lab::plan::Plan::vip(c, i),
                s.ports[0].port
            ))
        })
        .unwrap_or_default();
    println!(
        "lab {name:?} is up in {:.1}s. Try `meshctl status --context {first}`{probe}; `meshctl lab status`; `meshctl lab down` removes it.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The status as text.
fn table(s: &Value) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "lab {} (slot {}), files in {}; host link {} {} → {}\n",
        str_of(&s["name"]),
        s["slot"],
        str_of(&s["dir"]),
        str_of(&s["hostLink"]["interface"]),
        str_of(&s["hostLink"]["hostIP"]),
        str_of(&s["hostLink"]["routes"]),
    );
    let faults = &s["faults"];
    for p in faults["partitions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "fault: {} and {} partitioned\n",
            str_of(&p[0]),
            str_of(&p[1])
        ));
    }
    for (pair, d) in faults["degraded"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "fault: {} degraded: {} ms ± {} ms delay, {}% loss\n",
            pair.replace('|', " ↔ "),
            d["delay_ms"],
            d["jitter_ms"],
            d["loss_pct"]
        ));
    }
    for m in faults["isolated"].as_array().into_iter().flatten() {
        out.push_str(&format!("fault: {} isolated from its peers\n", str_of(m)));
    }
    for n in faults["unplugged"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "fault: {} unplugged from the network\n",
            str_of(n)
        ));
    }
    for c in s["clusters"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\ncluster {} (id {}), context {}, manifests {}\n",
            str_of(&c["name"]),
            c["id"],
            str_of(&c["context"]),
            str_of(&c["manifests"])
        ));
        let mut rows = vec![vec![
            "KIND".to_owned(),
            "NAME".to_owned(),
            "ADDRESS".to_owned(),
            "STATE".to_owned(),
            "DETAIL".to_owned(),
        ]];
        for m in c["members"].as_array().into_iter().flatten() {
            rows.push(vec![
                "member".into(),
                str_of(&m["name"]),
                format!("{} / {}", str_of(&m["ip"]), str_of(&m["hostIP"])),
                str_of(&m["process"]["state"]),
                format!("pid {}", m["process"]["pid"]),
            ]);
        }
        for n in c["nodes"].as_array().into_iter().flatten() {
            rows.push(vec![
                "node".into(),
                str_of(&n["name"]),
                n["ip"].as_str().unwrap_or("-").to_owned(),
                str_of(&n["agent"]["state"]),
                format!(
                    "pods {}, {} {}",
                    str_of(&n["podCIDR"]),
                    str_of(&n["wireguard"]),
                    match n["wgPeers"].as_u64() {
                        Some(p) => format!("with {p} peers"),
                        None => "not up".to_owned(),
                    }
                ),
            ]);
        }
        for p in c["pods"].as_array().into_iter().flatten() {
            let labels: Vec<String> = p["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            rows.push(vec![
                "pod".into(),
                format!("{}/{}", str_of(&p["namespace"]), str_of(&p["name"])),
                str_of(&p["ip"]),
                str_of(&p["process"]["state"]),
                format!(
                    "on {}{}, {}",
                    str_of(&p["node"]),
                    if p["ready"] == true {
                        ""
                    } else {
                        ", not ready"
                    },
                    labels.join(",")
                ),
            ]);
        }
        for v in c["services"].as_array().into_iter().flatten() {
            let ports: Vec<String> = v["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(str_of)
                .collect();
            rows.push(vec![
                "service".into(),
                str_of(&v["name"]),
                str_of(&v["vip"]),
                if v["global"] == true {
                    "global".into()
                } else {
                    "local".into()
                },
                format!("{}, affinity {}", ports.join(","), str_of(&v["affinity"])),
            ]);
        }
        for r in c["mesh"]["remotes"].as_array().into_iter().flatten() {
            rows.push(vec![
                "remote".into(),
                str_of(&r["cluster"]),
                "-".into(),
                if r["connected"] == true {
                    "connected".into()
                } else {
                    "disconnected".into()
                },
                match r["freshnessAgeSeconds"].as_f64() {
                    Some(age) => format!("freshness age {age:.1}s"),
                    None => "never current".to_owned(),
                },
            ]);
        }
        if let Some(e) = c["mesh"]["error"].as_str() {
            rows.push(vec![
                "mesh".into(),
                "-".into(),
                "-".into(),
                "unreachable".into(),
                e.to_owned(),
            ]);
        }
        out.push_str(&render(&rows));
    }
    out
}
