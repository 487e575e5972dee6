//! Workloads that record what they did: KV clients and watchers ([`kv`]).

use std::time::Duration;

use etcd_client::Client;
use mesh_client::pki::PkiDir;
use mesh_client::{Credentials, Settings};

pub mod kv;

/// A client error or a connection failure, for workloads that do both in one go.
pub type WorkloadError = Box<dyn std::error::Error + Send + Sync>;

/// How to reach one cluster's API servers as its admin.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Client URLs (`https://ip:2379`).
    pub endpoints: Vec<String>,
    /// The admin's credentials; `None`: plaintext.
    pub credentials: Option<Credentials>,
}

impl Connect {
    /// The admin of a lab cluster whose PKI is in `pki` (`meshctl pki init`'s layout).
    pub fn admin(endpoints: Vec<String>, pki: &std::path::Path) -> Connect {
        Connect {
            endpoints,
            credentials: Some(PkiDir::new(pki).admin()),
        }
    }

    /// A new connection to one member, `member` modulo their number: callers move to the
    /// next member after a failure (a client balanced over every member kept choosing a killed
    /// one). Keep-alives notice a member that stopped answering (frozen, partitioned) within
    /// about two seconds, so watches and requests on it fail rather than hang.
    pub async fn client(&self, member: usize) -> Result<Client, mesh_client::Error> {
        let settings = Settings::timeouts(Duration::from_secs(2), Some(Duration::from_secs(5)))
            .keep_alive(Duration::from_secs(1), Duration::from_secs(1), true);
        let endpoint = &self.endpoints[member % self.endpoints.len()];
        mesh_client::member(endpoint, self.credentials.as_ref(), &settings).await
    }
}
