//! `meshctl connect` and `meshctl disconnect`: join clusters by writing, in each, how to reach
//! the other (`mesh/config/remotes/<other>`); the API servers' mirrors do the rest.
//!
//! Connect checks everything before it writes anything: both cluster records exist, names and
//! ids differ, no pod CIDR of one overlaps a pod or service CIDR of the other (or of any
//! cluster either side already mirrors; service CIDRs may overlap each other, as the
//! platforms' defaults do), no range lies in a special-purpose one (loopback, link-local,
//! multicast, …), and each context's CA is its cluster's. Each side then gets a `remote` certificate issued
//! by the *other* cluster's CA (a fresh key per connection) and that cluster's CA. A second
//! run finds both records as they should be and writes nothing; `--renew` reissues the
//! certificates. Writes are compare-guarded, so two admins connecting at once cannot
//! overwrite each other silently.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use certs::pki::{CertificateAuthority, LEAF_DAYS, LeafSpec, Validity};
use certs::{Identity, Role};
use clap::Args;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use mesh_api::cidr::Cidr;
use mesh_api::keys::{Key, ROOT};
use mesh_api::records::ClusterRecord;
use mesh_api::remote::{RemoteConfigRecord, RemoteStatusRecord};
use mesh_api::{Record, SCHEMA};
use prost::Message as _;

use crate::{Failure, runtime};
use mesh_client::contexts::ClusterContext;
use mesh_client::contexts::ConfigFile;

/// Bound on one request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Certificates closer than this to expiry are reissued by a plain `connect`.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Flags of `meshctl connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The context of one side (default: the current context).
    #[arg(long)]
    context: Option<String>,
    /// The other side(s): contexts, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
    destination: Vec<String>,
    /// Connect every pair of known contexts.
    #[arg(long)]
    all: bool,
    /// Reach the destination at these URLs instead of its cluster record's API endpoints
    /// (comma-separated https://host:port; one destination only).
    #[arg(long, value_delimiter = ',')]
    destination_endpoint: Vec<String>,
    /// Reissue the remote certificates even if they are still good.
    #[arg(long)]
    renew: bool,
    /// Days the remote certificates are valid for.
    #[arg(long, default_value_t = LEAF_DAYS, value_parser = clap::value_parser!(u32).range(31..=3650))]
    days: u32,
    /// Wait until both sides report the other connected.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Flags of `meshctl disconnect`.
#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// The context of one side (default: the current context).
    #[arg(long)]
    context: Option<String>,
    /// The other side(s): contexts, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    destination: Vec<String>,
}

