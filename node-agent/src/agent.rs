//! The agent: installs (or adopts) the datapath, then keeps it equal to the store.
//!
//! Order at start: the programs and maps first (adopting pinned ones as they are, so traffic
//! keeps flowing), then the applied tables read back from the maps, then the store. Until the
//! first list arrives nothing is written, and a store that cannot be reached leaves the maps
//! exactly as they were: the datapath never depends on the agent being up.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::datapath::{self, Attached, KernelMaps, Pins, Programs};
use crate::desired::{self, Local, Over, stale};
use crate::metrics::{BackendLabel, ClusterLabel, Health, Metrics, ModeLabel, OverLabel, Reason};
use crate::podnet;
use crate::reconcile::{Failed, Reconciler};
use crate::source::{self, Watch};
use crate::state::{MeshState, Touched};
use crate::wg::publish::{self, Publisher};
use crate::wg::{self, Wg};

mod interfaces;

use interfaces::LinkEvents;

/// How often remote staleness and counters are looked at, and pod interfaces scanned (they are
/// also scanned on every link change netlink reports).
const TICK: Duration = Duration::from_secs(1);

/// A fatal failure (the datapath cannot be installed or written).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Installing, reading or writing the datapath.
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    /// The metrics listener.
    #[error("listening for metrics on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The WireGuard key in the state directory.
    #[error("WireGuard key: {0}")]
    Key(#[from] wg::key::Error),
    /// Setting up the WireGuard interface.
    #[error("WireGuard: {0}")]
    Wg(#[from] wg::Error),
    /// The links pinned under --bpffs attach another cgroup than --cgroup-root.
    #[error(
        "the programs pinned under {bpffs} are attached to {recorded}, not --cgroup-root {wanted}: run `node-agent --uninstall --bpffs {bpffs}` first"
    )]
    CgroupChanged {
        /// Pin directory.
        bpffs: String,
        /// Cgroup recorded at attach time.
        recorded: String,
        /// Cgroup asked for now.
        wanted: String,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Binds the metrics listener (before [`run`], so a bad address fails at start).
pub async fn bind_metrics(config: &Config) -> Result<TcpListener, Error> {
    TcpListener::bind(config.listen_metrics)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen_metrics,
            source,
        })
}

