//! Workloads that record what they did: KV clients and watchers ([`kv`]).

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

pub mod kv;

/// How to reach one cluster's API servers as its admin.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Client URLs (`https://ip:2379`).
    pub endpoints: Vec<String>,
    /// The cluster CA, and the admin's certificate and key (PEM files); `None`: plaintext.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Connect {
    /// The admin of a lab cluster whose PKI is in `pki` (`meshctl pki init`'s layout).
    pub fn admin(endpoints: Vec<String>, pki: &std::path::Path) -> Connect {
        Connect {
            endpoints,
            tls: Some((
                pki.join("ca.crt"),
                pki.join("admin-admin.crt"),
                pki.join("admin-admin.key"),
            )),
        }
    }

    /// A new connection to one member, `member` modulo their number: callers move to the
    /// next member after a failure (a client balanced over every member kept choosing a killed
    /// one). Keep-alives notice a member that stopped answering (frozen, partitioned) within
    /// about two seconds, so watches and requests on it fail rather than hang.
    pub async fn client(&self, member: usize) -> Result<Client, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true);
        if let Some((ca, cert, key)) = &self.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| {
                    etcd_client::Error::InvalidArgs(format!("reading {}: {e}", p.display()))
                })
            };
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(ca)?))
                    .identity(Identity::from_pem(read(cert)?, read(key)?)),
            );
        }
        let endpoint = &self.endpoints[member % self.endpoints.len()];
        Client::connect([endpoint.as_str()], Some(options)).await
    }
}