/// One cluster as connect sees it.
struct Side {
    ctx: ClusterContext,
    client: Client,
    /// Its name, from the context's certificate.
    cluster: String,
    record: ClusterRecord,
    ca: CertificateAuthority,
    /// Every cluster record in its store: its own and those it mirrors.
    known: Vec<ClusterRecord>,
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("context", &self.ctx.name)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Side {
    /// Where other clusters reach this one: the address of its remote Service when the
    /// context is a kubeconfig context (a cluster's own records name members by their
    /// in-cluster names), else the API endpoints its cluster record publishes.
    fn reached_at(&self) -> Vec<String> {
        match &self.ctx.kube {
            Some(install) => install.endpoints.clone(),
            None => self.record.api_endpoints.clone(),
        }
    }
}

/// A connection record to write, and what is there now.
struct Plan {
    key: String,
    /// Mod revision of the current record (0: none).
    revision: i64,
    current: Option<RemoteConfigRecord>,
    wanted: RemoteConfigRecord,
}

impl Plan {
    fn changes(&self) -> bool {
        self.current.as_ref() != Some(&self.wanted)
    }
}

/// Runs `meshctl connect`.
pub fn run_connect(args: ConnectArgs) -> Result<(), Failure> {
    let (_, file) = ConfigFile::load().map_err(Failure::BadInput)?;
    let pairs: Vec<(String, String)> = if args.all {
        let names: Vec<&String> = file.contexts.keys().collect();
        if names.len() < 2 {
            return Err(Failure::BadInput(anyhow!(
                "--all needs at least two contexts (meshctl config get-contexts)"
            )));
        }
        let mut pairs = Vec::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                pairs.push(((*a).clone(), (*b).clone()));
            }
        }
        pairs
    } else {
        let from = match &args.context {
            Some(c) => c.clone(),
            None => file
                .current_context
                .clone()
                .ok_or_else(|| Failure::BadInput(anyhow!("no --context and no current context")))?,
        };
        args.destination
            .iter()
            .map(|d| (from.clone(), d.clone()))
            .collect()
    };
    if !args.destination_endpoint.is_empty() && pairs.len() != 1 {
        return Err(Failure::BadInput(anyhow!(
            "--destination-endpoint is for one destination"
        )));
    }
    for e in &args.destination_endpoint {
        mesh_api::endpoint::host_port(e)
            .map_err(|e| Failure::BadInput(anyhow!("--destination-endpoint: {e}")))?;
    }
    for (a, b) in &pairs {
        if a == b {
            return Err(Failure::BadInput(anyhow!(
                "cannot connect context {a:?} to itself"
            )));
        }
    }
    runtime()?.block_on(connect_all(&file, &pairs, &args))
}

async fn connect_all(
    file: &ConfigFile,
    pairs: &[(String, String)],
    args: &ConnectArgs,
) -> Result<(), Failure> {
    let mut sides: BTreeMap<String, Side> = BTreeMap::new();
    for name in pairs.iter().flat_map(|(a, b)| [a, b]) {
        if sides.contains_key(name) {
            continue;
        }
        eprintln!("connect: reading {name}");
        let ctx = file.resolve(Some(name)).map_err(Failure::BadInput)?;
        sides.insert(name.clone(), load_side(ctx).await?);
    }
    // Every check of every pair before any write; a side's other destinations in this
    // command count as known to it, so two of them cannot clash with each other either.
    let mut planned: BTreeMap<&str, Vec<ClusterRecord>> = BTreeMap::new();
    for (a, b) in pairs {
        planned.entry(a).or_default().push(sides[b].record.clone());
        planned.entry(b).or_default().push(sides[a].record.clone());
    }
    let mut plans = Vec::new();
    for (a, b) in pairs {
        let (sa, sb) = (&sides[a], &sides[b]);
        check_pair(sa, sb, &planned).map_err(Failure::BadInput)?;
        let endpoints = if args.destination_endpoint.is_empty() {
            sb.reached_at()
        } else {
            args.destination_endpoint.clone()
        };
        plans.push((a, b, plan(sa, sb, endpoints, args).await?));
        plans.push((b, a, plan(sb, sa, sa.reached_at(), args).await?));
    }
    let mut wrote = 0;
    for (from, to, p) in &plans {
        let side = sides.get_mut(*from).expect("loaded");
        if !p.changes() {
            eprintln!("connect: {from} already mirrors {to}");
            continue;
        }
        eprintln!("connect: writing {} in {from}", p.key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                p.key.clone(),
                CompareOp::Equal,
                p.revision,
            )])
            .and_then([TxnOp::put(p.key.clone(), p.wanted.encode_to_vec(), None)]);
        let resp = side
            .client
            .txn(txn)
            .await
            .with_context(|| format!("writing {} in {from}", p.key))
            .map_err(Failure::Other)?;
        if !resp.succeeded() {
            return Err(Failure::Other(anyhow!(
                "{} in {from} changed while connecting (someone else is connecting); run again",
                p.key
            )));
        }
        wrote += 1;
    }
    if args.wait {
        for (from, to, p) in &plans {
            let side = sides.get_mut(*from).expect("loaded");
            eprintln!("connect: waiting for {from} to report {to} connected");
            wait_connected(side, &p.wanted.cluster, Duration::from_secs(args.timeout))
                .await
                .map_err(Failure::Other)?;
        }
    }
    let names: Vec<String> = pairs
        .iter()
        .map(|(a, b)| format!("{} ⇄ {}", sides[a].cluster, sides[b].cluster))
        .collect();
    if wrote == 0 {
        println!("already connected: {} (nothing changed)", names.join(", "));
    } else {
        println!(
            "connected {} ({wrote} connection record(s) written{})",
            names.join(", "),
            if args.wait {
                "; both sides report connected"
            } else {
                "; `meshctl status` shows when the mirrors are current"
            }
        );
    }
    Ok(())
}

