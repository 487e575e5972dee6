//! The node key record, `mesh/v1/<cluster>/nodekeys/<node>`: the one key the agent writes (its
//! certificate allows nothing else), under a lease it keeps alive, so a dead node's key
//! expires and every peer drops it.
//!
//! The agent publishes at start (with a new lease: the previous process's lease is unknown and
//! left to expire, holding no key once the record is put again), whenever the store's record
//! differs from its own (deleted by hand, expired during an outage), and keeps the lease alive
//! every [`KEEPALIVE`].

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use mesh_api::records::NodeKeyRecord;
use mesh_api::{Key, Record, SCHEMA};

use crate::source;
use crate::state::{MeshState, NodeKey};

/// The lease's time to live: a node silent this long loses its peers.
pub const TTL_SECS: i64 = 60;
/// How often the lease is kept alive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a keepalive reply may take before the connection is given up and made again.
const KEEPALIVE_REPLY: Duration = Duration::from_secs(5);

/// Publishes one node's key.
#[derive(Debug)]
pub struct Publisher {
    key: String,
    value: Vec<u8>,
    public_key: [u8; 32],
    port: u16,
    probe_port: Option<u16>,
    cluster: String,
    node: String,
    lease: Option<i64>,
    /// The store revision of the last write: until the watch reaches it, the state cannot
    /// show the record yet.
    written_at: i64,
}

fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> source::Error {
    move |e| source::Error::Etcd {
        op,
        source: Box::new(e),
    }
}

impl Publisher {
    /// The record of `node` in `cluster`: `public_key`, `port`, where the agent answers
    /// reachability probes, and this boot's id.
    pub fn new(
        cluster: &str,
        node: &str,
        public_key: [u8; 32],
        port: u16,
        probe_port: Option<u16>,
    ) -> Publisher {
        let record = Record::NodeKey(NodeKeyRecord {
            schema: SCHEMA,
            public_key: super::key::encode(&public_key),
            listen_port: u32::from(port),
            boot_id: super::key::boot_id(),
            probe_port: probe_port.map_or(0, u32::from),
        });
        Publisher {
            key: Key::NodeKey {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
            }
            .to_string(),
            value: record.encode(),
            public_key,
            port,
            probe_port,
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            lease: None,
            written_at: 0,
        }
    }

    /// Whether the record must be written: never written by this process, or the store's
    /// copy differs once the watch has reached (`revision`) the last write.
    pub fn needed(&self, state: &MeshState, revision: i64) -> bool {
        if self.lease.is_none() {
            return true;
        }
        revision >= self.written_at
            && state
                .clusters
                .get(&self.cluster)
                .and_then(|c| c.nodekeys.get(&self.node))
                .is_none_or(|k: &NodeKey| {
                    (k.public_key, k.port, k.probe_port)
                        != (self.public_key, self.port, self.probe_port)
                })
    }

    /// Writes the record under the lease (a new one if there is none or it expired).
    pub async fn publish(&mut self, client: &mut Client) -> Result<(), source::Error> {
        if let Some(lease) = self.lease {
            let put = client
                .put(
                    self.key.as_str(),
                    self.value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await;
            match put {
                Ok(r) => {
                    self.written_at = r.header().map_or(0, |h| h.revision());
                    return Ok(());
                }
                Err(e) if e.to_string().contains("lease not found") => self.lease = None,
                Err(e) => return Err(etcd("publishing the node key")(e)),
            }
        }
        let lease = client
            .lease_grant(TTL_SECS, None)
            .await
            .map_err(etcd("granting the node key's lease"))?
            .id();
        let put = client
            .put(
                self.key.as_str(),
                self.value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd("publishing the node key"))?;
        self.written_at = put.header().map_or(0, |h| h.revision());
        self.lease = Some(lease);
        tracing::info!(
            key = %self.key,
            lease = format!("{lease:x}"),
            ttl_secs = TTL_SECS,
            "node key published"
        );
        Ok(())
    }

    /// Keeps the lease alive; a lease found expired is forgotten, so the next check publishes
    /// again.
    pub async fn keep_alive(&mut self, client: &mut Client) -> Result<(), source::Error> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .map_err(etcd("keeping the node key's lease alive"))?;
        keeper
            .keep_alive()
            .await
            .map_err(etcd("keeping the node key's lease alive"))?;
        // The stream has no deadline of its own: an API server that never answers must not
        // hold up the agent's loop (its ticks and watches wait on this).
        let reply = tokio::time::timeout(KEEPALIVE_REPLY, stream.message())
            .await
            .map_err(|_| source::Error::Timeout {
                op: "keeping the node key's lease alive",
                after: KEEPALIVE_REPLY,
            })?
            .map_err(etcd("keeping the node key's lease alive"))?;
        if reply.is_none_or(|r| r.ttl() <= 0) {
            tracing::warn!(key = %self.key, "the node key's lease expired; publishing again");
            self.lease = None;
        }
        Ok(())
    }
}
