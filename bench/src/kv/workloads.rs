//! The workloads, each written once against the etcd v3 API and run unchanged against both
//! servers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use serde::Serialize;
use testkit::localcluster::Cluster;
use tokio::task::JoinSet;

use super::load::{self, Load, Measured};
use crate::procfs::{MS_PER_TICK, cpu_ticks};
use crate::progress::Progress;
use crate::stats::{Percentiles, Samples};

/// Value size of every put, as the workloads ask (256 B).
pub const VALUE_BYTES: usize = 256;
/// Distinct keys the put workloads cycle through.
pub const KEYSPACE: usize = 100_000;
/// TTL of benchmark leases; far longer than any workload, so none expires while measured.
const LEASE_TTL_SECS: i64 = 600;
/// A watcher that sees no event for this long is given up on; its missing events are errors.
const WATCH_STALL: Duration = Duration::from_secs(30);

/// How much work each workload does.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    pub put_one: usize,
    pub put_many: usize,
    pub gets: usize,
    pub txns: usize,
    pub watchers: usize,
    pub watch_puts: usize,
    /// Streams of the agents' fan-out (one per connection, on one member).
    pub agent_watchers: usize,
    pub leases: usize,
    pub keepalive_secs: u64,
    pub footprint_keys: usize,
    pub idle_watchers: usize,
    pub idle_puts: usize,
    pub failover_puts: usize,
}

impl Sizes {
    /// The sizes the issue asks for; the committed results use these.
    pub fn full() -> Sizes {
        Sizes {
            put_one: 5_000,
            put_many: 100_000,
            gets: 100_000,
            txns: 20_000,
            watchers: 100,
            watch_puts: 2_000,
            agent_watchers: 1_000,
            leases: 1_000,
            keepalive_secs: 10,
            footprint_keys: 100_000,
            idle_watchers: 1_000,
            idle_puts: 2_000,
            failover_puts: 200,
        }
    }

    /// Every workload, at a size that runs in seconds (CI's smoke run).
    pub fn smoke() -> Sizes {
        Sizes {
            put_one: 100,
            put_many: 1_000,
            gets: 1_000,
            txns: 200,
            watchers: 20,
            watch_puts: 100,
            agent_watchers: 50,
            leases: 50,
            keepalive_secs: 1,
            footprint_keys: 1_000,
            idle_watchers: 50,
            idle_puts: 100,
            failover_puts: 20,
        }
    }
}

/// One workload's result on one server. `value` is the row's headline figure in the row's unit
/// (ops/s, events/s, MiB or seconds; see [`crate::report::ROWS`]).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub workload: &'static str,
    pub value: f64,
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub latency: Option<Percentiles>,
    /// Per-member detail where one figure summarizes several (RSS, disk).
    pub detail: Option<String>,
}

impl Outcome {
    fn throughput(workload: &'static str, measured: Measured) -> Outcome {
        Outcome {
            workload,
            value: measured.ops_per_sec(),
            ops: measured.ops,
            errors: measured.errors,
            first_error: measured.first_error,
            seconds: measured.elapsed.as_secs_f64(),
            latency: measured.samples.summary(),
            detail: None,
        }
    }

    fn figure(workload: &'static str, value: f64, detail: String) -> Outcome {
        Outcome {
            workload,
            value,
            ops: 0,
            errors: 0,
            first_error: None,
            seconds: 0.0,
            latency: None,
            detail: Some(detail),
        }
    }
}

/// The cluster under test, as the workloads reach it.
#[derive(Debug)]
pub struct Target {
    /// Every member's client URL; multi-connection workloads spread over them.
    pub endpoints: Vec<String>,
    /// The leader's client URL; the single-client put talks to it alone.
    pub leader: String,
    /// A follower's client URL.
    pub follower: String,
    /// The members' process ids, in the order of `endpoints`.
    pub pids: Vec<u32>,
    /// Which of them led when the workloads started.
    pub leader_index: usize,
    pub progress: Progress,
}