async fn load_side(ctx: ClusterContext) -> Result<Side, Failure> {
    let cluster = ctx.cluster().map_err(Failure::BadInput)?;
    let ca = ctx.ca().map_err(Failure::BadInput)?;
    if ca.cluster() != cluster {
        return Err(Failure::BadInput(anyhow!(
            "context {:?}: the PKI directory's CA is cluster {}'s, the certificate cluster {cluster}'s",
            ctx.name,
            ca.cluster()
        )));
    }
    let mut client = ctx.client(TIMEOUT).await.map_err(Failure::Other)?;
    let resp = client
        .get(ROOT, Some(GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("reading {} from {}", ROOT, ctx.name))
        .map_err(Failure::Other)?;
    let mut known = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        if !key.ends_with("/cluster") {
            continue;
        }
        if let Ok((_, Record::Cluster(r))) = Record::decode_at(&key, kv.value()) {
            known.push(r);
        }
    }
    let record = known
        .iter()
        .find(|r| r.name == cluster)
        .cloned()
        .ok_or_else(|| {
            Failure::BadInput(anyhow!(
                "cluster {cluster} (context {:?}) has no cluster record mesh/v1/{cluster}/cluster: start its API server with --cluster-name {cluster} --cluster-id N and --manifests-dir or --kubernetes",
                ctx.name
            ))
        })?;
    if !record.ca_fingerprint.is_empty() {
        let fingerprint =
            certs::pki::fingerprint_pem(ca.cert_pem()).map_err(|e| Failure::Other(e.into()))?;
        if fingerprint != record.ca_fingerprint {
            return Err(Failure::BadInput(anyhow!(
                "context {:?}: its CA is not the one cluster {cluster} publishes (fingerprint {} vs {})",
                ctx.name,
                fingerprint,
                record.ca_fingerprint
            )));
        }
    }
    Ok(Side {
        ctx,
        client,
        cluster,
        record,
        ca,
        known,
    })
}

