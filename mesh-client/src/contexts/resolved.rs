//! A context resolved: the cluster it names, with its endpoints and credentials in files (or,
//! for a kubeconfig context, the install found through the cluster's API), and the clients
//! made of it. [`super::ConfigFile`] resolves meshctl's contexts into it, [`super::kube`]
//! kubeconfig contexts.

use std::path::PathBuf;
use std::time::Duration;

use crate::pki::PkiDir;
use crate::{Credentials, Settings};
use anyhow::{Context as _, anyhow, bail};
use certs::pki::CertificateAuthority;
use etcd_client::Client;

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
    /// A client of a member of the cluster that knows a leader (the first that answers, in
    /// the context's order), whose unary requests time out after `timeout`.
    pub async fn client(&self, timeout: Duration) -> anyhow::Result<Client> {
        let settings = Settings::timeouts(Duration::from_secs(5), Some(timeout));
        let credentials = self.credentials();
        let (client, _) = crate::with_leader(&self.endpoints, 0, credentials.as_ref(), &settings)
            .await
            .with_context(|| format!("connecting to {}", self.name))?;
        Ok(client)
    }

    /// A client of a member that answers, one that knows a leader if any does: for showing
    /// the cluster's own state, which a cluster without a leader still has.
    pub async fn any_client(&self, timeout: Duration) -> anyhow::Result<Client> {
        let settings = Settings::timeouts(Duration::from_secs(5), Some(timeout));
        let credentials = self.credentials();
        let (client, _) = crate::answering(&self.endpoints, 0, credentials.as_ref(), &settings)
            .await
            .with_context(|| format!("connecting to {}", self.name))?;
        Ok(client)
    }

    /// A client of one member's `url`, with the context's credentials.
    pub async fn member_client(&self, url: &str, timeout: Duration) -> anyhow::Result<Client> {
        let settings = Settings::timeouts(timeout, Some(timeout));
        Ok(crate::member(url, self.credentials().as_ref(), &settings).await?)
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
        let pki = PkiDir::new(dir);
        Ok(CertificateAuthority::load(&pki.ca_cert(), &pki.ca_key())?)
    }
}
