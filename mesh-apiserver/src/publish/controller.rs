//! The publishing loop: while this member leads, make the store hold exactly the records
//! the cluster's objects call for.
//!
//! It is a leader-gated [`Controller`]: it runs on the member that leads and stops when that
//! member stops leading, so a new leader takes over as soon as it is elected. Correctness does
//! not rest on that: every write is a guarded Txn ([`super::store`]), so a deposed leader that
//! still writes changes nothing.
//!
//! A pass reads the manifests, computes the desired records, allocates identities, then
//! reconciles nodes, services, endpoints, policies, the ipcache and the cluster record, and
//! finally the `synced/<kind>` markers, so a marker never precedes its records. A pass runs
//! when the manifests change, when this member becomes leader, and every [`RESYNC`] (repairing
//! anything written by hand).
//!
//! Identities: the reserved ones (local ids 1..=8) are always present; an allocated identity
//! no workload uses any more is deleted once it has stayed unused for the grace period
//! (`--identity-gc-grace`), so peers that still hold it have time to stop using it. The clock
//! starts when this member's publisher first sees it unused, so a new leader waits a whole
//! grace period again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::Client;
use futures::future::BoxFuture;
use kvstore::node::MemberInfo;
use mesh_api::cidr::Cidr;
use mesh_api::keys::{Kind, kind_prefix};
use mesh_api::records::{ClusterRecord, SyncedRecord};
use mesh_api::{Key, Record, SCHEMA};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::convert::{
    Desired, FIRST_LOCAL_ID, Problem, Settings, desired, identity_records, reserved_identities,
};
use super::live::LiveSource;
use super::objects::Objects;
use crate::controller::{Context, Controller};

use super::store::{
    Changes, Slots, StoreError, allocate, delete_unchanged, ensure, read_identities, reconcile,
};

/// How often leadership and the manifests are checked.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A full pass at least this often, even when nothing seems to have changed.
pub const RESYNC: Duration = Duration::from_secs(60);
/// How long a new leader waits for every member's client URLs before it publishes the
/// cluster record with the URLs it knows (a member that never started publishes none).
pub const MEMBERS_PATIENCE: Duration = Duration::from_secs(30);

/// Where the objects come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--manifests-dir`: the YAML files of a directory.
    Manifests(PathBuf),
    /// `--kubernetes`: the live API.
    Live(LiveSource),
}

/// What a source looked like, to notice changes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    Files(Fingerprint),
    Generation(u64),
}

impl Source {
    /// The source's current version; `None` while it is not ready to be published (the live
    /// API before every kind is listed).
    fn version(&self) -> std::io::Result<Option<Version>> {
        Ok(match self {
            Source::Manifests(dir) => Some(Version::Files(fingerprint(dir)?)),
            Source::Live(live) => live.ready().then(|| Version::Generation(live.generation())),
        })
    }

    /// Every object, now.
    pub fn objects(&self) -> Result<Objects, PassError> {
        match self {
            Source::Manifests(dir) => read_manifests(dir),
            Source::Live(live) => Ok(live.objects()),
        }
    }
}

/// The publisher's metrics.
#[derive(Debug, Default)]
pub struct PublisherMetrics {
    leading: Gauge,
    passes: Counter,
    failures: Counter,
    puts: Counter,
    deletes: Counter,
    conflicts: Counter,
    identities: Gauge,
    last_pass_ms: Gauge,
    /// Objects the last pass skipped, by reason.
    skipped: Family<ReasonLabels, Gauge>,
}