/// Refuses pairs that cannot share a mesh: against what each side knows (its own record, the
/// clusters it mirrors, and those this command connects it to).
fn check_pair(
    a: &Side,
    b: &Side,
    planned: &BTreeMap<&str, Vec<ClusterRecord>>,
) -> anyhow::Result<()> {
    if a.cluster == b.cluster {
        bail!(
            "contexts {:?} and {:?} are both cluster {}: a cluster cannot mirror itself",
            a.ctx.name,
            b.ctx.name,
            a.cluster
        );
    }
    for (here, other) in [(a, b), (b, a)] {
        let known: Vec<&ClusterRecord> = here
            .known
            .iter()
            .chain(planned.get(here.ctx.name.as_str()).into_iter().flatten())
            .collect();
        // The same name already known there must be the same cluster.
        if let Some(k) = known.iter().find(|k| k.name == other.cluster)
            && (k.id != other.record.id || k.ca_fingerprint != other.record.ca_fingerprint)
        {
            bail!(
                "cluster names must be unique: {} already knows another cluster named {} (id {}, CA {}), not this one (id {}, CA {})",
                here.cluster,
                k.name,
                k.id,
                short(&k.ca_fingerprint),
                other.record.id,
                short(&other.record.ca_fingerprint)
            );
        }
        for k in known.iter().filter(|k| k.name != other.cluster) {
            if k.id == other.record.id {
                let where_ = if k.name == here.cluster {
                    String::new()
                } else {
                    format!(" (connected to {})", here.cluster)
                };
                bail!(
                    "cluster ids must be unique: {} and {}{where_} both have id {}",
                    other.cluster,
                    k.name,
                    k.id
                );
            }
            for (mine, what) in ranges(&other.record) {
                for (theirs, their_what) in ranges(k) {
                    // Two service ranges may overlap (kubeadm, Talos and EKS share defaults):
                    // a service is reached through its own cluster's addresses only.
                    if what == "service" && their_what == "service" {
                        continue;
                    }
                    if mine.overlaps(&theirs) {
                        bail!(
                            "CIDRs overlap: {what} CIDR {mine} of {} and {their_what} CIDR {theirs} of {}",
                            other.cluster,
                            k.name
                        );
                    }
                }
            }
        }
    }
    for side in [a, b] {
        for (mine, what) in ranges(&side.record) {
            if let Some(special) = mesh_api::cidr::special_overlap(&mine) {
                bail!(
                    "{what} CIDR {mine} of {} overlaps the {special} range: no cluster's addresses may lie there",
                    side.cluster
                );
            }
        }
    }
    for side in [a, b] {
        if side.record.pod_cidrs.is_empty() {
            eprintln!(
                "connect: warning: cluster {} publishes no pod CIDRs, so none of its pod addresses will be mirrored (give its API server --pod-cidr)",
                side.cluster
            );
        }
    }
    Ok(())
}

/// A cluster record's pod and service CIDRs, each with what it is.
fn ranges(record: &ClusterRecord) -> Vec<(Cidr, &'static str)> {
    let pods = record.pod_cidrs.iter().map(|c| (c, "pod"));
    let services = record.service_cidrs.iter().map(|c| (c, "service"));
    pods.chain(services)
        .filter_map(|(c, what)| Some((c.parse::<Cidr>().ok()?, what)))
        .collect()
}

/// The first 12 hex digits of a fingerprint.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// What `from` should hold about `to`: reusing the current certificate while it is good.
async fn plan(
    from: &Side,
    to: &Side,
    endpoints: Vec<String>,
    args: &ConnectArgs,
) -> Result<Plan, Failure> {
    if endpoints.is_empty() {
        return Err(Failure::BadInput(anyhow!(
            "cluster {} publishes no API endpoints; give --destination-endpoint",
            to.cluster
        )));
    }
    let key = Key::RemoteConfig {
        cluster: to.cluster.clone(),
    }
    .to_string();
    let mut client = from.client.clone();
    let resp = client
        .get(key.as_str(), None)
        .await
        .with_context(|| format!("reading {key} in {}", from.cluster))
        .map_err(Failure::Other)?;
    let (current, revision) = match resp.kvs().first() {
        Some(kv) => (
            RemoteConfigRecord::decode_checked(kv.value()).ok(),
            kv.mod_revision(),
        ),
        None => (None, 0),
    };
    let ca_pem = to.ca.cert_pem().to_owned();
    let reusable = current.as_ref().filter(|c| {
        !args.renew
            && c.ca_pem == ca_pem
            && cert_is_good(&c.cert_pem, &ca_pem, &to.cluster, &from.cluster)
    });
    let (cert_pem, key_pem) = match reusable {
        Some(c) => (c.cert_pem.clone(), c.key_pem.clone()),
        None => {
            eprintln!(
                "connect: issuing {}'s certificate to read {} (signed by {}'s CA)",
                from.cluster, to.cluster, to.cluster
            );
            let identity = Identity::new(&to.cluster, Role::Remote, &from.cluster)
                .map_err(|e| Failure::Other(e.into()))?;
            let issued = to
                .ca
                .issue(&LeafSpec {
                    identity,
                    sans: Vec::new(),
                    validity: Validity::days_from_now(args.days),
                })
                .map_err(|e| Failure::Other(e.into()))?;
            (issued.cert_pem, issued.key_pem)
        }
    };
    let wanted = RemoteConfigRecord {
        schema: SCHEMA,
        cluster: to.cluster.clone(),
        id: to.record.id,
        endpoints,
        ca_pem,
        cert_pem,
        key_pem,
        pod_cidrs: to.record.pod_cidrs.clone(),
    };
    Ok(Plan {
        key,
        revision,
        current,
        wanted,
    })
}

