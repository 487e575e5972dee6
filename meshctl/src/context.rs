//! meshctl contexts, like kubectl's: named clusters (endpoints and credentials) in
//! `$RAFTMESH_CONFIG` (default `~/.raftmesh/config`, mode 0600), one of them current.
//!
//! A context names its credentials either with a PKI directory as `meshctl pki init` writes it
//! (`ca.crt`, `ca.key`, `admin-<name>.crt|key`; `meshctl connect` needs the CA key to issue
//! remote certificates) or with explicit CA, certificate and key files.
//!
//! A name that is no meshctl context but a kubeconfig context resolves through the cluster's
//! API (see [`crate::kube`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use certs::pki::CertificateAuthority;
use etcd_client::Client;
use mesh_client::{Credentials, Settings};
use serde::{Deserialize, Serialize};

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "RAFTMESH_CONFIG";

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfigFile {
    /// The context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextEntry>,
}

/// One context as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ContextEntry {
    /// Client URLs of the cluster's API server (`https://host:port`).
    pub endpoints: Vec<String>,
    /// A PKI directory as `meshctl pki init` writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki_dir: Option<PathBuf>,
    /// The cluster's CA bundle (instead of the PKI directory's `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// An admin client certificate (instead of the PKI directory's `admin-*.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Where the config file is: `$RAFTMESH_CONFIG`, else `~/.raftmesh/config`.
pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither ${CONFIG_ENV} nor $HOME is set"))?;
    Ok(Path::new(&home).join(".raftmesh").join("config"))
}

impl ConfigFile {
    /// Reads the config file; a missing one is empty.
    pub fn load() -> anyhow::Result<(PathBuf, ConfigFile)> {
        let path = config_path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file = serde_yaml::from_str(&text)
                    .with_context(|| format!("{} is not a meshctl config", path.display()))?;
                Ok((path, file))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((path, ConfigFile::default())),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the config file (mode 0600, atomically).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_yaml::to_string(self)?;
        certs::pki::write_pem(path, &text).with_context(|| format!("writing {}", path.display()))
    }

    /// The context `name`, or the current one.
    pub fn resolve(&self, name: Option<&str>) -> anyhow::Result<ClusterContext> {
        let name = match name {
            Some(n) => n.to_owned(),
            None => self.current_context.clone().ok_or_else(|| {
                anyhow!(
                    "no --context given and no current context (meshctl config use-context NAME)"
                )
            })?,
        };
        if let Some(entry) = self.contexts.get(&name) {
            return ClusterContext::from_entry(&name, entry);
        }
        if crate::kubecontext::has_context(&name) {
            return resolve_kube(&name);
        }
        let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
        bail!(
            "no context {name:?}, neither meshctl's (known: {}; add one with meshctl config set-context) nor the kubeconfig's",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )
    }
}

/// Resolves a kubeconfig context on a thread of its own, so callers inside and outside a
/// runtime can both use [`ConfigFile::resolve`].
fn resolve_kube(name: &str) -> anyhow::Result<ClusterContext> {
    let base = config_path()?
        .parent()
        .map(|p| p.join("kube"))
        .ok_or_else(|| anyhow!("the meshctl config path has no directory"))?;
    let cache = crate::kubecontext::cache_dir(&base, name);
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::kubecontext::resolve(name, &cache))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow!("resolving kubeconfig context {name:?} panicked")))
    })
}

/// A CA certificate with its key, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

/// A raftmesh install found through a kubeconfig context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeInstall {
    /// Its namespace.
    pub namespace: String,
    /// Its remote Service.
    pub service: String,
    /// The cluster's name, as the Service's annotation gives it.
    pub cluster: Option<String>,
    /// Where it is reached from outside the cluster (`https://host:port`).
    pub endpoints: Vec<String>,
    /// The name its API server certificate carries, checked instead of the address.
    pub server_name: String,
    /// Its Secrets: admin credentials, and the CA with its key.
    pub admin_secret: String,
    pub ca_secret: String,
}

/// A context resolved to files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterContext {
    /// Its name.
    pub name: String,
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// CA bundle, certificate and key; `None` for a plaintext cluster.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// The PKI directory, when the context has one (its `ca.key` signs remote certificates).
    pub pki_dir: Option<PathBuf>,
    /// The CA with its key, when it came from elsewhere (a kubeconfig context's CA Secret).
    pub ca_pem: Option<CaPem>,
    /// The name the server's certificate is checked against, when not the endpoint's host.
    pub server_name: Option<String>,
    /// The install, when the context is a kubeconfig context.
    pub kube: Option<KubeInstall>,
}