impl Target {
    /// Every member's CPU time so far (user + system, all threads), in clock ticks.
    fn cpu_ticks(&self) -> Result<Vec<u64>> {
        self.pids
            .iter()
            .map(|pid| {
                let stat = PathBuf::from(format!("/proc/{pid}/stat"));
                cpu_ticks(&stat).with_context(|| format!("reading {}", stat.display()))
            })
            .collect()
    }

    /// The servers' CPU time per operation between `before` and now, the leader's first:
    /// what a write costs on the machine, beside how long it takes.
    fn cpu_per_op(&self, before: &[u64], ops: u64) -> Result<String> {
        let after = self.cpu_ticks()?;
        let ms =
            |i: usize| after[i].saturating_sub(before[i]) as f64 * MS_PER_TICK / ops.max(1) as f64;
        let followers: Vec<String> = (0..self.pids.len())
            .filter(|&i| i != self.leader_index)
            .map(|i| format!("{:.2}", ms(i)))
            .collect();
        let total: f64 = (0..self.pids.len()).map(ms).sum();
        Ok(format!(
            "servers' CPU {total:.2} ms per operation (leader {:.2}, followers {})",
            ms(self.leader_index),
            followers.join(" and ")
        ))
    }
}

/// Where a workload's connections go.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// Connection j to `members[j % members.len()]`.
    Members(&'a [String]),
    /// One connection whose requests go to every member in turn (etcdctl's, clientv3's way).
    Balanced(&'a [String]),
}

pub fn key(n: usize) -> String {
    format!("k{:07}", n % KEYSPACE)
}

fn value() -> Vec<u8> {
    vec![b'v'; VALUE_BYTES]
}

/// Puts with `clients` clients over `connections` connections, made as `via` says.
pub async fn put(
    target: &Target,
    workload: &'static str,
    via: Via<'_>,
    load: Load,
) -> Result<Outcome> {
    let progress = target.progress.workload(workload);
    let value = Arc::new(value());
    let connections = match via {
        Via::Members(endpoints) => load::connect(endpoints, load.connections).await?,
        Via::Balanced(endpoints) => vec![load::connect_balanced(endpoints).await?],
    };
    let cpu_before = target.cpu_ticks()?;
    let measured = load::run_on(connections, load, &progress, move |mut client, _, n| {
        let value = value.clone();
        async move {
            client.put(key(n), value.as_slice(), None).await?;
            Ok(())
        }
    })
    .await?;
    let cpu = target.cpu_per_op(&cpu_before, measured.ops)?;
    let mut outcome = Outcome::throughput(workload, measured);
    outcome.detail = Some(cpu);
    Ok(outcome)
}

/// Single-key gets of keys the put workloads wrote, linearizable or serializable.
pub async fn get(
    target: &Target,
    workload: &'static str,
    serializable: bool,
    populated: usize,
    load: Load,
) -> Result<Outcome> {
    let progress = target.progress.workload(workload);
    let populated = populated.clamp(1, KEYSPACE);
    let measured = load::run(
        &target.endpoints,
        load,
        &progress,
        move |mut client, _, n| {
            let options = serializable.then(|| GetOptions::new().with_serializable());
            async move {
                let reply = client.get(key(n % populated), options).await?;
                ensure!(reply.kvs().len() == 1, "key {} missing", key(n % populated));
                Ok(())
            }
        },
    )
    .await?;
    Ok(Outcome::throughput(workload, measured))
}

/// Compare-and-swap transactions: each client owns one key and replaces it only if its
/// mod_revision is the one the client last wrote; a failed compare is an error.
pub async fn txn_cas(target: &Target, load: Load) -> Result<Outcome> {
    let workload = "txn-cas";
    let progress = target.progress.workload(workload);
    let mut setup = load::connect(&target.endpoints, 1).await?.remove(0);
    let revisions: Arc<Vec<AtomicI64>> = Arc::new((0..load.clients).map(|_| 0.into()).collect());
    for (i, revision) in revisions.iter().enumerate() {
        let reply = setup.put(cas_key(i), value(), None).await?;
        let header = reply.header().context("put reply without a header")?;
        revision.store(header.revision(), Ordering::Relaxed);
    }
    let value = Arc::new(value());
    let measured = load::run(
        &target.endpoints,
        load,
        &progress,
        move |mut client, i, _| {
            let (revisions, value) = (revisions.clone(), value.clone());
            async move {
                let expected = revisions[i].load(Ordering::Relaxed);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        cas_key(i),
                        CompareOp::Equal,
                        expected,
                    )])
                    .and_then([TxnOp::put(cas_key(i), value.as_slice(), None)])
                    .or_else([TxnOp::get(cas_key(i), None)]);
                let reply = client.txn(txn).await?;
                ensure!(reply.succeeded(), "CAS on {} failed", cas_key(i));
                let header = reply.header().context("txn reply without a header")?;
                revisions[i].store(header.revision(), Ordering::Relaxed);
                Ok(())
            }
        },
    )
    .await?;
    Ok(Outcome::throughput(workload, measured))
}

