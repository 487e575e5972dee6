//! A running cluster of local server processes.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use etcd_client::{Client, StatusResponse};
use mesh_client::pki::PkiDir;
use mesh_client::{Credentials, Settings};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::time::Instant;

use super::member::{Bootstrap, ClusterState, MemberConfig, MemberPorts, initial_cluster};
use super::{Flavor, Spec};

/// How long [`Cluster::start`], [`Cluster::restart`] and [`Cluster::add_member`] wait for
/// members to serve, and [`Cluster::leader`] for a leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bound on one Status RPC while polling, so a paused or wedged member cannot stall the poll.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How many fresh port sets [`Cluster::start`] and [`Cluster::add_member`] try when another
/// process took a port between our pick and the child's bind.
const BIND_ATTEMPTS: usize = 3;
/// Lines of each member's log printed when a cluster is dropped during a panic.
const PANIC_LOG_LINES: usize = 20;
/// When set, the temporary directory (data dirs and logs) survives the cluster and its path is
/// printed.
pub const KEEP_LOGS_ENV: &str = "RAFTMESH_KEEP_LOGS";
/// Overrides the etcdctl binary used by [`Cluster::etcdctl`].
pub const ETCDCTL_BIN_ENV: &str = "RAFTMESH_ETCDCTL_BIN";
/// The etcdctl used when [`ETCDCTL_BIN_ENV`] is not set.
pub const DEFAULT_ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// etcd's error when a reconfiguration would be unsafe because some member was not connected
/// for long enough (5 s after start); [`Cluster::add_member`] and [`Cluster::remove_member`] retry
/// it until their deadline.
const UNHEALTHY_CLUSTER: &str = "etcdserver: unhealthy cluster";

/// An N-member etcd-API cluster of local processes on 127.0.0.1.
///
/// Members are addressed by index (`0..len()`), in start order; an index keeps naming the same
/// member after it is killed, restarted or removed. Member `i` is named `n{i+1}`.
///
/// Dropping the cluster SIGKILLs and reaps every process and deletes the data dirs and logs
/// (unless `RAFTMESH_KEEP_LOGS` is set); during a panic it first prints the tail of every log.
#[derive(Debug)]
pub struct Cluster {
    flavor: Flavor,
    spec: Spec,
    /// `--initial-cluster-token`, unique per cluster so member and cluster ids never collide
    /// between clusters of one test run.
    token: String,
    members: Vec<Member>,
    /// Names handed out so far. A member that failed to start is dropped from `members`, but its
    /// name (and data dir) is never reused.
    names_used: usize,
    /// Holds every member's data dir and log; `None` only while dropping with
    /// `RAFTMESH_KEEP_LOGS`.
    dir: Option<TempDir>,
    /// The admin certificate this cluster's own clients use, with TLS.
    client_tls: Option<Credentials>,
}

/// One member: its fixed configuration and its current process.
#[derive(Debug)]
struct Member {
    config: MemberConfig,
    /// The command line it was first started with; a restart reuses it verbatim, like a
    /// supervisor restarting a crashed server (the data dir then takes precedence over the
    /// bootstrap flags).
    args: Vec<OsString>,
    log_path: PathBuf,
    /// The Raft member id, once known.
    id: Option<u64>,
    /// Behind a mutex so `&self` accessors can reap a process that exited on its own (etcd exits
    /// when removed from the cluster).
    process: Mutex<Process>,
}

/// The state of a member's process.
#[derive(Debug)]
enum Process {
    /// Running: it may be serving.
    Running(Child),
    /// Stopped with SIGSTOP.
    Paused(Child),
    /// Killed by us or exited on its own, and reaped.
    Exited(ExitStatus),
    /// Removed from the cluster with MemberRemove; it can never come back.
    Removed,
}

impl Process {
    /// Reaps the child if it exited on its own.
    fn refresh(&mut self) {
        if let Process::Running(child) | Process::Paused(child) = self
            && let Ok(Some(status)) = child.try_wait()
        {
            *self = Process::Exited(status);
        }
    }

