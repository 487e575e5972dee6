//! `mesh-bench churn`: in the lab, the memory of apps' API-server members while, for
//! `--minutes` each,
//!
//! 1. `remote`: infra rewrites one 48 KiB record at the rate apps takes from one remote at
//!    most (`--remote-write-mib-per-minute`, 32 MiB a minute by default): every rewrite a new
//!    version in every apps member, mirrored;
//! 2. `agent`: a stolen agent certificate of apps (issued for a node that does not exist)
//!    rewrites its node key as fast and as large as the store lets one identity (10 writes a
//!    second, 1 KiB values), straight into apps' store.
//!
//! Each phase runs on a lab of its own (members start from the same memory), `--runs` times.
//! apps' members run with `--quota-backend-bytes` at `--quota-mib`, so the bound that holds is
//! the store's: past half the quota the history is compacted to the last two seconds. The
//! report gives each member's RSS at the start and its peak, the store's size
//! (`raftmesh_mvcc_bytes`) at its peak, and that bound.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use etcd_client::Client;
use lab::binaries::Binaries;
use lab::instance::{Lab, Target, UpOptions};
use lab::plan;
use lab::spec::LabSpec;
use mesh_api::records::IdentityRecord;
use mesh_api::{Key, Record, SCHEMA};
use mesh_client::pki::PkiDir;
use mesh_client::{Credentials, Settings};
use serde_json::{Value, json};

use crate::machine::Machine;

/// `mesh-bench churn` flags.
#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// How long each phase rewrites.
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// Runs of each phase, each on a new lab.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// apps' members' --quota-backend-bytes, in MiB.
    #[arg(long, default_value_t = 256)]
    pub quota_mib: u64,
    /// Where to write churn.md and churn.json.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// The remote's record size (under the 64 KiB an identity may have).
const VALUE: usize = 48 << 10;
/// What apps takes from one remote per minute at most (the default).
const REMOTE_MIB_PER_MINUTE: f64 = 32.0;
/// What one agent identity may write (the defaults).
const AGENT_WRITES_PER_SECOND: f64 = 10.0;
const AGENT_VALUE: usize = 1000;
/// Where members serve their metrics (the lab's port).
const METRICS_PORT: u16 = lab::instance::APISERVER_METRICS_PORT;
/// Between samples.
const SAMPLE: Duration = Duration::from_secs(5);

/// Runs the benchmark.
pub async fn run(args: ChurnArgs, command: String) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("mesh-bench churn needs root (the lab: network namespaces, cgroups)");
    }
    if args.runs == 0 || args.minutes <= 0.0 {
        bail!("--runs and --minutes must be more than 0");
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("mesh-bench's directory")?.to_owned();
    let bins = Binaries::find(&dir)?;
    let machine = Machine::read([("mesh-apiserver", bins.apiserver.as_path())]);
    let mut results = Vec::new();
    for phase in ["remote", "agent"] {
        for run in 1..=args.runs {
            eprintln!("{phase} run {run}/{}…", args.runs);
            let work = tempfile::tempdir()?;
            let opts = UpOptions {
                base: work.path().join("labs"),
                name: format!("churn-{phase}-{run}"),
                spec: spec(args.quota_mib),
                bins: bins.clone(),
                config: work.path().join("config"),
            };
            let base = opts.base.clone();
            let name = opts.name.clone();
            let up = tokio::task::spawn_blocking(move || Lab::up(opts, &mut |_: &str| {})).await?;
            let lab = match up {
                Ok(lab) => lab,
                Err(e) => {
                    if let Ok(Some(half)) = Lab::open(&base, &name) {
                        let _ = half.down(&mut |_: &str| {});
                    }
                    return Err(e.context("lab up"));
                }
            };
            let measured = phase_run(&lab, phase, &args).await;
            let _ = tokio::task::spawn_blocking(move || lab.down(&mut |_: &str| {})).await;
            let mut m = measured?;
            m["phase"] = json!(phase);
            m["run"] = json!(run);
            eprintln!("  {m}");
            results.push(m);
        }
    }
    write(&args, &machine, &command, &results)
}