fn cas_key(client: usize) -> String {
    format!("c{client:07}")
}

/// Watch fan-out: `watchers` watchers on one prefix (each its own stream, over 10 connections)
/// while 16 clients put `puts` keys under it through every member (`watch-fanout`), or one
/// client puts them one after another to the leader (`watch-fanout-1w`: a sequential writer,
/// as the publisher and the mirror are). Each value starts with the time it was sent, so every
/// delivered event gives a delivery latency; the rate is events delivered per second from the
/// first put to the last delivery.
pub async fn watch_fanout(
    target: &Target,
    workload: &'static str,
    watchers: usize,
    puts: usize,
) -> Result<Outcome> {
    let leader = [target.leader.clone()];
    let (writers, write_endpoints): (usize, &[String]) = match workload {
        "watch-fanout-1w" => (1, &leader),
        _ => (16, &target.endpoints),
    };
    let spread = FanOut {
        workload,
        watch_endpoints: &target.endpoints,
        connections: watchers.min(10),
        prefix: "w/",
        writers,
        write_endpoints,
    };
    fan_out(target, spread, watchers, puts, || Ok(())).await
}

/// Watch fan-out as the agents watch: `watchers` streams on one member (a follower), each on
/// its own connection, each a prefix watch of `mesh/v1/`, while 16 clients put `puts` keys under
/// it through every member. The detail gives the member's RSS growth per open stream.
pub async fn watch_agents(
    cluster: &Cluster,
    target: &Target,
    watchers: usize,
    puts: usize,
) -> Result<Outcome> {
    let member = (cluster.leader().await? + 1) % cluster.len();
    let pid = cluster.pid(member).context("member not running")?;
    let url = [cluster.client_url(member)];
    let before = rss_bytes(pid)?;
    let grown = Arc::new(Mutex::new(0u64));
    let measure = {
        let grown = grown.clone();
        move || {
            *grown.lock().expect("not poisoned") = rss_bytes(pid)?.saturating_sub(before);
            Ok(())
        }
    };
    let agents = FanOut {
        workload: "watch-agents",
        watch_endpoints: &url,
        connections: watchers,
        prefix: "mesh/v1/",
        writers: 16,
        write_endpoints: &target.endpoints,
    };
    let mut outcome = fan_out(target, agents, watchers, puts, measure).await?;
    let grown = *grown.lock().expect("not poisoned");
    let writers = outcome.detail.take().unwrap_or_default();
    outcome.detail = Some(format!(
        "member RSS {:.1} MiB with no stream, +{:.1} MiB with {watchers} open: {:.1} KiB per stream; {writers}",
        before as f64 / MIB,
        grown as f64 / MIB,
        grown as f64 / 1024.0 / watchers.max(1) as f64
    ));
    Ok(outcome)
}

