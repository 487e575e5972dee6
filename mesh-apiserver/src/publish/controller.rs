//! The publishing loop: while this member leads, make the store hold exactly the records
//! the cluster's objects call for.
//!
//! Every member runs it; only the one whose own Status names it leader acts, so a new leader
//! takes over within one interval. Correctness does not rest on that: every write is a
//! guarded Txn ([`super::store`]), so a deposed leader that still writes changes nothing.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use mesh_api::keys::{Kind, kind_prefix};
use mesh_api::records::{ClusterRecord, SyncedRecord};
use mesh_api::{Key, Record, SCHEMA};

use super::convert::{
    FIRST_LOCAL_ID, Problem, Settings, desired, identity_records, reserved_identities,
};
use super::live::LiveSource;
use super::objects::Objects;
use super::store::{
    Changes, Slots, StoreError, allocate, delete_unchanged, ensure, read_identities, reconcile,
};

/// How often leadership and the manifests are checked.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A full pass at least this often, even when nothing seems to have changed.
pub const RESYNC: Duration = Duration::from_secs(60);

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

/// The publisher's counters, served on `/metrics`.
#[derive(Debug, Default)]
pub struct PublisherStats {
    leading: AtomicBool,
    passes: AtomicU64,
    failures: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    conflicts: AtomicU64,
    identities: AtomicU64,
    last_pass_ms: AtomicU64,
    /// Objects the last pass skipped, by reason.
    skipped: Mutex<BTreeMap<&'static str, u64>>,
}

impl PublisherStats {
    fn record(&self, report: &PassReport, took: Duration) {
        self.passes.fetch_add(1, Relaxed);
        for c in [&report.records, &report.markers, &report.identity_writes] {
            self.puts.fetch_add(c.puts as u64, Relaxed);
            self.deletes.fetch_add(c.deletes as u64, Relaxed);
            self.conflicts.fetch_add(c.conflicts as u64, Relaxed);
        }
        self.identities.store(report.identities as u64, Relaxed);
        self.last_pass_ms.store(took.as_millis() as u64, Relaxed);
        let mut skipped = self
            .skipped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        skipped.clear();
        for p in &report.problems {
            *skipped.entry(p.reason()).or_default() += 1;
        }
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        line(
            "raftmesh_publish_leading",
            "gauge",
            "1 while this member's publisher acts (it leads).",
            u64::from(self.leading.load(Relaxed)),
        );
        line(
            "raftmesh_publish_passes_total",
            "counter",
            "Publishing passes completed.",
            self.passes.load(Relaxed),
        );
        line(
            "raftmesh_publish_failures_total",
            "counter",
            "Publishing passes that failed.",
            self.failures.load(Relaxed),
        );
        line(
            "raftmesh_publish_puts_total",
            "counter",
            "Records written.",
            self.puts.load(Relaxed),
        );
        line(
            "raftmesh_publish_deletes_total",
            "counter",
            "Records deleted.",
            self.deletes.load(Relaxed),
        );
        line(
            "raftmesh_publish_conflicts_total",
            "counter",
            "Txns redone because the store changed under them.",
            self.conflicts.load(Relaxed),
        );
        line(
            "raftmesh_publish_identities",
            "gauge",
            "Identities the workloads use.",
            self.identities.load(Relaxed),
        );
        line(
            "raftmesh_publish_last_pass_milliseconds",
            "gauge",
            "Duration of the last pass.",
            self.last_pass_ms.load(Relaxed),
        );
        let name = "raftmesh_publish_skipped_objects";
        out.push_str(&format!(
            "# HELP {name} Objects the last pass skipped, by reason.\n# TYPE {name} gauge\n"
        ));
        for (reason, n) in self
            .skipped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            out.push_str(&format!("{name}{{reason=\"{reason}\"}} {n}\n"));
        }
        out
    }
}

/// How the publisher reaches its own member.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Counters for `/metrics`.
    pub stats: Arc<PublisherStats>,
    /// How long an identity stays after its last workload went away.
    pub identity_gc_grace: Duration,
    /// Cluster name and id.
    pub settings: Settings,
    /// The objects.
    pub source: Source,
    /// This member's client URL.
    pub client_url: String,
    /// CA, certificate and key to connect with (the member's own client-port files); `None`
    /// in plaintext mode.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
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

/// Publishes until the process ends.
pub async fn run(config: PublisherConfig) {
    let mut client: Option<Client> = None;
    // What the last successful pass saw, and when it ran; `None` after losing leadership, so
    // the next leadership starts with a full pass.
    let mut last: Option<(Version, Instant)> = None;
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut gc = IdentityGc::default();
    loop {
        tokio::time::sleep(INTERVAL).await;
        if client.is_none() {
            match connect(&config).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "publisher cannot reach its member yet");
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        match leads(c).await {
            Ok(true) => config.stats.leading.store(true, Relaxed),
            Ok(false) => {
                config.stats.leading.store(false, Relaxed);
                last = None;
                gc = IdentityGc::default();
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "publisher: status failed; reconnecting");
                client = None;
                continue;
            }
        }
        let fingerprint = match config.source.version() {
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
        if let Some((seen, at)) = &last
            && *seen == fingerprint
            && at.elapsed() < RESYNC
            && !gc.due(config.identity_gc_grace)
        {
            continue;
        }
        let started = Instant::now();
        match pass(c, &config, &mut gc).await {
            Ok(report) => {
                config.stats.record(&report, started.elapsed());
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
                last = Some((fingerprint, Instant::now()));
            }
            Err(e) => {
                config.stats.failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "publishing failed; retrying");
                if matches!(e, PassError::Store(StoreError::Client(_))) {
                    client = None;
                }
            }
        }
    }
}

async fn connect(
    config: &PublisherConfig,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    if let Some((ca, cert, key)) = &config.tls {
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
                .identity(Identity::from_pem(
                    std::fs::read(cert)?,
                    std::fs::read(key)?,
                )),
        );
    }
    Ok(Client::connect([config.client_url.as_str()], Some(options)).await?)
}

/// Whether the member this client talks to is the leader.
async fn leads(client: &mut Client) -> Result<bool, etcd_client::Error> {
    let status = client.status().await?;
    Ok(status
        .header()
        .is_some_and(|h| h.member_id() == status.leader()))
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
    config: &PublisherConfig,
    gc: &mut IdentityGc,
) -> Result<PassReport, PassError> {
    let objects = config.source.objects()?;
    let settings = &config.settings;
    let c = &settings.cluster;
    let d = desired(settings, &objects);
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
        Record::Cluster(cluster_record(settings, &d.records)),
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

/// The cluster record: name, id, and the pod CIDRs of its nodes. (API endpoints, service
/// CIDRs and the CA fingerprint come with `meshctl connect`.)
fn cluster_record(settings: &Settings, records: &BTreeMap<Key, Record>) -> ClusterRecord {
    let pod_cidrs: BTreeSet<String> = records
        .values()
        .filter_map(|r| match r {
            Record::Node(n) => Some(n.pod_cidrs.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    ClusterRecord {
        schema: SCHEMA,
        name: settings.cluster.clone(),
        id: u32::from(settings.cluster_id),
        pod_cidrs: pod_cidrs.into_iter().collect(),
        ..Default::default()
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
