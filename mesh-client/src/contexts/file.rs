//! meshctl contexts, like kubectl's: named clusters (endpoints and credentials) in
//! `$RAFTMESH_CONFIG` (default `~/.raftmesh/config`, mode 0600), one of them current.
//!
//! A context names its credentials either with a PKI directory as `meshctl pki init` writes it
//! (`ca.crt`, `ca.key`, `admin-<name>.crt|key`; `meshctl connect` needs the CA key to issue
//! remote certificates) or with explicit CA, certificate and key files.
//!
//! A name that is no meshctl context but a kubeconfig context resolves through the cluster's
//! API (see [`super::kube`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::ClusterContext;
use crate::pki::PkiDir;

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

impl ContextEntry {
    /// The context named `name` that this entry describes, with its files resolved.
    pub fn context(&self, name: &str) -> anyhow::Result<ClusterContext> {
        let entry = self;
        if entry.endpoints.is_empty() {
            bail!("context {name:?} has no endpoints");
        }
        let tls = match (&entry.cacert, &entry.cert, &entry.key, &entry.pki_dir) {
            (Some(ca), Some(cert), Some(key), _) => Some((ca.clone(), cert.clone(), key.clone())),
            (None, None, None, Some(dir)) => {
                let (cert, key) = admin_files(dir)?;
                Some((PkiDir::new(dir).ca_cert(), cert, key))
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
            return entry.context(&name);
        }
        if super::kube::has_context(&name) {
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
    let cache = super::kube::cache_dir(&base, name);
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(super::kube::resolve(name, &cache))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow!("resolving kubeconfig context {name:?} panicked")))
    })
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