/// Where a fan-out's watchers watch.
struct FanOut<'a> {
    workload: &'static str,
    /// The members the watchers' connections go to (in turn).
    watch_endpoints: &'a [String],
    /// Connections the watchers' streams share (as many as watchers: one stream each).
    connections: usize,
    /// The prefix watched and written under.
    prefix: &'static str,
    /// Clients putting, each one put at a time.
    writers: usize,
    /// The members the writers' connections go to (in turn).
    write_endpoints: &'a [String],
}

/// `watchers` streams as `spread` says, `opened` called once they all are, then `puts` puts
/// by the spread's writers; every delivered event is timed by the send time its value carries.
async fn fan_out(
    target: &Target,
    spread: FanOut<'_>,
    watchers: usize,
    puts: usize,
    opened: impl FnOnce() -> Result<()>,
) -> Result<Outcome> {
    let workload = spread.workload;
    let prefix = spread.prefix;
    let progress = target.progress.workload(workload);
    let base = Instant::now();
    let connections = load::connect(spread.watch_endpoints, spread.connections.max(1)).await?;
    let mut tasks = JoinSet::new();
    for w in 0..watchers {
        let mut client = connections[w % connections.len()].clone();
        let mut stream = client
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .with_context(|| format!("creating watcher {w}"))?;
        let created = stream.message().await?.context("watch stream ended")?;
        ensure!(created.created(), "first watch reply is not `created`");
        tasks.spawn(async move {
            let mut samples = Samples::with_capacity(puts);
            let mut last = base.elapsed();
            while samples.len() < puts {
                let reply = match tokio::time::timeout(WATCH_STALL, stream.message()).await {
                    Ok(Ok(Some(reply))) => reply,
                    Ok(Ok(None)) => return Err(anyhow!("watch stream ended")),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break,
                };
                let now = base.elapsed();
                for event in reply.events() {
                    let kv = event.kv().context("event without a kv")?;
                    let sent = u64::from_le_bytes(kv.value()[..8].try_into()?);
                    samples.record(now.saturating_sub(Duration::from_nanos(sent)));
                }
                last = now;
            }
            Ok::<_, anyhow::Error>((samples, last))
        });
    }
    opened()?;
    let writes_started = base.elapsed();
    let load = Load {
        clients: spread.writers,
        connections: spread.writers.min(4),
        ops: puts,
    };
    let writes = load::run(
        spread.write_endpoints,
        load,
        &progress,
        move |mut client, _, n| async move {
            let mut value = vec![b'v'; VALUE_BYTES];
            let sent = u64::try_from(base.elapsed().as_nanos())?;
            value[..8].copy_from_slice(&sent.to_le_bytes());
            client.put(format!("{prefix}{n:07}"), value, None).await?;
            Ok(())
        },
    )
    .await?;
    ensure!(
        writes.errors == 0,
        "{} puts failed: {:?}",
        writes.errors,
        writes.first_error
    );
    let mut samples = Samples::with_capacity(watchers * puts);
    let mut finished = writes_started;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((got, last)) => {
                samples.merge(got);
                finished = finished.max(last);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let expected = (watchers * puts) as u64;
    let delivered = samples.len() as u64;
    let elapsed = finished - writes_started;
    progress.say(format_args!(
        "{delivered}/{expected} events in {:.2}s",
        elapsed.as_secs_f64()
    ));
    Ok(Outcome {
        workload,
        value: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        ops: delivered,
        errors: expected.saturating_sub(delivered),
        first_error: first_error
            .or_else(|| (delivered < expected).then(|| format!("no event for {WATCH_STALL:?}"))),
        seconds: elapsed.as_secs_f64(),
        latency: samples.summary(),
        // What bounds the rate when delivery keeps up: events cannot arrive faster than
        // the puts that make them.
        detail: Some(format!(
            "the puts took {:.2} s ({:.0} puts/s): at most {:.0}k events/s while delivery keeps up",
            writes.elapsed.as_secs_f64(),
            writes.ops_per_sec(),
            writes.ops_per_sec() * watchers as f64 / 1000.0
        )),
    })
}

/// Idle watchers: `watchers` watchers (each its own stream, over 10 connections) on keys
/// nobody writes, then one client putting `puts` other keys sequentially to the leader: what
/// idle watchers cost each write (compare put-1).
pub async fn watch_idle(target: &Target, watchers: usize, puts: usize) -> Result<Outcome> {
    let workload = "watch-idle";
    let progress = target.progress.workload(workload);
    let connections = load::connect(&target.endpoints, watchers.min(10)).await?;
    let mut streams = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let mut client = connections[w % connections.len()].clone();
        let mut stream = client
            .watch(format!("idle/{w:05}"), None)
            .await
            .with_context(|| format!("creating watcher {w}"))?;
        let created = stream.message().await?.context("watch stream ended")?;
        ensure!(created.created(), "first watch reply is not `created`");
        streams.push(stream);
    }
    let load = Load {
        clients: 1,
        connections: 1,
        ops: puts,
    };
    // To the leader, as put-1, so the two rows differ only by the watchers.
    let leader = [target.leader.clone()];
    let value = Arc::new(value());
    let measured = load::run(&leader, load, &progress, move |mut client, _, n| {
        let value = value.clone();
        async move {
            client.put(key(n), value.as_slice(), None).await?;
            Ok(())
        }
    })
    .await?;
    drop(streams);
    Ok(Outcome::throughput(workload, measured))
}

