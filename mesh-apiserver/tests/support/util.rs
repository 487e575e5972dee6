//! Helpers shared by the acceptance tests: the server under test, clients with deadlines, etcd
//! error matching, bounded polling, concurrent writers that record every acknowledged put, and
//! whole-prefix snapshots to compare members.
//!
//! The tests run unchanged against the real etcd (`RAFTMESH_TEST_SERVER=etcd`,
//! `scripts/test-etcd`), which is how the expected values are checked against the reference;
//! those of raftmesh's own behaviour say so with [`raftmesh_only`].

#![allow(
    dead_code,
    reason = "each test file uses a different subset of these helpers"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, Error, GetOptions};
use testkit::localcluster::{Cluster, Flavor};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bound on one unary request. Long enough for a linearizable read on a loaded 2-core box,
/// short enough that a writer whose member just died moves on to another member quickly.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// How often eventual conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after a failed write before the writer tries the next member, so a writer facing a
/// cluster without a leader does not spin.
const WRITE_BACKOFF: Duration = Duration::from_millis(20);

/// The server under test: `mesh-apiserver`, or etcd with `RAFTMESH_TEST_SERVER=etcd`.
pub fn flavor() -> Flavor {
    Flavor::from_env(env!("CARGO_BIN_EXE_mesh-apiserver"))
}

/// Marks a test of raftmesh's own behaviour, which etcd does not have; `why` says what differs.
///
/// The `etcd` nextest profile (`.config/nextest.toml`, run by `scripts/test-etcd`) filters
/// such tests out, so against etcd they are reported as skipped rather than as passed.
///
/// # Panics
/// Against etcd: the test got past the profile's filter, and it must fail loudly rather than
/// pass having checked nothing.
pub fn raftmesh_only(why: &str) {
    if flavor().is_etcd() {
        panic!(
            "{why}: this raftmesh-only test checks nothing against etcd; the `etcd` nextest \
             profile's default-filter (.config/nextest.toml) should have left it out"
        );
    }
}

/// A client for `url` alone whose unary requests time out after [`RPC_TIMEOUT`]. Do not use it
/// for streams (watch, keep-alive): use [`connect_stream`].
pub async fn connect(url: &str) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_timeout(RPC_TIMEOUT)
        .with_connect_timeout(RPC_TIMEOUT);
    Client::connect([url], Some(options))
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// A client for `url` alone without a per-request timeout, for long-lived streams.
pub async fn connect_stream(url: &str) -> Result<Client> {
    let options = ConnectOptions::new().with_connect_timeout(RPC_TIMEOUT);
    Client::connect([url], Some(options))
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The gRPC code (as its Rust name, e.g. `"InvalidArgument"`) and message of an error the server
/// returned; `None` for client-side and transport errors.
pub fn grpc_status(err: &Error) -> Option<(String, String)> {
    match err {
        Error::GRpcStatus(status) => {
            Some((format!("{:?}", status.code()), status.message().to_owned()))
        }
        _ => None,
    }
}

/// Runs `attempt` until it returns `Ok`, every [`POLL_INTERVAL`]
/// ([`testkit::eventually_async`]).
///
/// # Panics
/// When `patience` runs out, with `what` and the last error.
pub async fn eventually<T>(
    what: &str,
    patience: Duration,
    attempt: impl AsyncFnMut() -> Result<T>,
) -> T {
    testkit::eventually_async(what, patience, POLL_INTERVAL, attempt).await
}

/// The header revision of a linearizable read: the store's current revision.
pub async fn current_revision(client: &mut Client) -> Result<i64> {
    let resp = client
        .get("\0", Some(GetOptions::new().with_count_only()))
        .await?;
    Ok(resp
        .header()
        .context("Range reply without header")?
        .revision())
}

/// One key as a Range returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// Every key under a prefix at one revision, as one member serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixSnapshot {
    /// Header revision of the Range.
    pub revision: i64,
    pub entries: BTreeMap<String, Entry>,
}

