//! The remote mirror: while this member leads, every connected remote cluster's records
//! (`mesh/v1/<c>/` on that cluster) are mirrored under the same keys here, so agents only ever
//! read their own cluster. See ARCHITECTURE.md, "Publisher and mirror".
//!
//! [`Mirror`] is a leader-gated controller. Every second it reads the connections
//! (`mesh/config/remotes/<c>`, written by `meshctl connect`) and the statuses
//! (`mesh/status/remotes/<c>`), and keeps one task per connection running ([`session`] does
//! the mirroring). A connection whose configuration changed is restarted; one that was
//! removed (`meshctl disconnect`) is stopped, its status says since when, and its records and
//! status are deleted once `--disconnect-grace` has passed (the time is in the replicated
//! status, so a new leader continues the countdown instead of restarting it).
//!
//! Nothing a remote sends is trusted: records are validated ([`validate`]) before they are
//! written, and each remote has a key and byte budget. Mirroring never blocks local writes: it
//! is a client of this member like any other, writing in batches.
//!
//! # Layout
//! - [`session`]: one remote's list, watch and guarded writes.
//! - [`validate`]: what a remote may make this cluster store.
//! - [`connect`]: resolving and reaching a remote's API server over mutual TLS.

mod metrics;
pub mod session;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use futures::future::BoxFuture;
use mesh_api::cidr::Cidr;
use mesh_api::keys::{CONFIG_REMOTES, STATUS_REMOTES, cluster_prefix};
use mesh_api::remote::{RemoteConfigRecord, RemoteStatusRecord};
use mesh_api::{Key, SCHEMA};
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::metrics::{Live, LiveCollector};
pub use self::metrics::{MirrorMetrics, RemoteState};
use self::session::{Session, SessionError, now_ms};
use self::validate::Validator;
use crate::controller::{Context, Controller, LOCAL_TIMEOUT};
use mesh_client::remote::{self as connect, Resolver};

/// How often the connections are read.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// First and longest pause before reconnecting to a remote that failed.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(15));
/// Pause before trying again a remote that is over budget or misconfigured.
const LONG_PAUSE: Duration = Duration::from_secs(30);
/// Certificates closer than this to expiry are warned about.
pub const CERT_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// What the mirror needs besides its context: validated from the command line once
/// (`crate::config`), used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Grace, budgets.
    pub settings: Settings,
    /// This cluster's name, when known: a connection to it is refused, and its own records
    /// are never deleted.
    pub cluster: Option<String>,
    /// This cluster's id, when known: a remote with the same id is refused (its identities
    /// would be ours, its rules our rules).
    pub cluster_id: Option<u16>,
}

/// How long a disconnected remote's records stay, and what a remote may cost this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `--disconnect-grace`.
    pub disconnect_grace: Duration,
    /// `--remote-max-keys`.
    pub max_keys: u64,
    /// `--remote-max-mib`, in bytes.
    pub max_bytes: u64,
    /// `--remote-write-mib-per-minute`, in bytes.
    pub write_bytes_per_minute: u64,
}

/// The mirroring controller.
#[derive(Debug)]
pub struct Mirror {
    config: Config,
    metrics: Arc<MirrorMetrics>,
    live: Live,
}

impl Mirror {
    /// A mirror with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            metrics: Arc::default(),
            live: Arc::default(),
        }
    }

    /// Registers its metrics.
    pub fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
        registry.register_collector(Box::new(LiveCollector {
            live: self.live.clone(),
        }));
    }
}

impl Controller for Mirror {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn run<'a>(&'a self, ctx: &'a Context, term: CancellationToken) -> BoxFuture<'a, ()> {
        Box::pin(self.supervise(ctx, term))
    }
}

/// Aborts a task when dropped, also when the future holding it is aborted.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a stopped remote task may take to return before it is aborted.
const TASK_STOP: Duration = Duration::from_secs(10);

/// Stops a remote task: cancels it, waits for it a while, then aborts it.
async fn stop_task(r: Running) {
    r.stop.cancel();
    let mut handle = r.handle;
    if tokio::time::timeout(TASK_STOP, &mut handle).await.is_err() {
        handle.abort();
    }
}

/// Signals `changed` whenever a key under `mesh/config/remotes/` changes, until aborted.
async fn watch_connections(ctx: Context, changed: Arc<tokio::sync::Notify>) {
    loop {
        if let Ok(mut client) = ctx.local.connect_for_streams().await
            && let Ok(mut stream) = client
                .watch(
                    CONFIG_REMOTES,
                    Some(etcd_client::WatchOptions::new().with_prefix()),
                )
                .await
        {
            while let Ok(Some(resp)) = stream.message().await {
                if !resp.events().is_empty() {
                    changed.notify_one();
                }
            }
        }
        tokio::time::sleep(RECONCILE_EVERY).await;
    }
}