/// Runs the agent until `shutdown` completes. Leaves the datapath installed.
///
/// With `--bootstrap-url`, the node's certificate comes first (nothing else works without
/// it), and is renewed in the background for as long as the agent runs.
pub async fn run(
    config: Config,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let _renewal = match (&config.bootstrap, &config.tls) {
        (Some(bootstrap), Some((ca, cert, key))) => {
            let files = crate::bootstrap::OwnedFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                cluster: config.cluster.clone(),
                node: config.node.clone(),
            };
            let (ready, got) = tokio::sync::oneshot::channel();
            let renewal = AbortOnDrop(tokio::spawn(crate::bootstrap::keep_renewed(
                bootstrap.clone(),
                files,
                Some(ready),
            )));
            tokio::select! {
                _ = got => {}
                () = &mut shutdown => return Ok(()),
            }
            Some(renewal)
        }
        _ => None,
    };
    let pins = Pins::new(&config.bpffs);
    check_cgroup_record(&config, &pins)?;
    // WireGuard first: a key or interface that cannot be set up fails the start, before
    // anything else changes.
    let mut wg = match &config.wg {
        Some(c) => {
            let (key, created) = wg::key::load_or_create(&config.state_dir)?;
            if created {
                tracing::info!(
                    file = %config.state_dir.join(wg::key::FILE).display(),
                    "made this node's WireGuard key"
                );
            }
            Some(Wg::start(c.clone(), key, &config.state_dir)?)
        }
        None => None,
    };
    let (metrics, mut registry) = Metrics::new();
    // Reachability probing rides on WireGuard: its port is published in the node key record.
    let probe = config.wg.as_ref().and_then(|c| c.probe);
    let prober = match probe {
        Some(settings) => {
            let reach_metrics = crate::reach::ReachMetrics::register(&mut registry);
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], settings.port));
            let prober = crate::reach::Prober::start(settings, reach_metrics)
                .await
                .map_err(|source| Error::Listen { addr, source })?;
            tracing::info!(
                port = settings.port,
                interval = ?settings.interval,
                timeout = ?settings.timeout,
                "answering and sending reachability probes"
            );
            Some(prober)
        }
        None => None,
    };
    let mut publisher = wg.as_ref().map(|w| {
        let mut p = Publisher::new(
            &config.cluster,
            &config.node,
            *w.public_key(),
            w.port(),
            probe.map(|p| p.port),
        );
        if probe.is_some() {
            // Nothing probed yet, nothing unreachable: what a probing agent says until it
            // has judged.
            p.set_reach(&crate::reach::Unreachable::default().record());
        }
        p
    });
    let (mut programs, mut kernel, report) =
        Programs::install(&pins, &config.cgroup_root, config.attach)?;
    record_cgroup(&config)?;
    tracing::info!(
        bpffs = %config.bpffs.display(),
        cgroup = %config.cgroup_root.display(),
        policy_attach = config.attach.name(),
        adopted = ?report.adopted,
        attached = ?report.attached,
        "datapath installed"
    );
    let (applied, strays) = kernel.read()?;
    if !strays.is_empty() {
        tracing::info!(
            slots = strays.len(),
            "removing backend slots beyond their service's count"
        );
        kernel.remove_strays(&strays)?;
    }
    tracing::info!(
        frontends = applied.services.len(),
        backends = applied.backends(),
        ipcache = applied.ipcache.len(),
        rules = applied.rules.len(),
        "adopted the maps' contents"
    );
    let mut reconciler = Reconciler::adopt(applied);

    // DNS before the first list: until then it answers NXDOMAIN for everything in its zone,
    // which is what a resolver sees of a name not exported yet.
    let dns = match &config.dns {
        Some((addr, zone)) => {
            let zone =
                Arc::new(crate::dns::Zone::new(zone).expect("the zone was checked with the flags"));
            let dns_metrics = crate::dns::DnsMetrics::register(&mut registry);
            let server = crate::dns::serve(*addr, zone.clone(), dns_metrics)
                .await
                .map_err(|source| Error::Listen {
                    addr: *addr,
                    source,
                })?;
            tracing::info!(%addr, zone = %config.dns.as_ref().map_or("", |d| d.1.as_str()), "serving clusterset DNS");
            Some((zone, server))
        }
        None => None,
    };
    metrics
        .policy_attach
        .get_or_create(&ModeLabel {
            mode: config.attach.name().to_owned(),
        })
        .set(1);
    if let (Some(w), Some(c)) = (wg.as_ref(), config.wg.as_ref()) {
        metrics
            .wg_backend
            .get_or_create(&BackendLabel {
                backend: w.backend().to_owned(),
                fallback: c.kernel_refused.is_some().to_string(),
            })
            .set(1);
    }
    metrics.tables(reconciler.applied());
    if let Ok(c) = kernel.counters() {
        metrics.counters(c);
    }
    let (health_tx, health_rx) = watch::channel(Health::default());
    let stop_server = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(admin_http::serve(
        metrics_listener,
        Arc::new(registry),
        Health::served(health_rx),
        stop_server.clone(),
        "metrics",
    ));

    let local = Local {
        cluster: config.cluster.clone(),
        node: config.node.clone(),
        stale_after_ms: config.remote_stale_after.as_millis() as i64,
        limits: config.remote_limits,
    };
    let mut agent = Agent {
        config: &config,
        local,
        kernel: &mut kernel,
        programs: &mut programs,
        reconciler: &mut reconciler,
        metrics,
        state: MeshState::default(),
        stale: BTreeSet::new(),
        interfaces: BTreeSet::new(),
        attach_failures: BTreeMap::new(),
        behind: BTreeMap::new(),
        unenforced: BTreeMap::new(),
        health: health_tx,
        retry: false,
        over: BTreeMap::new(),
        refused: Vec::new(),
        endpoint: first_endpoint(&config.node, config.endpoints.len()),
        established: false,
        wg: wg.as_mut(),
        publisher: publisher.as_mut(),
        dns: dns.as_ref().map(|(zone, _)| zone.clone()),
        prober,
    };
    let result = tokio::select! {
        r = agent.sync_forever() => r,
        () = &mut shutdown => {
            tracing::info!("stopping; the datapath stays installed");
            Ok(())
        }
    };
    stop_server.cancel();
    let _ = server.await;
    result
}