/// Failover: a client writing sequentially through a follower while the leader is killed
/// (SIGKILL) after `puts` writes. The figure is the time from the kill to the first write
/// acknowledged after it; writes that fail meanwhile are counted as errors.
pub async fn failover(cluster: &mut Cluster, target: &Target, puts: usize) -> Result<Outcome> {
    let workload = "failover";
    let progress = target.progress.workload(workload);
    let leader = cluster.leader().await?;
    let follower = (leader + 1) % cluster.len();
    let mut client = load::connect(&[cluster.client_url(follower)], 1)
        .await?
        .remove(0);
    let value = value();
    for n in 0..puts {
        client
            .put(format!("f{n:07}"), value.as_slice(), None)
            .await?;
    }
    progress.say(format_args!(
        "killing the leader, member {}",
        cluster.member_config(leader).name
    ));
    cluster.kill(leader);
    let killed = Instant::now();
    let mut errors = 0;
    let mut first_error = None;
    for n in puts.. {
        match client.put(format!("f{n:07}"), value.as_slice(), None).await {
            Ok(_) => break,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(120),
            "no write succeeded within 120 s of the kill"
        );
    }
    let gap = killed.elapsed();
    progress.say(format_args!(
        "first write acknowledged {:.2} s after the kill ({errors} failed meanwhile)",
        gap.as_secs_f64()
    ));
    cluster.restart(leader).await?;
    Ok(Outcome {
        workload,
        value: gap.as_secs_f64(),
        ops: 1,
        errors,
        first_error,
        seconds: gap.as_secs_f64(),
        latency: None,
        detail: Some(format!(
            "{errors} writes failed between the kill and the first acknowledged one"
        )),
    })
}