/// Reads every key under `prefix` in one Range (`serializable`: served from `client`'s member's
/// own state, which may be behind; otherwise linearizable).
pub async fn read_prefix(
    client: &mut Client,
    prefix: &str,
    serializable: bool,
) -> Result<PrefixSnapshot> {
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let resp = client.get(prefix, Some(options)).await?;
    let revision = resp
        .header()
        .context("Range reply without header")?
        .revision();
    let mut entries = BTreeMap::new();
    for kv in resp.kvs() {
        entries.insert(
            kv.key_str()?.to_owned(),
            Entry {
                value: kv.value_str()?.to_owned(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
                lease: kv.lease(),
            },
        );
    }
    Ok(PrefixSnapshot { revision, entries })
}

/// Checks that every acknowledged put is in `snapshot` with its value, and that the key was last
/// modified at exactly the revision the put was acknowledged with (each test key is written
/// once).
pub fn check_acks_in(snapshot: &PrefixSnapshot, acks: &[Ack]) -> Result<()> {
    let mut missing = Vec::new();
    for ack in acks {
        match snapshot.entries.get(&ack.key) {
            None => missing.push(ack.key.clone()),
            Some(entry) => {
                if entry.value != ack.value || entry.mod_revision != ack.revision {
                    bail!(
                        "acknowledged put {ack:?} reads back as {entry:?} at revision {}",
                        snapshot.revision
                    );
                }
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} of {} acknowledged keys are missing at revision {} (first: {:?})",
            missing.len(),
            acks.len(),
            snapshot.revision,
            &missing[..missing.len().min(5)]
        );
    }
    Ok(())
}

/// Restarts several members at once ([`Cluster::restart`] waits until the member serves with
/// a leader, which one member of a fully stopped cluster never does alone) and returns the
/// leader's index.
pub async fn restart_together(cluster: &mut Cluster, members: &[usize]) -> Result<usize> {
    cluster.restart_together(members).await?;
    cluster.leader().await
}

/// One acknowledged put.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub value: String,
    /// The revision in the Put reply header: the revision of this write.
    pub revision: i64,
    /// When the request was sent; a put sent after an event was necessarily acknowledged
    /// after it.
    pub sent: Instant,
}

/// Concurrent writers, each putting fresh keys `<prefix><task>-<seq>` one at a time over clients
/// to every given member, moving to the next member after any error. Failed puts are not
/// retried (a fresh key is used), so each key is written at most once and a put that failed
/// but committed anyway shows up as an unacknowledged key.
#[derive(Debug)]
pub struct Writers {
    /// Set to make every task finish after its current request.
    stop: Arc<AtomicBool>,
    /// Acknowledged puts so far, over all tasks.
    acked: Arc<AtomicUsize>,
    /// Failed puts so far (timeouts, no leader, connection refused, …).
    failed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<Ack>>>,
}

impl Writers {
    /// Starts `tasks` writers. Task `t` starts on member `t % urls.len()`. With `target`, the
    /// tasks stop on their own once `target` puts are acknowledged (a few more may land).
    pub fn start(urls: &[String], tasks: usize, prefix: &str, target: Option<usize>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..tasks)
            .map(|task| {
                let urls = urls.to_vec();
                let prefix = prefix.to_owned();
                let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut clients = Vec::new();
                    for url in &urls {
                        // Connecting is lazy: this only fails on a malformed URL.
                        clients.push(connect(url).await.expect("client for a member"));
                    }
                    let mut member = task % clients.len();
                    let mut acks = Vec::new();
                    for seq in 0.. {
                        if stop.load(Ordering::SeqCst)
                            || target.is_some_and(|t| acked.load(Ordering::SeqCst) >= t)
                        {
                            break;
                        }
                        let key = format!("{prefix}{task}-{seq:06}");
                        let value = format!("value of {key}");
                        let sent = Instant::now();
                        let put = clients[member].put(key.as_str(), value.as_str(), None);
                        match tokio::time::timeout(RPC_TIMEOUT, put).await {
                            Ok(Ok(resp)) => {
                                let revision = resp.header().map_or(0, |h| h.revision());
                                acks.push(Ack {
                                    key,
                                    value,
                                    revision,
                                    sent,
                                });
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Err(_)) | Err(_) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                member = (member + 1) % clients.len();
                                tokio::time::sleep(WRITE_BACKOFF).await;
                            }
                        }
                    }
                    acks
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            failed,
            tasks,
        }
    }

    /// Acknowledged puts so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Failed puts so far.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits until `condition(acked)` holds.
    ///
    /// # Panics
    /// After `patience`, or if every task has finished without meeting it.
    pub async fn wait_for(
        &self,
        what: &str,
        patience: Duration,
        condition: impl Fn(usize) -> bool,
    ) {
        let deadline = Instant::now() + patience;
        while !condition(self.acked()) {
            if self.tasks.iter().all(JoinHandle::is_finished) {
                panic!("{what}: writers finished with {} acks", self.acked());
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not reached after {patience:?} ({} acked, {} failed)",
                    self.acked(),
                    self.failed()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops the tasks and returns every acknowledged put, in revision order.
    pub async fn finish(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.expect("writer task panicked"));
        }
        all.sort_by_key(|ack| ack.revision);
        all
    }
}