/// The prober's next judgement; never, without one.
async fn reach_changed(prober: Option<&mut crate::reach::Prober>) -> crate::reach::Unreachable {
    match prober {
        Some(p) => p.changed().await,
        None => std::future::pending().await,
    }
}

/// Until `at`; never, without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The endpoint a node tries first: spread over the members by the node's name, so agents do
/// not all land on one member.
fn first_endpoint(node: &str, endpoints: usize) -> usize {
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % endpoints.max(1) as u64) as usize
}

struct Agent<'a> {
    config: &'a Config,
    local: Local,
    kernel: &'a mut KernelMaps,
    programs: &'a mut Programs,
    reconciler: &'a mut Reconciler,
    metrics: Metrics,
    state: MeshState,
    /// Remotes found stale at the last tick.
    stale: BTreeSet<String>,
    /// Pod interfaces (name, index) with the policy programs.
    interfaces: BTreeSet<(String, u32)>,
    /// Pod interfaces the programs could not be attached to, with the error (logged once
    /// per interface and error, retried every scan).
    attach_failures: BTreeMap<(String, u32), String>,
    /// tc mode: interfaces where another filter runs before ours, and which.
    behind: BTreeMap<String, String>,
    /// This node's pod addresses no interface with the policy programs leads to, and why.
    unenforced: BTreeMap<Ipv4Addr, String>,
    /// What `/healthz` says.
    health: watch::Sender<Health>,
    /// A map write failed: the next tick tries it again.
    retry: bool,
    /// Remotes over the limits, as last reported.
    over: BTreeMap<String, Over>,
    /// Remote node addresses refused, as last reported: cluster, node, address, reason.
    refused: Vec<(String, String, Ipv4Addr, String)>,
    /// The index of the endpoint the next session tries first.
    endpoint: usize,
    /// The current session got as far as watching (a failure after that starts the backoff
    /// afresh).
    established: bool,
    /// The WireGuard interface, unless `--wg-backend none`.
    wg: Option<&'a mut Wg>,
    /// The node key record, with WireGuard.
    publisher: Option<&'a mut Publisher>,
    /// The clusterset DNS zone, with `--dns-listen`.
    dns: Option<Arc<crate::dns::Zone>>,
    /// Reachability probing of remote nodes, with WireGuard and a `--reachability-port`.
    prober: Option<crate::reach::Prober>,
}

