//! Mirroring one remote cluster: list, then watch, `mesh/v1/<c>/` on the remote, and apply
//! what changed to the same keys here.
//!
//! # Exactly once, across crashes and leader changes
//! Every local write is one Txn that also rewrites `mesh/status/remotes/<c>`, whose record
//! holds the remote position the data reached, and that is guarded by a compare on the status
//! key's mod revision as this mirror last wrote or read it. So the position can never
//! disagree with the data, and a second mirror (a deposed leader's, a restarted one) that
//! races this one fails its compare, reloads and resumes from what the winner wrote: no change
//! is applied twice or skipped.
//!
//! A position is `(revision, partial)`: every remote event up to `revision`, plus the first
//! `partial` events of `revision + 1` (one remote revision can hold more changes than one
//! local Txn may carry, so it is applied in parts). A restart watches from `revision + 1` and
//! skips the `partial` events it already applied.
//!
//! # Lists
//! With no position yet, after an interrupted list (`list_revision` set), when the remote
//! compacted past the position, or when the remote store is another one (a rebuilt remote:
//! another etcd cluster id in its responses, its revisions started over), the remote prefix is listed at one revision and the local
//! prefix is made equal to it by difference (mark and sweep): changed and new keys are put,
//! keys gone from the remote are deleted, and the remote's `synced/` markers come last, so an
//! agent never takes a partial list for a complete one. Nothing is flushed and refilled.
//!
//! # Freshness
//! The mirror asks the remote for watch progress every [`PROGRESS_EVERY`]; an answer (or an
//! event) means it is current. The position also moves with progress answers, which relies on
//! the remote answering only once every event up to the answer's revision was sent, as
//! raftmesh's API server does (etcd 3.4 answers at once, ahead of a watcher still catching
//! up, so an etcd remote is not supported). After [`SILENCE`] without any answer the remote counts as
//! disconnected. While connected, the mirror holds `mesh/status/current/<c>` bound to a lease
//! of `CURRENT_TTL_SECONDS` that it renews at most every [`RENEW_EVERY`] when it is current, so
//! readers see the freshness to the second from the lease's remaining TTL: renewals are the
//! leader's memory, not Raft writes. The status record is written with every batch and on
//! every change of state (a disconnect records when the remote was last current), never for
//! the freshness alone. A new session (another leader, a restart) takes the last-current time
//! from a lease still running, so a disconnect it records right away is not dated back to the
//! last batch.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use mesh_api::Kind;
use mesh_api::SCHEMA;
use mesh_api::keys::{Key, prefix_end};
use mesh_api::remote::{CURRENT_TTL_SECONDS, CURRENT_VALUE, RemoteStatusRecord, lease_freshness};
use prost::Message as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::validate::{Rejection, Validator};
use super::{MirrorMetrics, RemoteState};

mod batch;
mod read;

pub use self::batch::{Batch, Position, Resume};
pub use self::read::{ReadError, read_all};

