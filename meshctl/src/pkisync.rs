//! `meshctl pki sync-secrets`: a cluster's PKI as Kubernetes Secrets, made and kept current
//! in the cluster (the chart runs it as a Job at install and upgrade, and daily as a CronJob).
//!
//! - The CA Secret (`ca.crt`, `ca.key`) is made once and never replaced: every certificate
//!   and every connected cluster trusts it. Its approaching expiry is reported, not acted on
//!   (replacing a CA is a procedure, see the README).
//! - The apiserver and admin Secrets (`kubernetes.io/tls`: `ca.crt`, `tls.crt`, `tls.key`) are
//!   (re)issued when missing, not signed by the CA, for another identity, for other names
//!   (the `raftmesh.io/sans` annotation records what they were made for), or within
//!   `--renew-before-days` of expiry. The API servers reload their files when the kubelet
//!   updates the mounted Secret; meshctl reads the admin Secret at every use.
//! - Writes are conditional on the version read (a replace carries its resourceVersion), so
//!   two runs at once cannot interleave; a run that changes nothing writes nothing.
//! - With `--export-ca NAMESPACE/NAME`, the CA certificate alone (`ca.crt`, no key) is also
//!   kept in a ConfigMap there: the agents run in a namespace of their own (one whose Pod
//!   Security level admits them), and a pod mounts Secrets and ConfigMaps of its own namespace
//!   only.
//!
//! [`plan`] decides from the Secrets as read; [`run`] reads and writes them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow};
use certs::pki::{CertificateAuthority, LeafSpec, Validity};
use certs::{Identity, Role};
use clap::Args;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use crate::Failure;

/// The annotation recording the names a certificate was issued for.
pub const SANS_ANNOTATION: &str = "raftmesh.io/sans";

/// Flags of `meshctl pki sync-secrets`.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The namespace of the Secrets [default: the pod's own namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The cluster the CA issues identities for.
    #[arg(long)]
    pub cluster: String,
    /// The CA Secret (ca.crt, ca.key).
    #[arg(long)]
    pub ca_secret: String,
    /// The API servers' Secret, and the name in its identity.
    #[arg(long)]
    pub apiserver_secret: String,
    #[arg(long, default_value = "apiserver")]
    pub apiserver_name: String,
    /// A DNS name or IP address the apiserver certificate is valid for (repeatable; `*.`
    /// wildcards allowed).
    #[arg(long = "san", required = true)]
    pub sans: Vec<String>,
    /// The admin Secret (what meshctl --context <kubeconfig context> uses), and the name in
    /// its identity.
    #[arg(long)]
    pub admin_secret: String,
    #[arg(long, default_value = "admin")]
    pub admin_name: String,
    /// Days issued certificates are valid for.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(2..=3650))]
    pub days: u32,
    /// Reissue certificates this many days before they expire.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3649))]
    pub renew_before_days: u32,
    /// Days a new CA is valid for.
    #[arg(long, default_value_t = certs::pki::CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub ca_days: u32,
    /// Print what would change, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also keep the CA certificate (`ca.crt`) in this ConfigMap (`NAMESPACE/NAME`), for pods of
    /// another namespace (the agents').
    #[arg(long, value_parser = parse_namespaced)]
    pub export_ca: Option<(String, String)>,
}

/// `NAMESPACE/NAME`, both DNS labels.
fn parse_namespaced(s: &str) -> Result<(String, String), String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected NAMESPACE/NAME"))?;
    for part in [ns, name] {
        certs::identity::check_name("--export-ca", part).map_err(|e| e.to_string())?;
    }
    Ok((ns.to_owned(), name.to_owned()))
}

/// The ConfigMap holding `ca_pem` as `ca.crt`, if `existing` (as read; `None`: absent) does
/// not hold it already: (the object, the resourceVersion to replace, if any).
pub fn ca_configmap(
    namespace: &str,
    name: &str,
    ca_pem: &str,
    existing: Option<&ConfigMap>,
) -> Option<(ConfigMap, Option<String>)> {
    if let Some(cm) = existing
        && cm
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .is_some_and(|v| v == ca_pem)
    {
        return None;
    }
    let cm = ConfigMap {
        metadata: pki_meta(name, namespace),
        data: Some(BTreeMap::from([("ca.crt".to_owned(), ca_pem.to_owned())])),
        ..Default::default()
    };
    let version = existing.and_then(|e| e.metadata.resource_version.clone());
    Some((cm, version))
}

/// A Secret to write: created when `resource_version` is `None`, else replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub secret: Secret,
    pub resource_version: Option<String>,
    /// Why, for the log.
    pub reason: String,
}

/// What a run decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Things to tell the operator that need a person (a CA close to expiry).
    pub warnings: Vec<String>,
}