impl Agent<'_> {
    /// Lists and watches, reconnecting and listing again as needed. Returns only on a fatal
    /// (datapath) error.
    async fn sync_forever(&mut self) -> Result<(), Error> {
        let links = match LinkEvents::open() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("no link events ({e}): new pod interfaces are found once a second");
                None
            }
        };
        let links = links.as_ref();
        let mut backoff = Duration::from_millis(200);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Watches resume from these revisions after a broken stream; `None`: list first.
        let mut resume: Option<[i64; 2]> = None;
        loop {
            match self.session(&mut resume, &mut tick, links).await {
                Ok(never) => match never {},
                Err(SessionError::Fatal(e)) => return Err(e),
                Err(SessionError::Source(e)) => {
                    self.metrics.connected.set(0);
                    // The next session starts with the next member: this one may be gone.
                    self.endpoint += 1;
                    if std::mem::take(&mut self.established) {
                        backoff = Duration::from_millis(200);
                    }
                    if matches!(e, source::Error::Compacted { .. }) {
                        resume = None;
                    }
                    tracing::warn!("API server: {e}; retrying in {backoff:?} (maps unchanged)");
                    let deadline = tokio::time::Instant::now() + backoff;
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(deadline) => break,
                            _ = tick.tick() => self.tick()?,
                            () = LinkEvents::next(links) => self.scan_interfaces()?,
                            u = reach_changed(self.prober.as_mut()) => self.reachability(u)?,
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One connection: (list and) watch until something breaks.
    async fn session(
        &mut self,
        resume: &mut Option<[i64; 2]>,
        tick: &mut tokio::time::Interval,
        links: Option<&LinkEvents>,
    ) -> Result<std::convert::Infallible, SessionError> {
        let (mut client, at) = source::connect(self.config, self.endpoint).await?;
        if at != self.endpoint % self.config.endpoints.len() {
            tracing::info!(endpoint = %self.config.endpoints[at], "API server: using another member");
        }
        self.endpoint = at;
        let revisions = match *resume {
            Some(r) => r,
            None => {
                let started = Instant::now();
                let (mut state, revision) = source::list(&mut client).await?;
                self.metrics.lists.inc();
                state.unreachable = std::mem::take(&mut self.state.unreachable);
                self.state = state;
                self.stale = self.stale_now();
                self.guard_remotes(&Touched::everything());
                let writes = self.reconcile(&Touched::everything(), started)?;
                let applied = self.reconciler.applied();
                tracing::info!(
                    revision,
                    clusters = self.state.clusters.len(),
                    frontends = applied.services.len(),
                    backends = applied.backends(),
                    ipcache = applied.ipcache.len(),
                    rules = applied.rules.len(),
                    writes,
                    "listed the store and programmed the maps"
                );
                self.health.send_modify(|h| h.programmed = true);
                self.reconcile_wg();
                [revision, revision]
            }
        };
        let mut mesh = Watch::start(&mut client, source::PREFIXES[0], revisions[0]).await?;
        let mut status = Watch::start(&mut client, source::PREFIXES[1], revisions[1]).await?;
        *resume = Some([mesh.revision, status.revision]);
        self.metrics.connected.set(1);
        self.established = true;
        self.publish(&mut client, mesh.revision).await?;
        let mut keepalive = tokio::time::interval(publish::KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        loop {
            let reach_due = self.publisher.as_deref().and_then(Publisher::reach_due);
            let changes = tokio::select! {
                c = mesh.next() => c,
                c = status.next() => c,
                _ = tick.tick() => {
                    self.tick()?;
                    continue;
                }
                _ = keepalive.tick(), if self.publisher.is_some() => {
                    if let Some(p) = self.publisher.as_deref_mut() {
                        p.keep_alive(&mut client).await?;
                        p.check_reach(&mut client).await?;
                    }
                    self.publish(&mut client, mesh.revision).await?;
                    continue;
                }
                () = LinkEvents::next(links) => {
                    self.scan_interfaces()?;
                    continue;
                }
                u = reach_changed(self.prober.as_mut()) => {
                    self.reachability(u)?;
                    continue;
                }
                () = sleep_until(reach_due) => {
                    if let Some(p) = self.publisher.as_deref_mut() {
                        p.publish_reach(&mut client).await;
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let mut changes = match changes {
                Ok(c) => c,
                Err(e) => {
                    *resume = Some([mesh.revision, status.revision]);
                    return Err(e.into());
                }
            };
            // Responses already received are applied with this one: a burst (a remote's
            // initial mirror, hundreds of remotes connecting) costs one reconcile, not one
            // per response. A watch that ended meanwhile ends the session after what came
            // before it is applied (its revision already counts those changes).
            let ended = take_arrived(&mut mesh, &mut status, &mut changes).await;
            let mut touched = Touched::default();
            for c in &changes {
                touched.merge(self.state.apply(&c.key, c.value.as_deref(), c.created));
            }
            let more = self.guard_remotes(&touched);
            touched.merge(more);
            *resume = Some([mesh.revision, status.revision]);
            self.metrics.revision.set(mesh.revision);
            if !touched.is_empty() {
                self.reconcile(&touched, started)?;
            }
            if touched.peers {
                self.reconcile_wg();
            }
            if let Some(e) = ended {
                return Err(e.into());
            }
            self.publish(&mut client, mesh.revision).await?;
        }
    }

    /// Publishes the node key when the store's copy is missing or differs (the watch having
    /// reached `revision`).
    async fn publish(
        &mut self,
        client: &mut etcd_client::Client,
        revision: i64,
    ) -> Result<(), source::Error> {
        match self.publisher.as_deref_mut() {
            Some(p) if p.needed(&self.state, revision) => p.publish(client).await,
            _ => Ok(()),
        }
    }

    /// Makes the WireGuard peers match the records (after the first list only: before it,
    /// an empty view would remove every peer).
    fn reconcile_wg(&mut self) {
        if let Some(wg) = self.wg.as_deref_mut() {
            wg.listed = true;
            let peers = wg.reconcile(&self.state, &self.local, &self.metrics);
            if let Some(prober) = &self.prober {
                prober.set_targets(crate::reach::targets(
                    &self.state,
                    &self.local.cluster,
                    peers.values(),
                ));
            }
        }
    }

    /// Takes the prober's new judgement: the backends on nodes that stopped (or started
    /// again) answering change tier at once.
    fn reachability(&mut self, unreachable: crate::reach::Unreachable) -> Result<(), Error> {
        if let Some(p) = self.publisher.as_deref_mut() {
            p.set_reach(&unreachable.record());
        }
        if !unreachable.differs_in_judgement(&self.state.unreachable) {
            self.state.unreachable = unreachable;
            return Ok(());
        }
        for c in unreachable
            .clusters
            .symmetric_difference(&self.state.unreachable.clusters)
        {
            let now = unreachable.clusters.contains(c);
            tracing::info!(
                remote = %c,
                unreachable = now,
                "remote {}",
                if now {
                    "answers no probe on any node: its backends are now a last resort"
                } else {
                    "answers probes again"
                }
            );
        }
        self.state.unreachable = unreachable;
        if self.programmed() {
            let touched = Touched {
                all_services: true,
                ..Touched::default()
            };
            self.reconcile(&touched, Instant::now())?;
        }
        Ok(())
    }

    /// Reports remotes over the limits and refused remote node addresses when they change; a
    /// remote crossing a limit changes what is programmed of it everywhere (returned).
    fn guard_remotes(&mut self, touched: &Touched) -> Touched {
        let mut more = Touched::default();
        let over: BTreeMap<String, Over> = desired::over_limits(&self.state, &self.local)
            .into_iter()
            .map(|(c, o)| (c.to_owned(), o))
            .collect();
        if over != self.over {
            let clusters: BTreeSet<&String> = over.keys().chain(self.over.keys()).collect();
            for c in clusters {
                let now = over.get(c).copied().unwrap_or_default();
                let counts = self.state.clusters.get(c);
                let nodes = counts.map_or(0, |c| c.nodes.len());
                let pods = counts.map_or(0, |c| c.ipcache.len());
                let limits = self.local.limits;
                if now == Over::default() {
                    tracing::info!(remote = %c, nodes, pods, "remote within the limits again: programmed");
                } else {
                    tracing::warn!(
                        remote = %c,
                        nodes,
                        node_limit = limits.nodes,
                        pods,
                        pod_limit = limits.pods,
                        "remote over the limits: its {} left out",
                        match (now.nodes, now.pods) {
                            (true, true) => "nodes and pod addresses are",
                            (true, false) => "nodes are",
                            _ => "pod addresses are",
                        }
                    );
                }
                for (what, on) in [("nodes", now.nodes), ("pods", now.pods)] {
                    self.metrics
                        .remote_over_limit
                        .get_or_create(&OverLabel {
                            cluster: c.clone(),
                            what: what.to_owned(),
                        })
                        .set(i64::from(on));
                }
            }
            self.over = over;
            more = Touched::everything();
        }
        if touched.peers || touched.all_ips {
            let refused = desired::refused_node_ips(&self.state, &self.local);
            if refused != self.refused {
                for (cluster, node, ip, why) in &refused {
                    if !self
                        .refused
                        .contains(&(cluster.clone(), node.clone(), *ip, why.clone()))
                    {
                        tracing::warn!(remote = %cluster, node = %node, address = %ip, "remote node address refused: {why}");
                    }
                }
                self.metrics
                    .node_addresses_refused
                    .set(refused.len() as i64);
                self.refused = refused;
            }
        }
        more
    }

    /// Remotes stale now.
    fn stale_now(&self) -> BTreeSet<String> {
        let now = now_ms();
        self.state
            .remotes
            .keys()
            .filter(|c| stale(&self.state, &self.local, c, now))
            .cloned()
            .collect()
    }

    /// Writes what `touched` changed. A failed map write (a full map, say) is not fatal: the
    /// rest of the pass is written, the failure is logged and counted, and the next tick
    /// tries what failed again.
    fn reconcile(&mut self, touched: &Touched, started: Instant) -> Result<u64, Error> {
        let imports = self.state.refresh_clusterset(&self.local.cluster);
        if let Some(zone) = &self.dns {
            if touched.all_services {
                zone.replace(&self.state);
            } else {
                let imported = &self.state.clusterset.imports;
                let names = touched
                    .services
                    .iter()
                    .chain(&imports)
                    .filter(|n| imported.contains_key(*n) || imports.contains(*n));
                zone.update(&self.state, names);
            }
        }
        let widened;
        let touched = if imports.is_empty() {
            touched
        } else {
            let mut t = touched.clone();
            t.services.extend(imports);
            widened = t;
            &widened
        };
        let writes = match self.reconciler.reconcile(
            &self.state,
            &self.local,
            now_ms(),
            touched,
            &mut *self.kernel,
        ) {
            Ok(w) => w,
            Err(Failed { writes, first }) => {
                tracing::error!(
                    failed = writes.failed,
                    written = writes.total(),
                    "writing the maps: {first}; the rest is written, the failed ones are tried again at the next tick"
                );
                self.metrics.map_errors.inc_by(writes.failed);
                self.retry = true;
                writes
            }
        };
        self.metrics.writes.inc_by(writes.total());
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.tables(self.reconciler.applied());
        let skipped = self.state.skipped;
        for (reason, n) in [("ipv6", skipped.ipv6), ("undecodable", skipped.undecodable)] {
            self.metrics
                .skipped
                .get_or_create(&Reason {
                    reason: reason.to_owned(),
                })
                .set(n as i64);
        }
        if writes.total() > 0 {
            tracing::debug!(?writes, "maps updated");
        }
        Ok(writes.total())
    }

    /// Once a second: pod interfaces, remote staleness, counters, and a retry of failed writes.
    fn tick(&mut self) -> Result<(), Error> {
        self.scan_interfaces()?;
        if std::mem::take(&mut self.retry) && self.programmed() {
            let pending = self.reconciler.take_pending();
            self.reconcile(&pending, Instant::now())?;
        }
        let stale = self.stale_now();
        if stale != self.stale {
            for c in stale.symmetric_difference(&self.stale) {
                let now_stale = stale.contains(c);
                tracing::info!(
                    remote = %c,
                    stale = now_stale,
                    "remote {}",
                    if now_stale {
                        "stale: its backends are now a last resort"
                    } else {
                        "fresh again"
                    }
                );
            }
            self.stale = stale;
            if self.programmed() {
                let touched = Touched {
                    all_services: true,
                    ..Touched::default()
                };
                self.reconcile(&touched, Instant::now())?;
            }
        }
        for c in self.state.remotes.keys() {
            self.metrics
                .remote_stale
                .get_or_create(&ClusterLabel { cluster: c.clone() })
                .set(i64::from(self.stale.contains(c)));
        }
        if let Ok(c) = self.kernel.counters() {
            self.metrics.counters(c);
        }
        if let Some(wg) = self.wg.as_deref_mut() {
            wg.tick(&self.state, &self.local, &self.metrics, now_ms());
        }
        self.report_health();
        Ok(())
    }

    /// Whether the maps have been programmed from the store.
    fn programmed(&self) -> bool {
        self.health.borrow().programmed
    }

    /// Sets `/healthz` (and the degraded gauge) from what is wrong now, logging changes.
    fn report_health(&mut self) {
        let mut degraded = BTreeMap::new();
        if !self.unenforced.is_empty() {
            let examples: Vec<String> = self
                .unenforced
                .iter()
                .take(3)
                .map(|(ip, why)| format!("{ip} ({why})"))
                .collect();
            degraded.insert(
                "policy",
                format!(
                    "{} pod address(es) of this node have no interface enforcing policy: {}{}",
                    self.unenforced.len(),
                    examples.join("; "),
                    if self.unenforced.len() > 3 {
                        "; …"
                    } else {
                        ""
                    }
                ),
            );
        }
        if !self.behind.is_empty() {
            let (interface, front) = self.behind.iter().next().expect("not empty");
            degraded.insert(
                "policy-order",
                format!(
                    "on {} interface(s) another tc filter runs before the policy filter (e.g. {interface}: {front})",
                    self.behind.len()
                ),
            );
        }
        if let Some(wg) = self.wg.as_deref() {
            for (part, problem) in &wg.problems {
                degraded.insert(*part, problem.clone());
            }
        }
        if self.health.borrow().degraded == degraded {
            return;
        }
        for (component, why) in &degraded {
            if self.health.borrow().degraded.get(component) != Some(why) {
                tracing::warn!(component, "degraded: {why}");
            }
        }
        for component in self.health.borrow().degraded.keys() {
            if !degraded.contains_key(component) {
                tracing::info!(component, "no longer degraded");
            }
        }
        self.metrics.degraded.set(i64::from(!degraded.is_empty()));
        self.health.send_modify(|h| h.degraded = degraded);
    }
}

/// Responses one reconcile takes at most (a bound on how long the maps wait during a burst).
const ARRIVED_AT_ONCE: usize = 64;

/// Appends the changes of responses that have already arrived on either watch to `changes`,
/// without waiting for more; returns the error of a watch that ended meanwhile.
async fn take_arrived(
    mesh: &mut Watch,
    status: &mut Watch,
    changes: &mut Vec<source::Change>,
) -> Option<source::Error> {
    for _ in 1..ARRIVED_AT_ONCE {
        let next = tokio::select! {
            biased;
            c = mesh.next() => c,
            c = status.next() => c,
            () = std::future::ready(()) => return None,
        };
        match next {
            Ok(c) => changes.extend(c),
            Err(e) => return Some(e),
        }
    }
    None
}

enum SessionError {
    Fatal(Error),
    Source(source::Error),
}

impl From<source::Error> for SessionError {
    fn from(e: source::Error) -> Self {
        SessionError::Source(e)
    }
}

impl From<Error> for SessionError {
    fn from(e: Error) -> Self {
        SessionError::Fatal(e)
    }
}

impl From<datapath::Error> for SessionError {
    fn from(e: datapath::Error) -> Self {
        SessionError::Fatal(e.into())
    }
}

const CGROUP_RECORD: &str = "cgroup";

/// Refuses to adopt links attached to another cgroup than the one configured.
fn check_cgroup_record(config: &Config, pins: &Pins) -> Result<(), Error> {
    let record = config.state_dir.join(CGROUP_RECORD);
    let Ok(recorded) = std::fs::read_to_string(&record) else {
        return Ok(());
    };
    let wanted = config.cgroup_root.display().to_string();
    if pins.link(datapath::CGROUP_PROGRAMS[0]).exists() && recorded.trim() != wanted {
        return Err(Error::CgroupChanged {
            bpffs: pins.root().display().to_string(),
            recorded: recorded.trim().to_owned(),
            wanted,
        });
    }
    Ok(())
}

fn record_cgroup(config: &Config) -> Result<(), Error> {
    let err = |source| Error::StateDir {
        path: config.state_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&config.state_dir).map_err(err)?;
    std::fs::write(
        config.state_dir.join(CGROUP_RECORD),
        format!("{}\n", config.cgroup_root.display()),
    )
    .map_err(err)
}