/// Why objects were skipped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl PublisherMetrics {
    /// Registers them in the process's registry.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "publish_leading",
            "1 while this member's publisher acts (it leads)",
            self.leading.clone(),
        );
        r.register(
            "publish_passes",
            "Publishing passes completed",
            self.passes.clone(),
        );
        r.register(
            "publish_failures",
            "Publishing passes that failed",
            self.failures.clone(),
        );
        r.register("publish_puts", "Records written", self.puts.clone());
        r.register("publish_deletes", "Records deleted", self.deletes.clone());
        r.register(
            "publish_conflicts",
            "Txns redone because the store changed under them",
            self.conflicts.clone(),
        );
        r.register(
            "publish_identities",
            "Identities the workloads use",
            self.identities.clone(),
        );
        r.register(
            "publish_last_pass_milliseconds",
            "Duration of the last pass",
            self.last_pass_ms.clone(),
        );
        r.register(
            "publish_skipped_objects",
            "Objects the last pass skipped, by reason",
            self.skipped.clone(),
        );
    }

    fn record(&self, report: &PassReport, took: Duration) {
        self.passes.inc();
        for c in [&report.records, &report.markers, &report.identity_writes] {
            self.puts.inc_by(c.puts as u64);
            self.deletes.inc_by(c.deletes as u64);
            self.conflicts.inc_by(c.conflicts as u64);
        }
        self.identities.set(report.identities as i64);
        self.last_pass_ms.set(took.as_millis() as i64);
        let mut skipped: BTreeMap<&'static str, i64> = BTreeMap::new();
        for p in &report.problems {
            *skipped.entry(p.reason()).or_default() += 1;
        }
        self.skipped.clear();
        for (reason, n) in skipped {
            self.skipped.get_or_create(&ReasonLabels { reason }).set(n);
        }
    }
}

/// What the publisher publishes, and from where: validated from the command line once
/// (`crate::config`), used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long an identity stays after its last workload went away.
    pub identity_gc_grace: Duration,
    /// Cluster name and id.
    pub settings: Settings,
    /// The cluster record's fields that come from flags.
    pub record: RecordSettings,
    /// Where the objects come from.
    pub source: SourceConfig,
}

/// Where the publisher takes objects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// `--manifests-dir`.
    Manifests(PathBuf),
    /// `--kubernetes` (connected when the server starts: [`Source::Live`]).
    Kubernetes,
}

/// The cluster record's fields that do not come from objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSettings {
    /// `--pod-cidr`, published with the Nodes' pod CIDRs.
    pub pod_cidrs: Vec<Cidr>,
    /// `--service-cidr`.
    pub service_cidrs: Vec<Cidr>,
    /// `--clusterset-service-cidr`.
    pub clusterset_cidr: Option<Cidr>,
    /// `--advertise-remote-urls`; empty: every member's client URLs.
    pub remote_urls: Vec<String>,
    /// SHA-256 of the cluster's CA, hex.
    pub ca_fingerprint: String,
}

/// The publishing controller: while its member leads, keeps `mesh/v1/<c>/` equal to what
/// the source's objects call for.
#[derive(Debug)]
pub struct Publisher {
    config: Config,
    source: Source,
    metrics: PublisherMetrics,
}

impl Publisher {
    /// A publisher of `config`, reading `source` (the one `config.source` names).
    pub fn new(config: Config, source: Source) -> Self {
        Self {
            config,
            source,
            metrics: PublisherMetrics::default(),
        }
    }

    /// Registers its metrics.
    pub fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }
}

impl Controller for Publisher {
    fn name(&self) -> &'static str {
        "publisher"
    }

    fn run<'a>(&'a self, ctx: &'a Context, term: CancellationToken) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.metrics.leading.set(1);
            tokio::select! {
                () = term.cancelled() => {}
                () = self.publish(ctx) => {}
            }
            self.metrics.leading.set(0);
        })
    }
}

/// Why a pass did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A manifest did not read; nothing was written.
    #[error("{}: {reason}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime shut down during the pass; nothing more was written.
    #[error("the pass was cancelled: the member is shutting down")]
    Cancelled,
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Writes of records.
    pub records: Changes,
    /// Writes of markers.
    pub markers: Changes,
    /// Reserved identities written and unused identities deleted.
    pub identity_writes: Changes,
    /// Objects skipped.
    pub problems: Vec<Problem>,
    /// Identities the workloads use.
    pub identities: usize,
}