/// How often the mirror asks the remote for watch progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long the remote may stay silent (no event, no progress answer) before it counts as
/// disconnected.
pub const SILENCE: Duration = Duration::from_secs(3);
/// A status with only a newer position (or rejected count) is written at most this often.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// The lease of `mesh/status/current/<c>` is renewed at most this often.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// Most operations of one local Txn besides the status put: etcd's `--max-txn-ops` (128)
/// minus one.
pub const MAX_OPS: usize = 127;
/// Most key and value bytes of one local Txn, well under the 1.5 MiB request limit.
pub const MAX_BYTES: usize = 1 << 20;
/// Keys read per Range when listing a prefix.
const PAGE: i64 = 500;
/// Largest response accepted from a Range or a watch (a page of large values).
const MAX_MESSAGE: usize = 256 << 20;
/// A remote that needs another re-list sooner than this after the last one is backed off.
const RELIST_AFTER: Duration = Duration::from_secs(30);
/// Bound on one unary request (the clients carry no deadline, since they also watch).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The remote failed or went silent; it is disconnected until a new session connects.
    #[error("remote: {0}")]
    Remote(String),
    /// The remote no longer has the history after the mirrored revision (compacted, or
    /// rebuilt): the next step is a list.
    #[error("remote: compacted past the mirrored revision: {0}")]
    Compacted(String),
    /// This cluster's own store failed.
    #[error("local store: {0}")]
    Local(String),
    /// Another writer changed the status under this mirror (a new leader's mirror): reload.
    #[error("the status changed under this mirror (another mirror is writing); reloading")]
    Fenced,
    /// The remote holds more than this cluster mirrors for one remote.
    #[error(
        "over budget: the remote exports {keys} keys and {bytes} bytes (limits {max_keys} keys, {max_bytes} bytes); not mirrored"
    )]
    OverBudget {
        /// Keys it would take.
        keys: u64,
        /// Bytes it would take.
        bytes: u64,
        /// `--remote-max-keys`.
        max_keys: u64,
        /// `--remote-max-mib` in bytes.
        max_bytes: u64,
    },
    /// The remote's changes write faster than this cluster allows one remote: paused until
    /// the allowance has refilled, then resumed where it was.
    #[error(
        "over budget: the remote's changes write more than {per_minute_mib} MiB a minute here; paused for {wait:?} (its position is kept)"
    )]
    OverRate {
        /// `--remote-write-mib-per-minute`.
        per_minute_mib: u64,
        /// Until the next batch fits.
        wait: Duration,
    },
    /// The term ended.
    #[error("stopped")]
    Stopped,
}

fn remote_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Remote(e.to_string())
}

fn local_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Local(e.to_string())
}

/// Seconds since the mirror was last current, from the lease of `key` (`None`: no key, no
/// lease, or the lease has run out).
async fn lease_age(local: &mut Client, key: &str) -> Result<Option<f64>, SessionError> {
    let resp = bounded(local.get(key, None)).await.map_err(local_err)?;
    let Some(lease) = resp.kvs().first().map(|kv| kv.lease()).filter(|l| *l != 0) else {
        return Ok(None);
    };
    // A lease that ran out between the two reads is no error: there is no age to take.
    Ok(bounded(local.lease_time_to_live(lease, None))
        .await
        .ok()
        .and_then(|ttl| lease_freshness(ttl.granted_ttl(), ttl.ttl())))
}

/// Runs `call` with a deadline.
async fn bounded<T, E: std::fmt::Display>(
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The local side of one remote's mirror: the status record and what is mirrored.
pub struct Session<'a> {
    /// The remote's name.
    cluster: &'a str,
    validator: &'a Validator,
    settings: Settings,
    state: &'a RemoteState,
    metrics: &'a MirrorMetrics,
    local: Client,
    status_key: String,
    /// The status as it should be written next.
    status: RemoteStatusRecord,
    /// The status as last written or read (what a heartbeat compares against).
    written: RemoteStatusRecord,
    /// When `written` was written.
    written_at: Instant,
    /// The status key's mod revision as last written or read: every Txn compares it.
    status_rev: i64,
    /// Mirrored keys and their key + value bytes.
    index: BTreeMap<Vec<u8>, u64>,
    /// The next position to write.
    pos: Position,
    /// When a rejection was last logged (a hostile remote must not flood the log).
    logged_rejection: Option<Instant>,
    /// `mesh/status/current/<c>`.
    current_key: String,
    /// Its lease while connected.
    current: Option<Current>,
}