/// Grants `leases` leases with 16 clients, then keeps every one alive for `seconds`: one
/// keep-alive stream per lease (over 16 connections), each sending its next keep-alive as soon
/// as the previous one is answered. Returns the grant and the keep-alive outcomes.
pub async fn leases(target: &Target, leases: usize, seconds: u64) -> Result<[Outcome; 2]> {
    let progress = target.progress.workload("lease-grant");
    let granted = Arc::new(Mutex::new(Vec::with_capacity(leases)));
    let load = Load {
        clients: 16,
        connections: 16,
        ops: leases,
    };
    let ids = granted.clone();
    let measured = load::run(
        &target.endpoints,
        load,
        &progress,
        move |mut client, _, _| {
            let ids = ids.clone();
            async move {
                let reply = client.lease_grant(LEASE_TTL_SECS, None).await?;
                ids.lock().expect("not poisoned").push(reply.id());
                Ok(())
            }
        },
    )
    .await?;
    let grant = Outcome::throughput("lease-grant", measured);
    let ids = std::mem::take(&mut *granted.lock().expect("not poisoned"));

    let workload = "lease-keepalive";
    let progress = target.progress.workload(workload);
    progress.say(format_args!("opening {} keep-alive streams", ids.len()));
    let connections = load::connect(&target.endpoints, 16).await?;
    let mut streams = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let mut client = connections[i % connections.len()].clone();
        streams.push(client.lease_keep_alive(*id).await?);
    }
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = progress.track(0, done.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for (mut keeper, mut stream) in streams {
        let done = done.clone();
        tasks.spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let begun = Instant::now();
                keeper.keep_alive().await?;
                let reply = stream.message().await?.context("keep-alive stream ended")?;
                if reply.ttl() <= 0 {
                    bail!("lease {:x} expired while kept alive", keeper.id());
                }
                samples.record(begun.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(samples)
        });
    }
    let mut samples = Samples::default();
    let (mut errors, mut first_error) = (0, None);
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(got) => samples.merge(got),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let elapsed = started.elapsed();
    ticker.finish();
    let keepalive = Outcome {
        workload,
        value: samples.len() as f64 / elapsed.as_secs_f64(),
        ops: samples.len() as u64,
        errors,
        first_error,
        seconds: elapsed.as_secs_f64(),
        latency: samples.summary(),
        detail: None,
    };
    Ok([grant, keepalive])
}

/// After `keys` puts of distinct keys into a fresh cluster: the largest member RSS, the largest
/// member data dir, and how long a restarted follower takes until it serves the last key again.
pub async fn footprint(
    cluster: &mut Cluster,
    target: &Target,
    keys: usize,
) -> Result<[Outcome; 3]> {
    let load = Load {
        clients: 256,
        connections: 16,
        ops: keys,
    };
    let filled = put(
        target,
        "footprint-fill",
        Via::Members(&target.endpoints),
        load,
    )
    .await?;
    ensure!(
        filled.errors == 0,
        "{} puts failed while filling: {:?}",
        filled.errors,
        filled.first_error
    );
    // Let followers apply the tail and the runtimes settle before reading memory.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut rss = Vec::new();
    let mut disk = Vec::new();
    for i in 0..cluster.len() {
        let pid = cluster.pid(i).context("member not running")?;
        rss.push(rss_bytes(pid)?);
        disk.push(allocated_bytes(&cluster.member_config(i).data_dir)?);
    }
    let mib = |bytes: &[u64]| {
        bytes
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / MIB))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let rss_outcome = Outcome::figure(
        "rss",
        *rss.iter().max().expect("members") as f64 / MIB,
        format!("per member MiB: {}", mib(&rss)),
    );
    let disk_outcome = Outcome::figure(
        "disk",
        *disk.iter().max().expect("members") as f64 / MIB,
        format!("per member MiB: {}", mib(&disk)),
    );

    let leader = cluster.leader().await?;
    let follower = (leader + 1) % cluster.len();
    let last = key(keys - 1);
    target.progress.say(format_args!(
        "restarting member {} with {keys} keys",
        cluster.member_config(follower).name
    ));
    cluster.kill(follower);
    let started = Instant::now();
    cluster.restart(follower).await?;
    let mut client = cluster.client_for(follower).await?;
    loop {
        let options = GetOptions::new().with_serializable();
        if let Ok(reply) = client.get(last.as_str(), Some(options)).await
            && reply.kvs().len() == 1
        {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the restarted member never served {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restart = Outcome::figure(
        "restart",
        started.elapsed().as_secs_f64(),
        format!("member {} of 3", cluster.member_config(follower).name),
    );
    Ok([rss_outcome, disk_outcome, restart])
}

const MIB: f64 = 1024.0 * 1024.0;

/// Resident set size of a process, from `/proc/<pid>/status`.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The most resident memory the process has had (`VmHWM`, its high-water mark).
pub(crate) fn peak_rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field} line"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kib * 1024)
}

/// Bytes allocated on disk under `dir` (what `du` counts: preallocated and sparse files count
/// by their blocks).
pub(crate) fn allocated_bytes(dir: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            allocated_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}