/// A running remote task.
struct Running {
    /// The configuration it runs with, as stored.
    value: Vec<u8>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Mirror {
    async fn supervise(&self, ctx: &Context, term: CancellationToken) {
        let resolver = Resolver::system();
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        let mut client: Option<Client> = None;
        // A connection made or removed is acted on at once, not at the next tick.
        let changed = Arc::new(tokio::sync::Notify::new());
        let _watcher = AbortOnDrop(tokio::spawn(watch_connections(
            ctx.clone(),
            changed.clone(),
        )));
        loop {
            if client.is_none() {
                match ctx.local.connect().await {
                    Ok(c) => client = Some(c),
                    Err(e) => tracing::debug!(error = %e, "mirror cannot reach its member yet"),
                }
            }
            if let Some(c) = client.as_mut()
                && let Err(e) = self.reconcile(c, ctx, &resolver, &mut running, &term).await
            {
                tracing::warn!(error = %e, "mirror: reading the connections failed");
                client = None;
            }
            tokio::select! {
                () = term.cancelled() => break,
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
                () = changed.notified() => {}
            }
        }
        for r in running.values() {
            r.stop.cancel();
        }
        for (_, r) in running {
            stop_task(r).await;
        }
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    async fn reconcile(
        &self,
        client: &mut Client,
        ctx: &Context,
        resolver: &Resolver,
        running: &mut BTreeMap<String, Running>,
        term: &CancellationToken,
    ) -> Result<(), etcd_client::Error> {
        let configs: BTreeMap<String, Vec<u8>> = client
            .get(CONFIG_REMOTES, Some(GetOptions::new().with_prefix()))
            .await?
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                match key.parse::<Key>() {
                    Ok(Key::RemoteConfig { cluster }) => Some((cluster, kv.value().to_vec())),
                    _ => {
                        tracing::warn!(key = %key, "ignoring a key under mesh/config/remotes/ that names no cluster");
                        None
                    }
                }
            })
            .collect();

        // Stop tasks whose connection went or changed.
        let stale: Vec<String> = running
            .iter()
            .filter(|(c, r)| configs.get(*c) != Some(&r.value) || r.handle.is_finished())
            .map(|(c, _)| c.clone())
            .collect();
        for c in stale {
            let r = running.remove(&c).expect("listed above");
            stop_task(r).await;
            self.live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&c);
            if configs.contains_key(&c) {
                tracing::info!(cluster = %c, "connection changed: restarting its mirror");
            } else {
                tracing::info!(cluster = %c, "connection removed: mirror stopped");
            }
        }
        // Start tasks for new connections.
        for (c, value) in &configs {
            if running.contains_key(c) {
                continue;
            }
            let state = Arc::new(RemoteState::default());
            self.metrics.start(c);
            self.live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(c.clone(), state.clone());
            let stop = term.child_token();
            let task = RemoteTask {
                cluster: c.clone(),
                value: value.clone(),
                own: self.config.cluster.clone(),
                own_id: self.config.cluster_id,
                settings: self.config.settings,
                state,
                metrics: self.metrics.clone(),
                ctx: ctx.clone(),
                resolver: resolver.clone(),
            };
            let handle = tokio::spawn(task.run(stop.clone()));
            running.insert(
                c.clone(),
                Running {
                    value: value.clone(),
                    stop,
                    handle,
                },
            );
        }
        // Connections removed: count the grace down, then delete.
        let statuses = client
            .get(STATUS_REMOTES, Some(GetOptions::new().with_prefix()))
            .await?;
        for kv in statuses.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Ok(Key::RemoteStatus { cluster }) = key.parse::<Key>() else {
                continue;
            };
            if configs.contains_key(&cluster) || running.contains_key(&cluster) {
                continue;
            }
            if self.config.cluster.as_deref() == Some(cluster.as_str()) {
                continue;
            }
            let mut status = RemoteStatusRecord::decode_checked(kv.value()).unwrap_or_default();
            let now = now_ms();
            // Both writes below hold only if nobody reconnected meanwhile.
            let config_key = Key::RemoteConfig {
                cluster: cluster.clone(),
            }
            .to_string();
            let guard = [
                Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                Compare::version(config_key, CompareOp::Equal, 0),
            ];
            if status.removed_at_ms == 0 {
                status.schema = SCHEMA;
                status.removed_at_ms = now;
                status.connected = false;
                status.error = "disconnected: the connection was removed".to_owned();
                let txn = Txn::new().when(guard).and_then([TxnOp::put(
                    key.clone(),
                    status.encode_to_vec(),
                    None,
                )]);
                tokio::time::timeout(LOCAL_TIMEOUT, client.txn(txn))
                    .await
                    .map_err(|_| etcd_client::Error::InvalidArgs("timed out".to_owned()))??;
                tracing::info!(
                    cluster = %cluster,
                    grace = ?self.config.settings.disconnect_grace,
                    "connection removed: its records go after the disconnect grace"
                );
            } else if Duration::from_millis((now - status.removed_at_ms).max(0) as u64)
                >= self.config.settings.disconnect_grace
            {
                let prefix = cluster_prefix(&cluster);
                let txn = Txn::new().when(guard).and_then([
                    TxnOp::delete(
                        prefix.clone(),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ),
                    TxnOp::delete(key.clone(), None),
                ]);
                let resp = client.txn(txn).await?;
                if resp.succeeded() {
                    tracing::info!(cluster = %cluster, "disconnect grace over: deleted the remote's records and status");
                }
            }
        }
        Ok(())
    }
}