/// Decides the writes from the Secrets as read (`None`: absent), at `now`.
pub fn plan(
    args: &SyncArgs,
    existing: &BTreeMap<String, Option<Secret>>,
    now: SystemTime,
) -> anyhow::Result<Plan> {
    let renew_before = Duration::from_secs(u64::from(args.renew_before_days) * 86_400);
    if args.renew_before_days >= args.days {
        anyhow::bail!("--renew-before-days must be less than --days");
    }
    let mut writes = Vec::new();
    let mut warnings = Vec::new();
    let current = |name: &str| existing.get(name).cloned().flatten();

    let ca_secret = current(&args.ca_secret);
    let ca = match &ca_secret {
        Some(s) => {
            let ca = CertificateAuthority::from_pem(&field(s, "ca.crt")?, &field(s, "ca.key")?)
                .with_context(|| format!("Secret {}", args.ca_secret))?;
            if ca.cluster() != args.cluster {
                anyhow::bail!(
                    "Secret {} holds the CA of cluster {}, not {}",
                    args.ca_secret,
                    ca.cluster(),
                    args.cluster
                );
            }
            let ca_validity = certs::pki::validity_of(ca.cert_pem())?;
            if ca_validity.not_after <= now + renew_before {
                warnings.push(format!(
                    "the CA in Secret {} expires within {} days: replace it (README, rotating certificates)",
                    args.ca_secret, args.renew_before_days
                ));
            }
            ca
        }
        None => {
            // Leaves without their CA: an install made before the chart made its PKI. A new CA
            // would silently replace the one every member, admin and remote trusts.
            for leaf in [&args.apiserver_secret, &args.admin_secret] {
                if current(leaf).is_some() {
                    anyhow::bail!(
                        "Secret {leaf} exists but the CA Secret {} does not: import the CA that issued it first (kubectl -n {} create secret generic {} --from-file=ca.crt --from-file=ca.key)",
                        args.ca_secret,
                        args.namespace,
                        args.ca_secret
                    );
                }
            }
            let ca = CertificateAuthority::generate(
                &args.cluster,
                Validity::days_from_now(args.ca_days),
            )?;
            writes.push(Write {
                secret: secret(
                    &args.ca_secret,
                    &args.namespace,
                    "Opaque",
                    &[("ca.crt", ca.cert_pem()), ("ca.key", &ca.key_pem())],
                    None,
                ),
                resource_version: None,
                reason: "no CA yet".to_owned(),
            });
            ca
        }
    };

    let leaves = [
        (
            &args.apiserver_secret,
            Role::Apiserver,
            &args.apiserver_name,
            args.sans.clone(),
        ),
        (
            &args.admin_secret,
            Role::Admin,
            &args.admin_name,
            Vec::new(),
        ),
    ];
    for (name, role, holder, sans) in leaves {
        let identity = Identity::new(&args.cluster, role, holder)?;
        let have = current(name);
        let reason = match &have {
            None => Some("missing".to_owned()),
            Some(s) => stale(s, &ca, &identity, &sans, now, renew_before),
        };
        let Some(reason) = reason else { continue };
        let issued = ca.issue(&LeafSpec {
            identity,
            sans: sans.clone(),
            validity: Validity::days_from_now(args.days),
        })?;
        writes.push(Write {
            secret: secret(
                name,
                &args.namespace,
                "kubernetes.io/tls",
                &[
                    ("ca.crt", ca.cert_pem()),
                    ("tls.crt", &issued.cert_pem),
                    ("tls.key", &issued.key_pem),
                ],
                Some(sans.join(",")),
            ),
            resource_version: have.and_then(|s| s.metadata.resource_version),
            reason,
        });
    }
    Ok(Plan { writes, warnings })
}

/// Why a leaf Secret must be reissued, if it must.
fn stale(
    s: &Secret,
    ca: &CertificateAuthority,
    identity: &Identity,
    sans: &[String],
    now: SystemTime,
    renew_before: Duration,
) -> Option<String> {
    let (Ok(cert), Ok(ca_crt)) = (field(s, "tls.crt"), field(s, "ca.crt")) else {
        return Some("incomplete".to_owned());
    };
    if field(s, "tls.key").is_err() {
        return Some("incomplete".to_owned());
    }
    if ca_crt != ca.cert_pem() || certs::tls::verify_issued_by(&cert, ca.cert_pem()).is_err() {
        return Some("not issued by the CA".to_owned());
    }
    match certs::pki::leaf_info(&cert) {
        Ok((id, _)) if &id != identity => return Some(format!("is {id}, not {identity}")),
        Err(e) => return Some(format!("unreadable: {e}")),
        Ok(_) => {}
    }
    let recorded = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SANS_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    if recorded != sans.join(",") {
        return Some(format!(
            "names changed ({recorded:?} → {:?})",
            sans.join(",")
        ));
    }
    match certs::pki::validity_of(&cert) {
        Ok(v) if v.not_after > now + renew_before => None,
        Ok(_) => Some("expires soon".to_owned()),
        Err(e) => Some(format!("unreadable: {e}")),
    }
}