fn spec(quota_mib: u64) -> LabSpec {
    let mut spec = LabSpec::default_lab();
    spec.apiserver_args = vec![
        "--quota-backend-bytes".to_owned(),
        (quota_mib << 20).to_string(),
    ];
    spec
}

/// A client of `endpoint` as `<cert>.crt|key` (e.g. `admin-admin`) of the PKI in `pki`.
async fn client(endpoint: &str, pki: &Path, cert: &str) -> Result<Client> {
    let pki = PkiDir::new(pki);
    let credentials = Credentials::new(
        pki.ca_cert(),
        pki.dir().join(format!("{cert}.crt")),
        pki.dir().join(format!("{cert}.key")),
    );
    let settings = Settings::timeouts(Duration::from_secs(2), Some(Duration::from_secs(5)));
    Ok(mesh_client::member(endpoint, Some(&credentials), &settings).await?)
}

/// apps' members: (target, host address).
fn apps_members(lab: &Lab) -> Result<Vec<(Target, std::net::Ipv4Addr)>> {
    let (index, apps) = plan::indexed(&lab.state.spec)
        .find(|(_, c)| c.name == "apps")
        .context("apps")?;
    lab.plan
        .members(index, apps)
        .into_iter()
        .map(|m| Ok((lab.target(&format!("apps/{}", m.name))?, m.host_ip)))
        .collect()
}

fn endpoint(lab: &Lab, cluster: &str) -> Result<String> {
    let (index, c) = plan::indexed(&lab.state.spec)
        .find(|(_, c)| c.name == cluster)
        .context("cluster")?;
    let m = lab
        .plan
        .members(index, c)
        .into_iter()
        .next()
        .context("a member")?;
    Ok(format!("https://{}:2379", m.host_ip))
}

fn rss_mib(lab: &Lab, t: &Target) -> Option<f64> {
    let pid = *lab.pids(t).first()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

async fn mvcc_mib(host: std::net::Ipv4Addr) -> Option<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = format!("{host}:{METRICS_PORT}");
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
    tcp.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.ok()?;
    let bytes: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("raftmesh_mvcc_bytes "))?
        .trim()
        .parse()
        .ok()?;
    Some(bytes / 1_048_576.0)
}