/// One remote's mirroring, for as long as its connection is unchanged.
struct RemoteTask {
    cluster: String,
    value: Vec<u8>,
    own: Option<String>,
    own_id: Option<u16>,
    settings: Settings,
    state: Arc<RemoteState>,
    metrics: Arc<MirrorMetrics>,
    ctx: Context,
    resolver: Resolver,
}

/// Why a connection cannot be used as configured.
fn check_config(
    cluster: &str,
    own: Option<&str>,
    own_id: Option<u16>,
    value: &[u8],
) -> Result<Prepared, String> {
    let config = RemoteConfigRecord::decode_checked(value).map_err(|e| e.to_string())?;
    if config.cluster != cluster {
        return Err(format!(
            "the connection record names cluster {:?}, not {cluster:?}",
            config.cluster
        ));
    }
    if own == Some(cluster) {
        return Err("this is this cluster itself; it is never mirrored".to_owned());
    }
    if config.id == 0 || config.id > u32::from(u16::MAX) {
        return Err(format!("cluster id {} is not 1..=65535", config.id));
    }
    if own_id.is_some_and(|id| u32::from(id) == config.id) {
        return Err(format!(
            "cluster id {} is this cluster's own: its identities would pass as ours",
            config.id
        ));
    }
    let pod_cidrs = config
        .pod_cidrs
        .iter()
        .map(|c| c.parse::<Cidr>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    if config.endpoints.is_empty() {
        return Err("no endpoints".to_owned());
    }
    for e in &config.endpoints {
        mesh_api::endpoint::host_port(e).map_err(|e| e.to_string())?;
    }
    let tls = certs::tls::remote_client(&certs::tls::RemoteMaterial {
        cluster,
        ca_pem: &config.ca_pem,
        cert_pem: &config.cert_pem,
        key_pem: &config.key_pem,
    })
    .map_err(|e| e.to_string())?;
    let not_after = certs::pki::leaf_info(&config.cert_pem)
        .map(|(_, t)| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .unwrap_or(0);
    Ok(Prepared {
        validator: Validator::new(cluster, config.id, pod_cidrs),
        tls: Arc::new(tls),
        endpoints: config.endpoints,
        cert_not_after_ms: not_after,
    })
}

/// A connection checked and ready to dial.
struct Prepared {
    validator: Validator,
    tls: Arc<rustls::ClientConfig>,
    endpoints: Vec<String>,
    cert_not_after_ms: i64,
}

impl RemoteTask {
    async fn run(self, stop: CancellationToken) {
        let cluster = self.cluster.as_str();
        let prepared = match check_config(cluster, self.own.as_deref(), self.own_id, &self.value) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(cluster, error = %e, "cannot mirror: bad connection record (fix it with meshctl connect)");
                // Shown in the status when one exists to write to; the task then waits for
                // the record to change (which restarts it).
                self.note_bad_config(&e, &stop).await;
                stop.cancelled().await;
                return;
            }
        };
        self.state
            .cert_not_after_ms
            .store(prepared.cert_not_after_ms, Relaxed);
        let left = prepared.cert_not_after_ms - now_ms();
        if left < CERT_WARNING.as_millis() as i64 {
            tracing::warn!(
                cluster,
                days = left / 86_400_000,
                "the remote client certificate expires soon: renew it with `meshctl connect --renew`"
            );
        }
        let mut backoff = BACKOFF.0;
        while !stop.is_cancelled() {
            let pause = match self.session(&prepared, &stop).await {
                Ok(()) | Err(SessionError::Stopped) => return,
                Err(SessionError::Fenced) => {
                    tracing::info!(cluster, "another mirror wrote the status; reloading");
                    BACKOFF.0
                }
                Err(e @ SessionError::OverBudget { .. }) => {
                    tracing::error!(cluster, error = %e, "not mirrored");
                    LONG_PAUSE
                }
                Err(SessionError::OverRate { wait, .. }) => {
                    // Logged by the session; back once the allowance has refilled.
                    wait.clamp(BACKOFF.1, LONG_PAUSE)
                }
                Err(e) => {
                    tracing::warn!(cluster, error = %e, retry_in = ?backoff, "mirror interrupted");
                    let b = backoff;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    b
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One session: load the local state, connect, mirror until something breaks.
    async fn session(
        &self,
        prepared: &Prepared,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let local = self
            .ctx
            .local
            .connect_for_streams()
            .await
            .map_err(|e| SessionError::Local(e.to_string()))?;
        let mut session = Session::load(
            &self.cluster,
            &prepared.validator,
            self.settings,
            &self.state,
            &self.metrics,
            local,
        )
        .await?;
        let connected = tokio::select! {
            () = stop.cancelled() => return Err(SessionError::Stopped),
            c = connect::connect(&prepared.endpoints, prepared.tls.clone(), &self.resolver) => c,
        };
        let result = match connected {
            Ok((mut remote, endpoint)) => {
                session.connected_to(&endpoint, prepared.cert_not_after_ms);
                // A list does not look at `stop` (it may read a large remote): race it.
                tokio::select! {
                    () = stop.cancelled() => Err(SessionError::Stopped),
                    r = session.mirror(&mut remote, stop) => r,
                }
            }
            Err(e) => Err(SessionError::Remote(e.to_string())),
        };
        match &result {
            Err(SessionError::Stopped | SessionError::Fenced | SessionError::Local(_)) | Ok(()) => {
            }
            Err(e) => session.disconnected(e).await,
        }
        result
    }

    async fn note_bad_config(&self, error: &str, stop: &CancellationToken) {
        let Ok(mut client) = self.ctx.local.connect().await else {
            return;
        };
        let key = Key::RemoteStatus {
            cluster: self.cluster.clone(),
        }
        .to_string();
        if self.own.as_deref() == Some(self.cluster.as_str()) || stop.is_cancelled() {
            return;
        }
        let Ok(resp) = client.get(key.as_str(), None).await else {
            return;
        };
        let (mut status, rev) = match resp.kvs().first() {
            Some(kv) => (
                RemoteStatusRecord::decode_checked(kv.value()).unwrap_or_default(),
                kv.mod_revision(),
            ),
            None => (RemoteStatusRecord::default(), 0),
        };
        let message = format!("bad connection record: {error}");
        if status.error == message && !status.connected {
            return;
        }
        status.schema = SCHEMA;
        status.connected = false;
        status.error = message;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, status.encode_to_vec(), None)]);
        let _ = client.txn(txn).await;
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::remote::RemoteConfigRecord;
    use prost::Message as _;

    use super::check_config;

    fn record(cluster: &str, id: u32) -> Vec<u8> {
        RemoteConfigRecord {
            schema: mesh_api::SCHEMA,
            cluster: cluster.into(),
            id,
            endpoints: vec!["https://127.0.0.1:2379".into()],
            pod_cidrs: vec!["10.2.0.0/16".into()],
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Finding 10 of the trust review: a remote with this cluster's id is refused, whatever
    /// its name.
    #[test]
    fn a_remote_with_our_cluster_id_or_name_is_refused() {
        let err = |r: Result<_, String>| r.err().expect("refused");
        assert!(
            err(check_config(
                "infra",
                Some("apps"),
                Some(1),
                &record("infra", 1)
            ))
            .contains("cluster id 1 is this cluster's own")
        );
        assert!(
            err(check_config(
                "apps",
                Some("apps"),
                Some(1),
                &record("apps", 2)
            ))
            .contains("this cluster itself")
        );
        // Another id gets past these checks (to the certificates, absent here).
        let other = err(check_config(
            "infra",
            Some("apps"),
            Some(1),
            &record("infra", 2),
        ));
        assert!(!other.contains("cluster id"), "{other}");
    }

    /// Every counter of a remote exists from its start, at 0, so its family is scraped (and
    /// the metric list the dashboard is checked against has it).
    #[test]
    fn a_started_remote_has_every_counter_at_zero() {
        let metrics = super::MirrorMetrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        metrics.start("infra");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for family in [
            "remote_writes",
            "remote_resyncs",
            "remote_resync_writes",
            "remote_paused",
        ] {
            assert!(
                text.contains(&format!("{family}_total{{cluster=\"infra\"}} 0")),
                "{family}: {text}"
            );
        }
        for reason in super::validate::Rejection::REASONS {
            assert!(
                text.contains(&format!(
                    "remote_rejected_records_total{{cluster=\"infra\",reason=\"{reason}\"}} 0"
                )),
                "{reason}: {text}"
            );
        }
    }
}