fn field(s: &Secret, key: &str) -> anyhow::Result<String> {
    let bytes = s.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| {
        anyhow!(
            "Secret {} has no {key}",
            s.metadata.name.as_deref().unwrap_or_default()
        )
    })?;
    String::from_utf8(bytes.0.clone()).map_err(|_| anyhow!("{key} is not PEM"))
}

fn secret(
    name: &str,
    namespace: &str,
    type_: &str,
    data: &[(&str, &str)],
    sans: Option<String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            annotations: sans.map(|s| BTreeMap::from([(SANS_ANNOTATION.to_owned(), s)])),
            ..pki_meta(name, namespace)
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The name, namespace and labels of an object the PKI writes.
fn pki_meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "raftmesh".to_owned()),
            ("app.kubernetes.io/component".to_owned(), "pki".to_owned()),
        ])),
        ..Default::default()
    }
}

/// Runs `meshctl pki sync-secrets` with the in-cluster credentials.
pub fn run(args: SyncArgs) -> Result<(), Failure> {
    certs::identity::check_name("cluster", &args.cluster)
        .map_err(|e| Failure::BadInput(e.into()))?;
    let runtime = crate::runtime()?;
    runtime.block_on(sync(&args)).map_err(Failure::Other)
}

async fn sync(args: &SyncArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let api: Api<Secret> = Api::namespaced(client, &args.namespace);
    let mut existing = BTreeMap::new();
    for name in [&args.ca_secret, &args.apiserver_secret, &args.admin_secret] {
        let s = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {}/{name}", args.namespace))?;
        existing.insert(name.clone(), s);
    }
    let plan = plan(args, &existing, SystemTime::now())?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if plan.writes.is_empty() {
        println!("the PKI Secrets in {} are current", args.namespace);
    }
    for w in &plan.writes {
        let name = w.secret.metadata.name.clone().unwrap_or_default();
        if args.dry_run {
            println!(
                "would write Secret {}/{name} ({})",
                args.namespace, w.reason
            );
            continue;
        }
        match &w.resource_version {
            None => {
                api.create(&PostParams::default(), &w.secret)
                    .await
                    .with_context(|| format!("creating Secret {}/{name}", args.namespace))?;
            }
            Some(version) => {
                let mut secret = w.secret.clone();
                secret.metadata.resource_version = Some(version.clone());
                api.replace(&name, &PostParams::default(), &secret)
                    .await
                    .with_context(|| format!("replacing Secret {}/{name}", args.namespace))?;
            }
        }
        println!("wrote Secret {}/{name} ({})", args.namespace, w.reason);
    }
    if let Some((ns, name)) = &args.export_ca {
        export_ca(&api, args, ns, name).await?;
    }
    Ok(())
}

/// Keeps the CA certificate (as stored now) in ConfigMap `ns/name`.
async fn export_ca(api: &Api<Secret>, args: &SyncArgs, ns: &str, name: &str) -> anyhow::Result<()> {
    let ca = match api
        .get_opt(&args.ca_secret)
        .await
        .with_context(|| format!("reading Secret {}/{}", args.namespace, args.ca_secret))?
    {
        Some(s) => field(&s, "ca.crt")?,
        // Only in a dry run: a real one has just made it.
        None => return Ok(()),
    };
    let cms: Api<ConfigMap> = Api::namespaced(api.clone().into_client(), ns);
    let existing = cms
        .get_opt(name)
        .await
        .with_context(|| format!("reading ConfigMap {ns}/{name}"))?;
    let Some((cm, version)) = ca_configmap(ns, name, &ca, existing.as_ref()) else {
        println!("ConfigMap {ns}/{name} holds the CA certificate");
        return Ok(());
    };
    if args.dry_run {
        println!("would write ConfigMap {ns}/{name} (the CA certificate)");
        return Ok(());
    }
    match version {
        None => {
            cms.create(&PostParams::default(), &cm)
                .await
                .with_context(|| format!("creating ConfigMap {ns}/{name}"))?;
        }
        Some(v) => {
            let mut cm = cm;
            cm.metadata.resource_version = Some(v);
            cms.replace(name, &PostParams::default(), &cm)
                .await
                .with_context(|| format!("replacing ConfigMap {ns}/{name}"))?;
        }
    }
    println!("wrote ConfigMap {ns}/{name} (the CA certificate)");
    Ok(())
}

#[cfg(test)]
mod tests;