/// One phase on `lab`: the writer for `--minutes`, sampling apps' members.
async fn phase_run(lab: &Lab, phase: &str, args: &ChurnArgs) -> Result<Value> {
    let members = apps_members(lab)?;
    // The baseline, once the lab has settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start: BTreeMap<String, f64> = members
        .iter()
        .filter_map(|(t, _)| Some((t.label(), rss_mib(lab, t)?)))
        .collect();
    let (mut writer, key, value, interval, cert) = match phase {
        "remote" => {
            let key = Key::Identity {
                cluster: "infra".to_owned(),
                id: 2 << 16 | 301,
            }
            .to_string();
            let interval = Duration::from_secs_f64(
                VALUE as f64 / (REMOTE_MIB_PER_MINUTE * 1_048_576.0 / 60.0),
            );
            let c = client(
                &endpoint(lab, "infra")?,
                &lab.pki_dir("infra"),
                "admin-admin",
            )
            .await?;
            (c, key, VALUE, interval, "infra admin")
        }
        _ => {
            let pki = lab.pki_dir("apps");
            lab.meshctl(&[
                "pki",
                "issue",
                "--dir",
                &pki.to_string_lossy(),
                "--role",
                "agent",
                "--name",
                "stolen",
                "--force",
            ])?;
            let c = client(&endpoint(lab, "apps")?, &pki, "agent-stolen").await?;
            let key = "mesh/v1/apps/nodekeys/stolen".to_owned();
            let interval = Duration::from_secs_f64(1.0 / AGENT_WRITES_PER_SECOND);
            (c, key, AGENT_VALUE, interval, "an agent certificate")
        }
    };
    let began = Instant::now();
    let until = began + Duration::from_secs_f64(args.minutes * 60.0);
    let mut next_sample = began;
    let mut peak: BTreeMap<String, f64> = start.clone();
    let mut peak_store: f64 = 0.0;
    let (mut written, mut refused) = (0u64, 0u64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let v = if phase == "remote" {
            Record::Identity(IdentityRecord {
                schema: SCHEMA,
                labels: vec![format!("churn={written}-{}", "x".repeat(value))],
            })
            .encode()
        } else {
            vec![b'k'; value]
        };
        match writer.put(key.as_str(), v, None).await {
            Ok(_) => written += 1,
            Err(_) => refused += 1,
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE;
            for (t, host) in &members {
                if let Some(r) = rss_mib(lab, t) {
                    let p = peak.entry(t.label()).or_insert(r);
                    *p = p.max(r);
                }
                if let Some(s) = mvcc_mib(*host).await {
                    peak_store = peak_store.max(s);
                }
            }
        }
    }
    let status = lab.mesh_status("apps").ok();
    let paused = status
        .as_ref()
        .and_then(|s| s["remotes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|r| r["overBudget"] == true);
    let rss: Vec<Value> = start
        .iter()
        .map(|(m, s)| {
            json!({"member": m, "start_mib": s, "peak_mib": peak.get(m), "growth_mib": peak.get(m).map(|p| p - s)})
        })
        .collect();
    Ok(json!({
        "writer": cert,
        "seconds": began.elapsed().as_secs_f64(),
        "written": written,
        "refused": refused,
        "written_mib": written as f64 * value as f64 / 1_048_576.0,
        "store_peak_mib": peak_store,
        "quota_mib": args.quota_mib,
        "remote_paused_at_end": paused,
        "members": rss,
    }))
}

fn write(args: &ChurnArgs, machine: &Machine, command: &str, results: &[Value]) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let range = |phase: &str, f: &dyn Fn(&Value) -> Vec<f64>| -> String {
        let v: Vec<f64> = results
            .iter()
            .filter(|r| r["phase"] == phase)
            .flat_map(f)
            .collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{lo:.1}–{hi:.1}")
        }
    };
    let members = |key: &'static str| {
        move |r: &Value| -> Vec<f64> {
            r["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m[key].as_f64())
                .collect()
        }
    };
    let one =
        |key: &'static str| move |r: &Value| -> Vec<f64> { r[key].as_f64().into_iter().collect() };
    let mut md = format!(
        "# mesh-bench churn\n\nCommand: `{command}`\n\n{machine}\n\n\
         apps' three members, each phase {minutes} min, {runs} runs on a new lab each (ranges over \
         runs and members). `remote`: infra rewrites one 48 KiB record at 32 MiB a minute, the \
         most apps takes from one remote (`--remote-write-mib-per-minute`), mirrored into every \
         apps member. `agent`: an agent certificate rewrites its node key at 10 writes a second \
         with 1,000-byte values, the most one identity may (`--max-writes-per-second-per-identity`, \
         `--max-value-bytes-per-identity`). apps' members run with `--quota-backend-bytes` \
         {quota} MiB.\n\n\
         **The bound**: the store (`raftmesh_mvcc_bytes`) holds the live data and the history; \
         past half the quota ({half} MiB) the history is compacted to the last two seconds \
         (checked every second), so the store stays under {half} MiB plus a few seconds of \
         writes, and a member's RSS under its start plus that and the allocator's slack.\n\n\
         | phase | written (MiB) | store peak (MiB) | member RSS at start (MiB) | member RSS peak (MiB) | growth (MiB) |\n\
         |---|---:|---:|---:|---:|---:|\n",
        minutes = args.minutes,
        runs = args.runs,
        quota = args.quota_mib,
        half = args.quota_mib / 2,
    );
    for phase in ["remote", "agent"] {
        md.push_str(&format!(
            "| {phase} | {} | {} | {} | {} | {} |\n",
            range(phase, &one("written_mib")),
            range(phase, &one("store_peak_mib")),
            range(phase, &members("start_mib")),
            range(phase, &members("peak_mib")),
            range(phase, &members("growth_mib")),
        ));
    }
    std::fs::write(args.out.join("churn.md"), md)?;
    std::fs::write(
        args.out.join("churn.json"),
        serde_json::to_string_pretty(
            &json!({"command": command, "machine": format!("{machine}"), "results": results}),
        )?,
    )?;
    eprintln!("wrote {}", args.out.join("churn.md").display());
    Ok(())
}