impl Publisher {
    /// Publishes for as long as it is polled (the supervisor stops it when leadership ends).
    async fn publish(&self, ctx: &Context) {
        let config = &self.config;
        let mut client: Option<Client> = None;
        // What the last successful pass saw, and when it ran.
        let mut last: Option<((Version, Vec<String>), Instant)> = None;
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut gc = IdentityGc::default();
        let mut first = true;
        let leading = Instant::now();
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(INTERVAL).await;
            }
            if client.is_none() {
                match ctx.local.connect().await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "publisher cannot reach its member yet");
                        continue;
                    }
                }
            }
            let c = client.as_mut().expect("connected above");
            let fingerprint = match self.source.version() {
                Ok(Some(v)) => v,
                Ok(None) => {
                    tracing::debug!("publisher: the source is not ready yet");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the manifests");
                    continue;
                }
            };
            let waited = leading.elapsed() > MEMBERS_PATIENCE;
            let Some(endpoints) = api_endpoints(&config.record, &ctx.node.members(), waited) else {
                tracing::debug!("publisher: waiting for every member's client URLs");
                continue;
            };
            let version = (fingerprint, endpoints.clone());
            if let Some((seen, at)) = &last
                && *seen == version
                && at.elapsed() < RESYNC
                && !gc.due(config.identity_gc_grace)
            {
                continue;
            }
            let started = Instant::now();
            match pass(c, config, &self.source, &endpoints, &mut gc).await {
                Ok(report) => {
                    self.metrics.record(&report, started.elapsed());
                    for p in &report.problems {
                        if reported.insert(p.to_string()) {
                            tracing::warn!(reason = p.reason(), "skipped: {p}");
                        }
                    }
                    reported.retain(|r| report.problems.iter().any(|p| p.to_string() == *r));
                    let r = &report.records;
                    if r.puts
                        + r.deletes
                        + report.markers.puts
                        + report.markers.deletes
                        + report.identity_writes.puts
                        + report.identity_writes.deletes
                        > 0
                    {
                        tracing::info!(
                            puts = r.puts,
                            deletes = r.deletes,
                            markers = report.markers.puts,
                            identities = report.identities,
                            skipped = report.problems.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "published"
                        );
                    } else {
                        tracing::debug!("published: already in sync");
                    }
                    last = Some((version, Instant::now()));
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    tracing::error!(error = %e, "publishing failed; retrying");
                    if matches!(e, PassError::Store(StoreError::Client(_))) {
                        client = None;
                    }
                }
            }
        }
    }
}

/// Where other clusters reach this one: `--advertise-remote-urls`, else every member's
/// advertised client URLs (sorted, so every leader publishes the same list). `None` while a
/// member's URLs are not known yet (a new leader still applying the log, a member that has
/// not started yet) unless `waited`: publishing then would write a short list and rewrite it
/// moments later.
pub fn api_endpoints(
    record: &RecordSettings,
    members: &[MemberInfo],
    waited: bool,
) -> Option<Vec<String>> {
    if !record.remote_urls.is_empty() {
        return Some(record.remote_urls.clone());
    }
    if !waited && (members.is_empty() || members.iter().any(|m| m.client_urls.is_empty())) {
        return None;
    }
    let urls: BTreeSet<String> = members
        .iter()
        .flat_map(|m| m.client_urls.iter().cloned())
        .collect();
    Some(urls.into_iter().collect())
}

/// Allocated identities no workload uses, and since when (as this publisher saw it).
#[derive(Debug, Default)]
pub struct IdentityGc {
    unused_since: BTreeMap<u32, Instant>,
}

impl IdentityGc {
    /// Whether an unused identity's grace period has run out, so a pass is due.
    fn due(&self, grace: Duration) -> bool {
        self.unused_since
            .values()
            .any(|since| since.elapsed() >= grace)
    }