/// The lease behind `mesh/status/current/<c>` and its keep-alive stream.
struct Current {
    lease: i64,
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
    renewed: Instant,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cluster", &self.cluster)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl<'a> Session<'a> {
    /// Loads the status and the index of what is mirrored from the local store.
    pub async fn load(
        cluster: &'a str,
        validator: &'a Validator,
        settings: Settings,
        state: &'a RemoteState,
        metrics: &'a MirrorMetrics,
        mut local: Client,
    ) -> Result<Session<'a>, SessionError> {
        let status_key = Key::RemoteStatus {
            cluster: cluster.to_owned(),
        }
        .to_string();
        let resp = bounded(local.get(status_key.as_str(), None))
            .await
            .map_err(local_err)?;
        let (written, status_rev) = match resp.kvs().first() {
            Some(kv) => (
                // An unreadable status (written by hand, a newer schema) starts over: a list
                // makes the data right whatever it holds.
                RemoteStatusRecord::decode_checked(kv.value()).unwrap_or_default(),
                kv.mod_revision(),
            ),
            None => (RemoteStatusRecord::default(), 0),
        };
        let (_, _, kvs) = read_all(&mut local, validator.prefix(), None, None)
            .await
            .map_err(local_err)?;
        let index: BTreeMap<Vec<u8>, u64> = kvs
            .into_iter()
            .map(|(k, v)| {
                let n = (k.len() + v.len()) as u64;
                (k, n)
            })
            .collect();
        let mut status = written.clone();
        status.schema = SCHEMA;
        // The connection exists again (a disconnect within the grace period was undone).
        status.removed_at_ms = 0;
        let current_key = Key::RemoteCurrent {
            cluster: cluster.to_owned(),
        }
        .to_string();
        // A lease still running (the previous session's, on this or a former leader) knows
        // when the remote was last current better than the record, which is not rewritten
        // for the freshness alone.
        if let Some(age) = lease_age(&mut local, &current_key).await? {
            status.current_at_ms = status.current_at_ms.max(now_ms() - (age * 1000.0) as i64);
        }
        let pos = Position {
            revision: status.remote_revision,
            partial: status.partial_events,
        };
        let mut session = Session {
            cluster,
            validator,
            settings,
            state,
            metrics,
            local,
            status_key,
            status,
            written,
            written_at: Instant::now(),
            status_rev,
            index,
            pos,
            logged_rejection: None,
            current_key,
            current: None,
        };
        session.count_index();
        state
            .current_at_ms
            .store(session.status.current_at_ms, Relaxed);
        Ok(session)
    }

    fn count_index(&mut self) {
        self.status.keys = self.index.len() as u64;
        self.status.bytes = self.index.values().sum();
        self.state.keys.store(self.status.keys, Relaxed);
        self.state.bytes.store(self.status.bytes, Relaxed);
    }

    /// Records that the remote cannot be reached (or mirrored) and why; writes it when it is
    /// news.
    pub async fn disconnected(&mut self, error: &SessionError) {
        self.state.connected.store(false, Relaxed);
        if let Some(current) = self.current.take() {
            // Not current any more: readers fall back to the record written below.
            let revoked = bounded(self.local.lease_revoke(current.lease)).await;
            if let Err(e) = revoked {
                tracing::debug!(cluster = self.cluster, error = %e, "current lease not revoked (it lapses)");
            }
        }
        // Only what was committed: the session may have stopped in the middle of a batch (its
        // position then runs ahead of the data) or of a list.
        let mut status = self.written.clone();
        status.schema = SCHEMA;
        status.connected = false;
        status.error = error.to_string();
        status.over_budget = matches!(
            error,
            SessionError::OverBudget { .. } | SessionError::OverRate { .. }
        );
        status.removed_at_ms = 0;
        status.current_at_ms = self.status.current_at_ms;
        status.endpoint = std::mem::take(&mut self.status.endpoint);
        status.cert_not_after_ms = self.status.cert_not_after_ms;
        status.rejected = self.status.rejected;
        self.pos = Position {
            revision: status.remote_revision,
            partial: status.partial_events,
        };
        self.status = status;
        if let Err(e) = self.write_status(false).await {
            tracing::debug!(cluster = self.cluster, error = %e, "status not written");
        }
    }

    /// Notes the certificate's expiry and the endpoint reached.
    pub fn connected_to(&mut self, endpoint: &str, cert_not_after_ms: i64) {
        self.status.endpoint = endpoint.to_owned();
        self.status.cert_not_after_ms = cert_not_after_ms;
    }

    /// Mirrors from `remote` until an error or the end of `term`: a list first if there is
    /// no position to resume from, then the watch, listing again whenever the remote
    /// compacted past the position.
    pub async fn mirror(
        &mut self,
        remote: &mut Client,
        term: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut resync = false;
        let mut listed: Option<Instant> = None;
        loop {
            if self.status.list_revision != 0 || self.pos.revision == 0 || resync {
                self.list(remote, resync).await?;
                listed = Some(Instant::now());
            }
            match self.watch(remote, term).await {
                Err(SessionError::Compacted(e))
                    if listed.is_some_and(|at| at.elapsed() < RELIST_AFTER) =>
                {
                    // Just listed, and compacted (or rebuilt) again: back off instead of
                    // reading the whole remote in a loop.
                    return Err(SessionError::Remote(format!(
                        "compacted again right after a re-list: {e}"
                    )));
                }
                Err(SessionError::Compacted(e)) => {
                    tracing::info!(cluster = self.cluster, reason = %e, "resyncing: listing the remote again");
                    resync = true;
                }
                other => return other,
            }
        }
    }

    /// Lists the remote prefix at one revision and makes the local prefix equal to it.
    async fn list(&mut self, remote: &mut Client, resync: bool) -> Result<(), SessionError> {
        let started = Instant::now();
        let budget = Some((self.settings.max_keys, self.settings.max_bytes));
        let (revision, cluster_id, kvs) = read_all(remote, self.validator.prefix(), None, budget)
            .await
            .map_err(|e| match e {
                ReadError::OverBudget { keys, bytes } => SessionError::OverBudget {
                    keys,
                    bytes,
                    max_keys: self.settings.max_keys,
                    max_bytes: self.settings.max_bytes,
                },
                e => remote_err(e),
            })?;
        self.mark_current();
        let mut wanted: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (k, v) in kvs {
            match self.validator.check(&k, &v) {
                Ok(()) => {
                    wanted.insert(k, v);
                }
                Err(r) => self.rejected(&r),
            }
        }
        let keys = wanted.len() as u64;
        let bytes: u64 = wanted.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        self.check_budget(keys, bytes)?;
        let (_, _, here) = read_all(&mut self.local, self.validator.prefix(), None, None)
            .await
            .map_err(local_err)?;
        // A list starts over wherever the position was: this store is the one from now on.
        self.status.remote_cluster_id = cluster_id;
        let here: BTreeMap<Vec<u8>, Vec<u8>> = here.into_iter().collect();

        // Records first, deletions next, markers last.
        let marker = |k: &[u8]| {
            std::str::from_utf8(k)
                .ok()
                .and_then(|k| k.parse::<Key>().ok())
                .is_some_and(|k| k.kind() == Some(Kind::Synced))
        };
        let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for (k, v) in wanted.iter().filter(|(k, _)| !marker(k)) {
            if here.get(k) != Some(v) {
                ops.push((k.clone(), Some(v.clone())));
            }
        }
        for k in here.keys().filter(|k| !wanted.contains_key(*k)) {
            ops.push((k.clone(), None));
        }
        for (k, v) in wanted.iter().filter(|(k, _)| marker(k)) {
            if here.get(k) != Some(v) {
                ops.push((k.clone(), Some(v.clone())));
            }
        }
        let writes = ops.len();
        self.status.list_revision = revision;
        let mut batch = Batch::default();
        let mut txns = 0;
        for (k, v) in ops {
            if batch.would_overflow(&k, v.as_deref()) {
                // Puts come before deletions, so the keys held on the way can exceed the
                // budget even though the listed state (checked above) does not.
                self.flush_unchecked(&mut batch).await?;
                txns += 1;
            }
            let index = &self.index;
            batch.set(&k, v, |k| index.contains_key(k));
        }
        // The last Txn (possibly with no data) moves the position to the listed revision.
        self.status.list_revision = 0;
        self.pos = Position {
            revision,
            partial: 0,
        };
        if resync {
            self.status.resyncs += 1;
            self.metrics.resyncs(self.cluster).inc();
            self.metrics
                .resync_writes(self.cluster)
                .inc_by(writes as u64);
        }
        self.commit_batch(&mut batch, false).await?;
        txns += 1;
        tracing::info!(
            cluster = self.cluster,
            revision,
            keys,
            writes,
            txns,
            resync,
            ms = started.elapsed().as_millis() as u64,
            "listed the remote"
        );
        Ok(())
    }

    fn check_budget(&self, keys: u64, bytes: u64) -> Result<(), SessionError> {
        if keys > self.settings.max_keys || bytes > self.settings.max_bytes {
            return Err(SessionError::OverBudget {
                keys,
                bytes,
                max_keys: self.settings.max_keys,
                max_bytes: self.settings.max_bytes,
            });
        }
        Ok(())
    }

    /// Watches the remote from the position until an error or the end of `term`.
    async fn watch(
        &mut self,
        remote: &mut Client,
        term: &CancellationToken,
    ) -> Result<(), SessionError> {
        let start = self.pos.revision + 1;
        let mut resume = Resume::at(self.pos);
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut stream = bounded(
            remote
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .watch(self.validator.prefix(), Some(options)),
        )
        .await
        .map_err(remote_err)?;
        let mut ask = tokio::time::interval(PROGRESS_EVERY);
        ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = Instant::now();
        let mut batch = Batch::default();
        loop {
            let message = tokio::select! {
                () = term.cancelled() => return Err(SessionError::Stopped),
                _ = ask.tick() => {
                    if last_answer.elapsed() > SILENCE {
                        return Err(SessionError::Remote(format!(
                            "no answer from the remote for {:?}", last_answer.elapsed()
                        )));
                    }
                    stream.request_progress().await.map_err(remote_err)?;
                    self.write_status(false).await?;
                    continue;
                }
                m = stream.message() => m,
            };
            let Some(resp) = message.map_err(remote_err)? else {
                return Err(SessionError::Remote(
                    "the remote ended the watch".to_owned(),
                ));
            };
            last_answer = Instant::now();
            self.same_remote(resp.header().map_or(0, |h| h.cluster_id()))?;
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Err(SessionError::Compacted(format!(
                        "compacted to {}, mirrored to {}",
                        resp.compact_revision(),
                        self.pos.revision
                    )));
                }
                return Err(SessionError::Remote(format!(
                    "the remote canceled the watch: {}",
                    resp.cancel_reason()
                )));
            }
            self.mark_current();
            if resp.created() {
                self.state.connected.store(true, Relaxed);
                self.status.connected = true;
                self.status.error.clear();
                self.status.over_budget = false;
                if self.current.is_none() {
                    self.hold_current().await?;
                    tracing::info!(cluster = self.cluster, from = start, "watching the remote");
                }
                continue;
            }
            self.renew_current().await?;
            if resp.events().is_empty() {
                // A progress answer: every event up to its revision has been sent (and, since
                // events are handled as they come, applied). A member that lags behind the one
                // read before answers with an older revision, which moves nothing.
                let progress = resp.header().map_or(0, |h| h.revision());
                self.pos.complete(progress);
                continue;
            }
            let mut last = self.pos.revision;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let rev = kv.mod_revision();
                last = rev;
                if resume.applied_before(rev) {
                    continue;
                }
                let value = match event.event_type() {
                    EventType::Put => match self.validator.check(kv.key(), kv.value()) {
                        Ok(()) => Some(kv.value().to_vec()),
                        Err(r) => {
                            self.rejected(&r);
                            None
                        }
                    },
                    EventType::Delete => None,
                };
                if batch.would_overflow(kv.key(), value.as_deref()) {
                    self.flush(&mut batch).await?;
                }
                let index = &self.index;
                batch.set(kv.key(), value, |k| index.contains_key(k));
                self.pos.advance(rev);
            }
            // A response holds whole revisions.
            self.pos.complete(last);
            self.flush(&mut batch).await?;
            self.write_status(false).await?;
            // Silence counts from here: slow local writes are not the remote's.
            last_answer = Instant::now();
        }
    }

    /// Checks that responses come from the remote store the position belongs to: a rebuilt
    /// remote (a new etcd cluster id) starts its revisions over, so the position means
    /// nothing there and only a list is right.
    fn same_remote(&mut self, cluster_id: u64) -> Result<(), SessionError> {
        match self.status.remote_cluster_id {
            _ if cluster_id == 0 => Ok(()),
            0 => {
                self.status.remote_cluster_id = cluster_id;
                Ok(())
            }
            known if known == cluster_id => Ok(()),
            known => Err(SessionError::Compacted(format!(
                "the remote's store is another one (cluster id {cluster_id:x}, was {known:x}): rebuilt?"
            ))),
        }
    }

    fn mark_current(&mut self) {
        let now = now_ms();
        self.status.current_at_ms = now;
        self.state.current_at_ms.store(now, Relaxed);
    }

    fn rejected(&mut self, r: &Rejection) {
        self.status.rejected += 1;
        self.metrics.rejected(self.cluster, r.reason()).inc();
        let quiet = self
            .logged_rejection
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if !quiet {
            self.logged_rejection = Some(Instant::now());
            tracing::warn!(
                cluster = self.cluster,
                reason = r.reason(),
                "not mirrored: {r}"
            );
        }
    }

    /// Writes `batch` with the status, if it holds anything; refuses to go over the budget.
    async fn flush(&mut self, batch: &mut Batch) -> Result<(), SessionError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_batch(batch, true).await
    }

    /// [`Session::flush`] without the budget check (the steps of a checked list).
    async fn flush_unchecked(&mut self, batch: &mut Batch) -> Result<(), SessionError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_batch(batch, false).await
    }

    /// Writes `batch` (possibly empty) and the status in one guarded Txn.
    async fn commit_batch(&mut self, batch: &mut Batch, budget: bool) -> Result<(), SessionError> {
        let ops = batch.take();
        let mut keys = self.index.len() as u64;
        let mut bytes: u64 = self.status.bytes;
        for (k, v) in &ops {
            let old = self.index.get(k);
            bytes -= old.copied().unwrap_or(0);
            keys -= u64::from(old.is_some());
            if let Some(v) = v {
                bytes += (k.len() + v.len()) as u64;
                keys += 1;
            }
        }
        if budget {
            self.check_budget(keys, bytes)?;
        }
        self.charge(&ops)?;
        let mut txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.clone(), v.clone(), None),
                None => TxnOp::delete(k.clone(), None),
            })
            .collect();
        self.status.remote_revision = self.pos.revision;
        self.status.partial_events = self.pos.partial;
        self.status.keys = keys;
        self.status.bytes = bytes;
        txn_ops.push(TxnOp::put(
            self.status_key.clone(),
            self.status.encode_to_vec(),
            None,
        ));
        self.commit(txn_ops).await?;
        for (k, v) in ops {
            match v {
                Some(v) => {
                    let n = (k.len() + v.len()) as u64;
                    self.index.insert(k, n);
                }
                None => {
                    self.index.remove(&k);
                }
            }
        }
        self.count_index();
        self.metrics.writes(self.cluster).inc();
        Ok(())
    }

    /// Takes what `ops` write (keys, values and the version overhead of each) from the
    /// remote's write allowance, or pauses the remote.
    fn charge(&mut self, ops: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), SessionError> {
        /// What a version costs the store besides its key and value (`kvstore::mvcc`).
        const VERSION_COST: usize = 64;
        let cost: usize = ops
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + VERSION_COST)
            .sum();
        let now = std::time::Instant::now();
        let per_minute = self.settings.write_bytes_per_minute;
        let rate = per_minute as f64 / 60.0;
        let mut allowance = self
            .state
            .write_allowance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = allowance.get_or_insert_with(|| {
            kvstore::per_identity::TokenBucket::new(rate, self.settings.max_bytes as f64, now)
        });
        if bucket.take(cost as f64, now) {
            return Ok(());
        }
        let wait = Duration::from_secs_f64(bucket.wait_for(cost as f64));
        drop(allowance);
        self.metrics.paused(self.cluster).inc();
        let e = SessionError::OverRate {
            per_minute_mib: per_minute >> 20,
            wait,
        };
        tracing::warn!(cluster = self.cluster, "{e}");
        Err(e)
    }

    /// Writes the status alone: at once if something people act on changed (`force`, the
    /// connection, the error, the budget, the endpoint, a list in progress), else when only
    /// the freshness, the position or the rejected count moved and [`STATUS_EVERY`] has passed
    /// (a remote sending junk must not turn into a local write per response).
    pub async fn write_status(&mut self, force: bool) -> Result<(), SessionError> {
        self.status.remote_revision = self.pos.revision;
        self.status.partial_events = self.pos.partial;
        let (s, w) = (&self.status, &self.written);
        let news = force
            || s.connected != w.connected
            || s.error != w.error
            || s.over_budget != w.over_budget
            || s.endpoint != w.endpoint
            || s.list_revision != w.list_revision
            || s.removed_at_ms != w.removed_at_ms
            || s.cert_not_after_ms != w.cert_not_after_ms;
        // The freshness alone is no reason to write: the current lease carries it.
        let moved = RemoteStatusRecord {
            current_at_ms: w.current_at_ms,
            ..s.clone()
        } != *w;
        if !(news || (moved && self.written_at.elapsed() >= STATUS_EVERY)) {
            return Ok(());
        }
        let put = TxnOp::put(self.status_key.clone(), self.status.encode_to_vec(), None);
        self.commit(vec![put]).await
    }

    /// Grants the lease of `mesh/status/current/<c>` and writes the key with the status (one
    /// guarded Txn, so a fenced mirror cannot hold it).
    async fn hold_current(&mut self) -> Result<(), SessionError> {
        let lease = bounded(self.local.lease_grant(CURRENT_TTL_SECONDS, None))
            .await
            .map_err(local_err)?
            .id();
        let (keeper, answers) = bounded(self.local.lease_keep_alive(lease))
            .await
            .map_err(local_err)?;
        self.current = Some(Current {
            lease,
            keeper,
            answers,
            renewed: Instant::now(),
        });
        self.status.remote_revision = self.pos.revision;
        self.status.partial_events = self.pos.partial;
        let status = TxnOp::put(self.status_key.clone(), self.status.encode_to_vec(), None);
        let current = TxnOp::put(
            self.current_key.clone(),
            CURRENT_VALUE,
            Some(PutOptions::new().with_lease(lease)),
        );
        self.commit(vec![status, current]).await
    }

    /// Renews the current lease (the remote just answered), at most every [`RENEW_EVERY`];
    /// holds a new one if it had lapsed (this member was too slow to renew it in time).
    async fn renew_current(&mut self) -> Result<(), SessionError> {
        let Some(current) = self.current.as_mut() else {
            return self.hold_current().await;
        };
        if current.renewed.elapsed() < RENEW_EVERY {
            return Ok(());
        }
        current.renewed = Instant::now();
        bounded(current.keeper.keep_alive())
            .await
            .map_err(local_err)?;
        let answer = bounded(current.answers.message())
            .await
            .map_err(local_err)?;
        match answer {
            Some(a) if a.ttl() > 0 => Ok(()),
            _ => {
                tracing::info!(
                    cluster = self.cluster,
                    "the current lease lapsed: holding a new one"
                );
                self.current = None;
                self.hold_current().await
            }
        }
    }

    /// One Txn guarded by the status key's mod revision.
    async fn commit(&mut self, ops: Vec<TxnOp>) -> Result<(), SessionError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.status_key.clone(),
                CompareOp::Equal,
                self.status_rev,
            )])
            .and_then(ops);
        let resp = bounded(self.local.txn(txn)).await.map_err(local_err)?;
        if !resp.succeeded() {
            return Err(SessionError::Fenced);
        }
        self.status_rev = resp.header().map_or(0, |h| h.revision());
        self.written = self.status.clone();
        self.written_at = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