/// Whether `cert_pem` is a remote certificate of `issuer` for `reader`, issued by `ca_pem`,
/// valid for at least [`RENEW_BEFORE`] more.
fn cert_is_good(cert_pem: &str, ca_pem: &str, issuer: &str, reader: &str) -> bool {
    let Ok((identity, not_after)) = certs::pki::leaf_info(cert_pem) else {
        return false;
    };
    identity.cluster == issuer
        && identity.role == Role::Remote
        && identity.name == reader
        && certs::tls::verify_issued_by(cert_pem, ca_pem).is_ok()
        && not_after
            .duration_since(SystemTime::now())
            .is_ok_and(|left| left > RENEW_BEFORE)
}

async fn wait_connected(side: &mut Side, remote: &str, timeout: Duration) -> anyhow::Result<()> {
    let key = Key::RemoteStatus {
        cluster: remote.to_owned(),
    }
    .to_string();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no status yet");
    loop {
        let resp = side.client.get(key.as_str(), None).await?;
        if let Some(kv) = resp.kvs().first() {
            match RemoteStatusRecord::decode_checked(kv.value()) {
                Ok(s) if s.connected && s.list_revision == 0 && s.remote_revision > 0 => {
                    return Ok(());
                }
                Ok(s) => {
                    last = if s.error.is_empty() {
                        "listing".to_owned()
                    } else {
                        s.error
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} does not report {remote} connected after {timeout:?}: {last}",
                side.cluster
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `meshctl disconnect`.
pub fn run_disconnect(args: DisconnectArgs) -> Result<(), Failure> {
    let (_, file) = ConfigFile::load().map_err(Failure::BadInput)?;
    let a = file
        .resolve(args.context.as_deref())
        .map_err(Failure::BadInput)?;
    let others = args
        .destination
        .iter()
        .map(|d| file.resolve(Some(d)))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(Failure::BadInput)?;
    runtime()?.block_on(async {
        let a_cluster = a.cluster().map_err(Failure::BadInput)?;
        let mut a_client = a.client(TIMEOUT).await.map_err(Failure::Other)?;
        let mut removed = 0;
        for b in &others {
            let b_cluster = b.cluster().map_err(Failure::BadInput)?;
            let mut b_client = b.client(TIMEOUT).await.map_err(Failure::Other)?;
            for (client, here, there) in [
                (&mut a_client, &a_cluster, &b_cluster),
                (&mut b_client, &b_cluster, &a_cluster),
            ] {
                let key = Key::RemoteConfig {
                    cluster: there.clone(),
                }
                .to_string();
                let resp = client
                    .delete(key.as_str(), None)
                    .await
                    .with_context(|| format!("deleting {key} in {here}"))
                    .map_err(Failure::Other)?;
                if resp.deleted() > 0 {
                    eprintln!("disconnect: {here} no longer mirrors {there}");
                    removed += 1;
                } else {
                    eprintln!("disconnect: {here} did not mirror {there}");
                }
            }
        }
        if removed == 0 {
            println!("not connected: nothing changed");
        } else {
            println!(
                "disconnected ({removed} connection record(s) removed); mirrored records are deleted after the API servers' --disconnect-grace"
            );
        }
        Ok(())
    })
}