    /// Notes which stored identities are unused and returns those unused for `grace`.
    fn expired(
        &mut self,
        stored: &Slots,
        used: &BTreeSet<Vec<String>>,
        grace: Duration,
    ) -> Vec<(u32, i64)> {
        let now = Instant::now();
        let unused: BTreeMap<u32, i64> = stored
            .iter()
            .filter(|(id, (labels, _))| *id & 0xffff >= FIRST_LOCAL_ID && !used.contains(labels))
            .map(|(id, (_, rev))| (*id, *rev))
            .collect();
        self.unused_since.retain(|id, _| unused.contains_key(id));
        let mut expired = Vec::new();
        for (id, rev) in unused {
            let since = *self.unused_since.entry(id).or_insert(now);
            if now.duration_since(since) >= grace {
                expired.push((id, rev));
            }
        }
        expired
    }
}

/// One pass: read, convert, allocate, reconcile, mark, collect unused identities.
pub async fn pass(
    client: &mut Client,
    config: &Config,
    source: &Source,
    api_endpoints: &[String],
    gc: &mut IdentityGc,
) -> Result<PassReport, PassError> {
    let settings = &config.settings;
    let c = &settings.cluster;
    let d = convert_off_runtime(source, settings).await?;
    let reserved: BTreeMap<Vec<u8>, Vec<u8>> = reserved_identities(settings)
        .iter()
        .map(|(k, r)| (k.to_string().into_bytes(), r.encode()))
        .collect();
    let mut identity_writes = ensure(client, &kind_prefix(c, Kind::Identity), &reserved).await?;
    let label_sets = d.label_sets();
    let ids = allocate(client, c, settings.cluster_id, &label_sets).await?;

    let mut records: BTreeMap<Key, Record> = d.records.clone();
    records.extend(
        identity_records(c, &d.workloads, &ids)
            .into_iter()
            .filter(|(k, _)| k.kind() == Some(Kind::IpCache)),
    );
    records.insert(
        Key::Cluster { cluster: c.clone() },
        Record::Cluster(cluster_record(
            settings,
            &config.record,
            api_endpoints,
            &d.records,
        )),
    );
    let wanted: BTreeMap<Vec<u8>, Vec<u8>> = records
        .iter()
        .map(|(k, r)| (k.to_string().into_bytes(), r.encode()))
        .collect();
    let prefixes: Vec<String> = [
        Kind::Cluster,
        Kind::Node,
        Kind::Service,
        Kind::Endpoints,
        Kind::Policy,
        Kind::IpCache,
    ]
    .into_iter()
    .map(|k| kind_prefix(c, k))
    .collect();
    let changes = reconcile(client, &prefixes, &wanted).await?;

    let markers: BTreeMap<Vec<u8>, Vec<u8>> = Kind::SYNCED
        .into_iter()
        .map(|kind| {
            let key = Key::Synced {
                cluster: c.clone(),
                kind,
            }
            .to_string()
            .into_bytes();
            (
                key,
                Record::Synced(SyncedRecord { schema: SCHEMA }).encode(),
            )
        })
        .collect();
    let marked = reconcile(client, &[kind_prefix(c, Kind::Synced)], &markers).await?;

    let (stored, _) = read_identities(client, c).await?;
    let expired: Vec<(Vec<u8>, i64)> = gc
        .expired(&stored, &label_sets, config.identity_gc_grace)
        .into_iter()
        .map(|(id, rev)| {
            (
                Key::Identity {
                    cluster: c.clone(),
                    id,
                }
                .to_string()
                .into_bytes(),
                rev,
            )
        })
        .collect();
    let collected = delete_unchanged(client, &expired).await?;
    identity_writes.deletes += collected.deletes;
    identity_writes.conflicts += collected.conflicts;
    if collected.deletes > 0 {
        tracing::info!(
            identities = collected.deletes,
            "deleted identities unused for the grace period"
        );
    }
    let mut problems = d.problems;
    problems.extend(duplicate_ids(client, settings).await?);
    Ok(PassReport {
        records: changes,
        markers: marked,
        identity_writes,
        identities: ids.len(),
        problems,
    })
}