/// Serializes the tests of one binary that must not share the two cores with each other (fault
/// injection with thousands of writes: three at once starve etcd's heartbeats into spurious
/// elections and make timings meaningless).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Whether member `i`'s log says `text`.
pub fn logged(cluster: &Cluster, i: usize, text: &str) -> bool {
    std::fs::read_to_string(cluster.log_path(i)).is_ok_and(|log| log.contains(text))
}

/// Panics, showing the end of member `i`'s log, unless the log says `text`; `missing` says what
/// its absence means.
pub fn assert_logged(cluster: &Cluster, i: usize, text: &str, missing: &str) {
    assert!(
        logged(cluster, i, text),
        "member {i}: {missing}\n{}",
        cluster.log_tail(i, 30)
    );
}

/// Waits until member `i` has seen write sessions switched on (it logs it; `kvstore::session`).
pub async fn sessions_on(cluster: &Cluster, i: usize) {
    eventually("write sessions on", Duration::from_secs(30), async || {
        anyhow::ensure!(logged(cluster, i, "write sessions are on"), "not yet");
        Ok(())
    })
    .await;
}

/// A 3-member cluster of the `fault-injection` build of mesh-apiserver (`scripts/test` builds it
/// into `target/fault-injection/`), its leader, and the turn that keeps the binary's other
/// cluster tests off the cores meanwhile. Raftmesh-only: `faults` names what the test needs.
pub async fn start_with_faults(
    faults: &str,
) -> (Cluster, usize, tokio::sync::MutexGuard<'static, ()>) {
    raftmesh_only(faults);
    let turn = exclusive().await;
    let server = testkit::localcluster::flavor::fault_injection_server(std::path::Path::new(env!(
        "CARGO_BIN_EXE_mesh-apiserver"
    )));
    let cluster = Cluster::start(
        Flavor::Raftmesh(server),
        testkit::localcluster::Spec::with_members(3),
    )
    .await
    .expect("cluster starts");
    let leader = cluster.leader().await.expect("a leader");
    (cluster, leader, turn)
}

/// A 3-member spec whose members publish the manifests in `dir` as cluster `apps`, id 7.
pub fn publishing_spec(dir: &std::path::Path, extra: &[&str]) -> testkit::localcluster::Spec {
    let mut spec = testkit::localcluster::Spec::with_members(3);
    spec.extra_args = ["--cluster-name", "apps", "--cluster-id", "7"]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    spec.extra_args.push("--manifests-dir".to_owned());
    spec.extra_args.push(dir.display().to_string());
    spec
}

/// Member `i`'s `/metrics` text (the cluster must have been started with metrics).
pub async fn scrape_metrics(cluster: &Cluster, i: usize) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = cluster
        .metrics_url(i)
        .context("the cluster has no metrics URLs")?;
    let addr = url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).await?;
    Ok(body)
}

/// The value of `series` in a `/metrics` text, `None` when absent (a family with no sample for
/// those labels yet).
pub fn metric_opt(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap_or(f64::NAN))
}

/// The value of `series` (name and labels, exactly as exposed) in a `/metrics` text.
///
/// # Panics
/// When the text has no such series: a renamed metric never reads as zero.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap_or(f64::NAN))
        .unwrap_or_else(|| panic!("no {series} in the metrics:\n{text}"))
}

/// Runs etcdctl (2 s dial, 30 s command timeout); its stdout, or an error with everything it
/// printed.
pub async fn etcdctl_stdout(mut command: std::process::Command, args: &[&str]) -> Result<String> {
    command
        .args(["--dial-timeout=2s", "--command-timeout=30s"])
        .args(args)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::from(command).output(),
    )
    .await
    .context("etcdctl hangs")??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "etcdctl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}