impl ClusterContext {
    /// Resolves the files of `entry`.
    pub fn from_entry(name: &str, entry: &ContextEntry) -> anyhow::Result<ClusterContext> {
        if entry.endpoints.is_empty() {
            bail!("context {name:?} has no endpoints");
        }
        let tls = match (&entry.cacert, &entry.cert, &entry.key, &entry.pki_dir) {
            (Some(ca), Some(cert), Some(key), _) => Some((ca.clone(), cert.clone(), key.clone())),
            (None, None, None, Some(dir)) => {
                let (cert, key) = admin_files(dir)?;
                Some((dir.join("ca.crt"), cert, key))
            }
            (None, None, None, None) => None,
            _ => bail!("context {name:?}: give --cacert, --cert and --key together (or --pki-dir)"),
        };
        Ok(ClusterContext {
            name: name.to_owned(),
            endpoints: entry.endpoints.clone(),
            tls,
            pki_dir: entry.pki_dir.clone(),
            ca_pem: None,
            server_name: None,
            kube: None,
        })
    }

    /// A client of a member of the cluster that knows a leader (the first that answers, in
    /// the context's order), whose unary requests time out after `timeout`.
    pub async fn client(&self, timeout: Duration) -> anyhow::Result<Client> {
        let settings = Settings::timeouts(Duration::from_secs(5), Some(timeout));
        let credentials = self.credentials();
        let (client, _) =
            mesh_client::with_leader(&self.endpoints, 0, credentials.as_ref(), &settings)
                .await
                .with_context(|| format!("connecting to {}", self.name))?;
        Ok(client)
    }

    /// A client of a member that answers, one that knows a leader if any does: for showing
    /// the cluster's own state, which a cluster without a leader still has.
    pub async fn any_client(&self, timeout: Duration) -> anyhow::Result<Client> {
        let settings = Settings::timeouts(Duration::from_secs(5), Some(timeout));
        let credentials = self.credentials();
        let (client, _) =
            mesh_client::answering(&self.endpoints, 0, credentials.as_ref(), &settings)
                .await
                .with_context(|| format!("connecting to {}", self.name))?;
        Ok(client)
    }

    /// A client of one member's `url`, with the context's credentials.
    pub async fn member_client(&self, url: &str, timeout: Duration) -> anyhow::Result<Client> {
        let settings = Settings::timeouts(timeout, Some(timeout));
        Ok(mesh_client::member(url, self.credentials().as_ref(), &settings).await?)
    }

    /// The context's credentials (`None`: plaintext).
    pub fn credentials(&self) -> Option<Credentials> {
        let (ca, cert, key) = self.tls.as_ref()?;
        let c = Credentials::new(ca, cert, key);
        Some(match &self.server_name {
            Some(name) => c.with_server_name(name),
            None => c,
        })
    }

    /// The cluster this context's certificate belongs to (the `<c>` of its identity).
    pub fn cluster(&self) -> anyhow::Result<String> {
        let Some((_, cert, _)) = &self.tls else {
            bail!(
                "context {:?} has no certificate, so its cluster is unknown",
                self.name
            );
        };
        let pem = certs::pki::read_pem(cert)?;
        let (identity, _) = certs::pki::leaf_info(&pem)
            .with_context(|| format!("{} carries no raftmesh identity", cert.display()))?;
        Ok(identity.cluster)
    }

    /// The cluster's CA with its key, from the PKI directory.
    pub fn ca(&self) -> anyhow::Result<CertificateAuthority> {
        if let Some(ca) = &self.ca_pem {
            return Ok(CertificateAuthority::from_pem(&ca.cert, &ca.key)?);
        }
        if let Some(install) = &self.kube {
            bail!(
                "kubeconfig context {:?}: the CA Secret {}/{} is not readable with these credentials: connecting issues a certificate signed by each cluster's CA",
                self.name,
                install.namespace,
                install.ca_secret
            );
        }
        let dir = self.pki_dir.as_ref().ok_or_else(|| {
            anyhow!(
                "context {:?} has no PKI directory with the CA key (meshctl config set-context {} --pki-dir DIR): connecting issues a certificate signed by each cluster's CA",
                self.name,
                self.name
            )
        })?;
        Ok(CertificateAuthority::load(
            &dir.join("ca.crt"),
            &dir.join("ca.key"),
        )?)
    }
}

/// The admin certificate and key of a PKI directory: `admin-<name>.crt|key`, the first by
/// name when there are several.
fn admin_files(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut certs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the PKI directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("admin-") && n.ends_with(".crt"))
        })
        .collect();
    certs.sort();
    let cert = certs.into_iter().next().ok_or_else(|| {
        anyhow!(
            "{} holds no admin-*.crt (make one with meshctl pki issue --role admin)",
            dir.display()
        )
    })?;
    let key = cert.with_extension("key");
    if !key.is_file() {
        bail!("{} has no key {}", cert.display(), key.display());
    }
    Ok((cert, key))
}