/// Reads the source and converts it on a blocking thread: a large cluster's conversion takes
/// long enough (seconds for 10,000 pods on a busy machine) that, on one of the runtime's
/// workers, it would delay this member's own Raft heartbeats and peer RPCs, and under load
/// depose the leader; every new leader would then start the same pass again.
async fn convert_off_runtime(source: &Source, settings: &Settings) -> Result<Desired, PassError> {
    let (source, settings) = (source.clone(), settings.clone());
    match tokio::task::spawn_blocking(move || Ok(desired(&settings, &source.objects()?))).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(PassError::Cancelled),
    }
}

/// Connected clusters (`mesh/config/remotes/<c>`) whose mirrored cluster record claims this
/// cluster's id. Reported, never fatal: this cluster's records are its own either way.
async fn duplicate_ids(
    client: &mut Client,
    settings: &Settings,
) -> Result<Vec<Problem>, StoreError> {
    let remotes = client
        .get(
            mesh_api::keys::CONFIG_REMOTES,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await?;
    let mut problems = Vec::new();
    for kv in remotes.kvs() {
        let Ok(Key::RemoteConfig { cluster }) = String::from_utf8_lossy(kv.key()).parse::<Key>()
        else {
            continue;
        };
        if cluster == settings.cluster {
            continue;
        }
        let key = Key::Cluster {
            cluster: cluster.clone(),
        }
        .to_string();
        let resp = client.get(key.as_str(), None).await?;
        if let Some(kv) = resp.kvs().first()
            && let Ok((_, Record::Cluster(r))) = Record::decode_at(&key, kv.value())
            && r.id == u32::from(settings.cluster_id)
        {
            problems.push(Problem::DuplicateClusterId { cluster, id: r.id });
        }
    }
    Ok(problems)
}

/// The cluster record: name, id, the pod CIDRs of `--pod-cidr` and of its nodes, the service
/// CIDRs, where other clusters reach it, and its CA's fingerprint.
fn cluster_record(
    settings: &Settings,
    flags: &RecordSettings,
    api_endpoints: &[String],
    records: &BTreeMap<Key, Record>,
) -> ClusterRecord {
    let pod_cidrs: BTreeSet<String> = records
        .values()
        .filter_map(|r| match r {
            Record::Node(n) => Some(n.pod_cidrs.clone()),
            _ => None,
        })
        .flatten()
        .chain(flags.pod_cidrs.iter().map(ToString::to_string))
        .collect();
    ClusterRecord {
        schema: SCHEMA,
        name: settings.cluster.clone(),
        id: u32::from(settings.cluster_id),
        pod_cidrs: pod_cidrs.into_iter().collect(),
        service_cidrs: flags
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        api_endpoints: api_endpoints.to_vec(),
        ca_fingerprint: flags.ca_fingerprint.clone(),
        clusterset_cidr: flags
            .clusterset_cidr
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// Names, sizes and modification times of the manifest files: cheap to take every interval.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if yaml && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    manifest_files(dir)?
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p)?;
            Ok((p, m.len(), m.modified().ok()))
        })
        .collect()
}

/// Every object in the directory's `*.yaml`/`*.yml` files. One unreadable file fails the
/// whole read, so a half-written file never makes its objects look deleted.
pub fn read_manifests(dir: &Path) -> Result<Objects, PassError> {
    let mut objects = Objects::default();
    let files = manifest_files(dir).map_err(|e| PassError::Manifest {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| PassError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        objects.add_yaml(&text).map_err(|e| PassError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(objects)
}