    /// SIGKILLs (this also ends a SIGSTOPped process) and reaps the child, if there is one.
    fn kill(&mut self) {
        if let Process::Running(child) | Process::Paused(child) = self {
            // Fails only if the child already exited, which `wait` then reports.
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                *self = Process::Exited(status);
            }
        }
    }
}

impl Member {
    fn process(&self) -> std::sync::MutexGuard<'_, Process> {
        let mut process = self.process.lock().unwrap_or_else(|e| e.into_inner());
        process.refresh();
        process
    }

    /// Running and not paused: worth sending requests to.
    fn is_serving(&self) -> bool {
        matches!(*self.process(), Process::Running(_))
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The child exited and its log says a port was taken: retry with new ports.
    fn lost_port_race(&self) -> bool {
        matches!(*self.process(), Process::Exited(_))
            && self
                .log_tail(usize::MAX)
                .to_ascii_lowercase()
                .contains("address already in use")
    }

    /// An error describing why this member is not serving, with the end of its log.
    fn failure(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "member {} ({}): {what}\n--- last lines of {} ---\n{}",
            self.config.name,
            self.config.client_url(),
            self.log_path.display(),
            self.log_tail(30)
        )
    }
}

impl Cluster {
    /// Starts `spec.members` members and returns once every one answers Maintenance Status and
    /// reports a leader (within [`READY_TIMEOUT`]). If a member loses a port to another process,
    /// the whole cluster is started again on fresh ports.
    pub async fn start(flavor: Flavor, spec: Spec) -> Result<Cluster> {
        ensure!(spec.members >= 1, "a cluster needs at least one member");
        ensure!(
            flavor.program().is_file(),
            "server binary {} does not exist",
            flavor.program().display()
        );
        let mut attempt = 1;
        loop {
            let mut cluster = Cluster::spawn_new(flavor.clone(), spec.clone())?;
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut ready = Ok(());
            for i in 0..cluster.members.len() {
                match cluster.wait_serving(i, deadline).await {
                    Ok(id) => cluster.members[i].id = Some(id),
                    Err(e) => {
                        ready = Err(e);
                        break;
                    }
                }
            }
            match ready {
                Ok(()) => return Ok(cluster),
                Err(e)
                    if attempt < BIND_ATTEMPTS
                        && cluster.members.iter().any(Member::lost_port_race) =>
                {
                    eprintln!("localcluster: a port was taken, starting again: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Picks ports and spawns every member of a new cluster, without waiting.
    fn spawn_new(flavor: Flavor, spec: Spec) -> Result<Cluster> {
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let dir = tempfile::Builder::new()
            .prefix("localcluster-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let token = format!(
            "localcluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let configs = (1..=spec.members)
            .map(|n| {
                let name = format!("n{n}");
                Ok(MemberConfig {
                    data_dir: dir.path().join(format!("{name}.data")),
                    name,
                    ports: MemberPorts::pick(spec.metrics).context("picking free ports")?,
                    tls: spec.tls.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let peers: Vec<(String, String)> = configs
            .iter()
            .map(|c| (c.name.clone(), c.peer_url()))
            .collect();
        let initial = initial_cluster(peers.iter().map(|(n, u)| (n.as_str(), u.as_str())));
        let client_tls = spec.tls.as_deref().map(|dir| PkiDir::new(dir).admin());
        let mut cluster = Cluster {
            flavor,
            spec,
            token,
            members: Vec::new(),
            names_used: configs.len(),
            dir: Some(dir),
            client_tls,
        };
        for config in configs {
            let boot = Bootstrap {
                initial_cluster: &initial,
                state: ClusterState::New,
                token: &cluster.token,
            };
            let args = config.args(boot, &cluster.spec, &cluster.flavor);
            cluster.spawn_member(config, args)?;
        }
        Ok(cluster)
    }

    /// Spawns a new member's process and appends it to `members`.
    fn spawn_member(&mut self, config: MemberConfig, args: Vec<OsString>) -> Result<usize> {
        let log_path = self.dir().join(format!("{}.log", config.name));
        let child = spawn(self.flavor.program(), &args, &log_path)?;
        self.members.push(Member {
            config,
            args,
            log_path,
            id: None,
            process: Mutex::new(Process::Running(child)),
        });
        Ok(self.members.len() - 1)
    }

    /// Polls member `i` until it answers Status with a leader, and returns its member id.
    async fn wait_serving(&self, i: usize, deadline: Instant) -> Result<u64> {
        let member = &self.members[i];
        let url = member.config.client_url();
        loop {
            let last = match status_of(&url, self.client_tls.as_ref()).await {
                Ok(status) if status.leader() != 0 => {
                    return status
                        .header()
                        .map(|h| h.member_id())
                        .ok_or_else(|| member.failure("Status reply without a header"));
                }
                Ok(_) => "answers Status but knows no leader".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            match &*member.process() {
                Process::Running(_) => {}
                Process::Exited(status) => {
                    return Err(member.failure(format!("exited ({status}) before serving")));
                }
                Process::Paused(_) | Process::Removed => {
                    bail!("member {} is paused or removed", member.config.name)
                }
            }
            if Instant::now() >= deadline {
                return Err(
                    member.failure(format!("not serving after {READY_TIMEOUT:?}; last: {last}"))
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Number of members ever started, including killed and removed ones (indices are stable).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `http://127.0.0.1:<port>` of member `i`, whatever its state.
    pub fn client_url(&self, i: usize) -> String {
        self.members[i].config.client_url()
    }

    /// Client URLs of the members that are running and not paused.
    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_serving())
            .map(|m| m.config.client_url())
            .collect()
    }

    /// Metrics URL of member `i`, when the spec asked for metrics.
    pub fn metrics_url(&self, i: usize) -> Option<String> {
        self.members[i].config.metrics_url()
    }

    /// Member `i`'s configuration: name, ports and data dir.
    pub fn member_config(&self, i: usize) -> &MemberConfig {
        &self.members[i].config
    }

    /// Member `i`'s log file (stdout and stderr of every run, appended).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log_path
    }

    /// Process id of member `i` while it is running or paused (for reading its `/proc` entries).
    pub fn pid(&self, i: usize) -> Option<u32> {
        match &*self.members[i].process() {
            Process::Running(child) | Process::Paused(child) => Some(child.id()),
            Process::Exited(_) | Process::Removed => None,
        }
    }

    /// Whether member `i` is running and not paused.
    pub fn is_serving(&self, i: usize) -> bool {
        self.members[i].is_serving()
    }

    /// A client balanced over every running, unpaused member.
    pub async fn client(&self) -> Result<Client> {
        let urls = self.client_urls();
        ensure!(!urls.is_empty(), "no member is running");
        connect(&urls, self.client_tls.as_ref()).await
    }

    /// A client for member `i` alone.
    pub async fn client_for(&self, i: usize) -> Result<Client> {
        connect(&[self.client_url(i)], self.client_tls.as_ref()).await
    }

    /// A client for member `i` presenting `<tls dir>/<cert>.crt` and `.key` (e.g.
    /// `agent-node-1`); plaintext without TLS.
    pub async fn client_as(&self, i: usize, cert: &str) -> Result<Client> {
        let tls = self.spec.tls.as_deref().map(|dir| {
            let pki = PkiDir::new(dir);
            let (c, k) = pki.files(cert);
            Credentials::new(pki.ca_cert(), c, k)
        });
        connect(&[self.client_url(i)], tls.as_ref()).await
    }

    /// Index of the member that reports itself leader (its Status `leader` is its own id),
    /// polled among running members until [`READY_TIMEOUT`].
    pub async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if !member.is_serving() {
                    continue;
                }
                if let Ok(status) =
                    status_of(&member.config.client_url(), self.client_tls.as_ref()).await
                    && status.leader() != 0
                    && Some(status.leader()) == status.header().map(|h| h.member_id())
                {
                    return Ok(i);
                }
            }
            if Instant::now() >= deadline {
                bail!("no member reports itself leader after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Member `i`'s Raft member id (known from startup or MemberAdd, else asked with Status).
    pub async fn member_id(&self, i: usize) -> Result<u64> {
        if let Some(id) = self.members[i].id {
            return Ok(id);
        }
        let status = status_of(&self.client_url(i), self.client_tls.as_ref()).await?;
        status
            .header()
            .map(|h| h.member_id())
            .ok_or_else(|| anyhow!("Status reply without a header"))
    }

    /// SIGKILLs and reaps member `i` (no-op if it is not running). Its data dir stays.
    pub fn kill(&mut self, i: usize) {
        let member = &self.members[i];
        member.process().kill();
        log_event(&member.log_path, "killed with SIGKILL");
    }

    /// SIGTERMs member `i` and waits up to `patience` for it to stop on its own (a graceful
    /// stop, as Kubernetes asks for one); its exit status. SIGKILLed after `patience`, which is
    /// an error. Its data dir stays.
    pub fn terminate(&mut self, i: usize, patience: Duration) -> Result<ExitStatus> {
        let member = &self.members[i];
        let mut process = member.process();
        let Process::Running(child) = &mut *process else {
            bail!("member {} is not running", member.config.name);
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
        kill(pid, Signal::SIGTERM)?;
        log_event(&member.log_path, "sent SIGTERM");
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = child.try_wait()? {
                *process = Process::Exited(status);
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                process.kill();
                bail!(
                    "member {} did not stop within {patience:?} of SIGTERM",
                    member.config.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOPs member `i`: it keeps its sockets but answers nothing.
    ///
    /// # Panics
    /// If member `i` is not running.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
    }

    /// SIGCONTs member `i` after [`Cluster::pause`].
    ///
    /// # Panics
    /// If member `i` is not paused.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
    }

    fn signal(&mut self, i: usize, signal: Signal) {
        let member = &self.members[i];
        let mut process = member.process();
        let next = match (std::mem::replace(&mut *process, Process::Removed), signal) {
            (Process::Running(child), Signal::SIGSTOP) => Process::Paused(child),
            (Process::Paused(child), Signal::SIGCONT) => Process::Running(child),
            (other, _) => panic!(
                "cannot send {signal} to member {} in state {other:?}",
                member.config.name
            ),
        };
        let (Process::Running(child) | Process::Paused(child)) = &next else {
            unreachable!("next is a live process");
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
        kill(pid, signal).unwrap_or_else(|e| panic!("sending {signal} to {pid}: {e}"));
        *process = next;
    }

    /// Restarts member `i` with the same data dir, ports and flags (killing it first if it is
    /// running) and waits until it serves.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.respawn(i)?;
        let id = self.wait_serving(i, Instant::now() + READY_TIMEOUT).await?;
        self.members[i].id = Some(id);
        Ok(())
    }

    /// Kills (SIGKILL) and starts again every member of `members` before waiting for any of
    /// them: a member restarted alone cannot serve while no quorum is up (a restarted leader
    /// does not resume its old term), so a whole cluster comes back together.
    pub async fn restart_together(&mut self, members: &[usize]) -> Result<()> {
        for &i in members {
            self.respawn(i)?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for &i in members {
            let id = self.wait_serving(i, deadline).await?;
            self.members[i].id = Some(id);
        }
        Ok(())
    }

    /// SIGKILLs member `i` and spawns it again with the same command line, without waiting.
    fn respawn(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        let member = &self.members[i];
        let mut process = member.process();
        ensure!(
            !matches!(*process, Process::Removed),
            "member {} was removed from the cluster",
            member.config.name
        );
        log_event(&member.log_path, "restarting");
        let child = spawn(self.flavor.program(), &member.args, &member.log_path)?;
        *process = Process::Running(child);
        Ok(())
    }

    /// Adds a member: MemberAdd (through the running members) with the peer URL of a fresh port,
    /// then spawns it with `--initial-cluster` listing every current member plus itself and
    /// `--initial-cluster-state existing`, and waits until it serves. Returns its index.
    pub async fn add_member(&mut self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut attempt = 1;
        loop {
            self.names_used += 1;
            let name = format!("n{}", self.names_used);
            let config = MemberConfig {
                data_dir: self.dir().join(format!("{name}.data")),
                name,
                ports: MemberPorts::pick(self.spec.metrics).context("picking free ports")?,
                tls: self.spec.tls.clone(),
            };
            let mut client = self.client().await?;
            let peer_url = config.peer_url();
            let added = loop {
                match client.member_add([peer_url.as_str()], None).await {
                    Ok(added) => break added,
                    Err(e) if is_unhealthy(&e) && Instant::now() < deadline => {
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                    Err(e) => return Err(e).context(format!("MemberAdd {peer_url}")),
                }
            };
            let new_id = added
                .member()
                .ok_or_else(|| anyhow!("MemberAdd reply without the new member"))?
                .id();
            let mut peers = Vec::new();
            for m in added.member_list() {
                let name = if m.id() == new_id {
                    config.name.clone()
                } else {
                    self.members
                        .iter()
                        .find(|known| known.id == Some(m.id()))
                        .map_or_else(|| m.name().to_owned(), |known| known.config.name.clone())
                };
                peers.extend(m.peer_urls().iter().map(|url| (name.clone(), url.clone())));
            }
            let initial = initial_cluster(peers.iter().map(|(n, u)| (n.as_str(), u.as_str())));
            let boot = Bootstrap {
                initial_cluster: &initial,
                state: ClusterState::Existing,
                token: &self.token,
            };
            let args = config.args(boot, &self.spec, &self.flavor);
            let i = self.spawn_member(config, args)?;
            match self.wait_serving(i, deadline).await {
                Ok(id) => {
                    self.members[i].id = Some(id);
                    return Ok(i);
                }
                Err(e) if attempt < BIND_ATTEMPTS && self.members[i].lost_port_race() => {
                    eprintln!("localcluster: a port was taken, adding again: {e:#}");
                    self.members.pop();
                    member_remove(&mut client, new_id, deadline).await?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes member `i` with MemberRemove (sent to the other running members), kills it, and
    /// waits until the remaining members have a leader (removing the leader forces an election;
    /// etcd lets writes sent in between time out).
    pub async fn remove_member(&mut self, i: usize) -> Result<()> {
        let id = self.member_id(i).await?;
        let others: Vec<String> = (0..self.members.len())
            .filter(|&j| j != i && self.members[j].is_serving())
            .map(|j| self.client_url(j))
            .collect();
        ensure!(!others.is_empty(), "no other member is running");
        let mut client = connect(&others, self.client_tls.as_ref()).await?;
        member_remove(&mut client, id, Instant::now() + READY_TIMEOUT).await?;
        {
            let member = &self.members[i];
            let mut process = member.process();
            process.kill();
            *process = Process::Removed;
            log_event(&member.log_path, "removed from the cluster and killed");
        }
        self.leader().await?;
        Ok(())
    }

    /// `ETCDCTL_API=3 etcdctl --endpoints=<every running, unpaused member>`, with every other
    /// `ETCDCTL_*` variable removed from its environment; with TLS, as the admin.
    pub fn etcdctl(&self) -> Command {
        let mut command = etcdctl(&self.client_urls());
        self.tls_flags(&mut command, "admin-admin");
        command
    }

    /// Like [`Cluster::etcdctl`] with TLS, presenting `<tls dir>/<cert>.crt` and `.key` (e.g.
    /// `agent-node-1`) instead of the admin certificate.
    pub fn etcdctl_as(&self, cert: &str) -> Command {
        let mut command = etcdctl(&self.client_urls());
        self.tls_flags(&mut command, cert);
        command
    }

    fn tls_flags(&self, command: &mut Command, cert: &str) {
        if let Some(dir) = &self.spec.tls {
            let pki = PkiDir::new(dir);
            let (c, k) = pki.files(cert);
            command
                .arg(format!("--cacert={}", pki.ca_cert().display()))
                .arg(format!("--cert={}", c.display()))
                .arg(format!("--key={}", k.display()));
        }
    }

    /// Like [`Cluster::etcdctl`], with endpoints written `host:port` rather than as URLs.
    ///
    /// etcdctl 3.4's per-member commands (`endpoint status`, `defrag`, …) send a URL
    /// endpoint verbatim as the HTTP/2 `:authority` (`http://127.0.0.1:2379`), which stock h2
    /// refuses (raftmesh's patched h2 accepts it, see vendor/h2); `host:port` endpoints are the
    /// other form operators use, and tests use both.
    pub fn etcdctl_addrs(&self) -> Command {
        let addrs: Vec<String> = self
            .client_urls()
            .iter()
            .map(|u| {
                u.split_once("://")
                    .map_or(u.as_str(), |(_, a)| a)
                    .to_owned()
            })
            .collect();
        let mut command = etcdctl(&addrs);
        self.tls_flags(&mut command, "admin-admin");
        command
    }

    /// `ETCDCTL_API=3 etcdctl --endpoints=<member i>` (as the admin, with TLS).
    pub fn etcdctl_for(&self, i: usize) -> Command {
        let mut command = etcdctl(&[self.client_url(i)]);
        self.tls_flags(&mut command, "admin-admin");
        command
    }

    /// The last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.members[i].log_tail(lines)
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory is only taken while dropping")
            .path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &self.members {
            member.process().kill();
        }
        if std::thread::panicking() {
            for member in &self.members {
                eprintln!(
                    "--- localcluster: last lines of {} ---\n{}",
                    member.log_path.display(),
                    member.log_tail(PANIC_LOG_LINES)
                );
            }
        }
        if std::env::var_os(KEEP_LOGS_ENV).is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("localcluster: kept {}", dir.keep().display());
        }
    }
}

/// Spawns a server with stdout and stderr appended to `log_path`.
fn spawn(program: &Path, args: &[OsString], log_path: &Path) -> Result<Child> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(
        log,
        "=== localcluster: {} {}",
        program.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    let stderr = log.try_clone()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    // etcd reads every flag from ETCD_<FLAG> too; a stray one in the test environment would
    // silently change the cluster.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(key);
        }
    }
    command
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))
}

/// Appends a line saying what localcluster did to a member's log, so the log reads as a story.
fn log_event(log_path: &Path, event: &str) {
    if let Ok(mut log) = OpenOptions::new().append(true).open(log_path) {
        let _ = writeln!(log, "=== localcluster: {event}");
    }
}

fn etcdctl(urls: &[String]) -> Command {
    let program = std::env::var_os(ETCDCTL_BIN_ENV).unwrap_or_else(|| DEFAULT_ETCDCTL_BIN.into());
    let mut command = Command::new(program);
    // etcdctl refuses to run when an ETCDCTL_* variable shadows a flag we pass (e.g. a developer's
    // ETCDCTL_ENDPOINTS), and any other one would change what it does.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(key);
        }
    }
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", urls.join(",")));
    command
}

/// A client of `urls`: of the one member, or balanced over several (as clientv3 does: the
/// acceptance tests play that client).
async fn connect(urls: &[String], tls: Option<&Credentials>) -> Result<Client> {
    let settings = Settings::timeouts(RPC_TIMEOUT, None);
    Ok(match urls {
        [one] => mesh_client::member(one, tls, &settings).await?,
        _ => mesh_client::balanced(urls, tls, &settings).await?,
    })
}

/// One Status call to `url`, bounded by [`RPC_TIMEOUT`].
async fn status_of(url: &str, tls: Option<&Credentials>) -> Result<StatusResponse> {
    let call = async {
        let mut client = connect(&[url.to_owned()], tls).await?;
        client.status().await.context("Status")
    };
    tokio::time::timeout(RPC_TIMEOUT, call)
        .await
        .with_context(|| format!("Status to {url} timed out"))?
}

fn is_unhealthy(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message() == UNHEALTHY_CLUSTER)
}

/// MemberRemove, retrying "unhealthy cluster" until `deadline`.
async fn member_remove(client: &mut Client, id: u64, deadline: Instant) -> Result<()> {
    loop {
        match client.member_remove(id).await {
            Ok(_) => return Ok(()),
            Err(e) if is_unhealthy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(e) => return Err(e).context(format!("MemberRemove {id:x}")),
        }
    }
}
