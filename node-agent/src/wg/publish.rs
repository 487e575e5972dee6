//! The node key record, `mesh/v1/<cluster>/nodekeys/<node>`: the one key the agent writes (its
//! certificate allows nothing else), under a lease it keeps alive, so a dead node's key
//! expires and every peer drops it.
//!
//! The agent publishes at start (with a new lease: the previous process's lease is unknown and
//! left to expire, holding no key once the record is put again), whenever the store's record
//! differs from its own (deleted by hand, expired during an outage), and keeps the lease alive
//! every [`KEEPALIVE`].
//!
//! With reachability probing, the agent also keeps `mesh/status/reach/<cluster>/<node>` (what
//! it finds unreachable, [`mesh_api::reach`]) under the same lease: written when the judgement
//! changes, at most every [`REACH_EVERY`], and again under a new lease. It is a report, not
//! state anything depends on: a write that fails (an older API server refusing the key, the
//! per-identity write rate) is logged and tried again after [`REACH_RETRY`], never ending the
//! agent's session.

use std::time::Duration;

use tokio::time::Instant;

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
/// The reachability record is written at most this often.
pub const REACH_EVERY: Duration = Duration::from_secs(1);
/// After a failed write of the reachability record, the next attempt waits this long.
pub const REACH_RETRY: Duration = Duration::from_secs(30);

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
    /// The reachability record: what is to be written and what was (value and lease).
    reach: Reach,
}

/// The reachability record's writes.
#[derive(Debug, Default)]
struct Reach {
    key: String,
    /// The value to write; `None` without probing.
    wanted: Option<Vec<u8>>,
    /// The value and lease last written.
    written: Option<(Vec<u8>, i64)>,
    /// No write before this (the rate, or a failure's wait).
    not_before: Option<Instant>,
    /// The last failure logged, so a repeated one is logged once.
    failed: Option<String>,
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
            reach: Reach {
                key: Key::NodeReach {
                    cluster: cluster.to_owned(),
                    node: node.to_owned(),
                }
                .to_string(),
                ..Reach::default()
            },
        }
    }

    /// The reachability record to publish from now on.
    pub fn set_reach(&mut self, record: &mesh_api::reach::ReachRecord) {
        self.reach.wanted = Some(prost::Message::encode_to_vec(record));
    }

    /// When the reachability record is to be written next: `None` if it is written already
    /// (under the current lease) or there is no lease yet.
    pub fn reach_due(&self) -> Option<Instant> {
        let lease = self.lease?;
        let wanted = self.reach.wanted.as_ref()?;
        if self
            .reach
            .written
            .as_ref()
            .is_some_and(|(v, l)| v == wanted && *l == lease)
        {
            return None;
        }
        Some(self.reach.not_before.unwrap_or_else(Instant::now))
    }

    /// Reads the reachability record back (with the keepalive, every [`KEEPALIVE`]): one
    /// deleted or changed by hand is written again. No agent watches these keys, so this read
    /// is how the agent learns it.
    pub async fn check_reach(&mut self, client: &mut Client) -> Result<(), source::Error> {
        let Some((written, _)) = &self.reach.written else {
            return Ok(());
        };
        let got = client
            .get(self.reach.key.as_str(), None)
            .await
            .map_err(etcd("reading the reachability record back"))?;
        if got.kvs().first().map(|kv| kv.value()) != Some(written.as_slice()) {
            tracing::info!(key = %self.reach.key, "the reachability record was changed or deleted; writing it again");
            self.reach.written = None;
        }
        Ok(())
    }

    /// Writes the reachability record under the node key's lease. A failure is logged and
    /// retried later; it never fails the session (the watches notice a broken connection).
    pub async fn publish_reach(&mut self, client: &mut Client) {
        let (Some(lease), Some(value)) = (self.lease, self.reach.wanted.clone()) else {
            return;
        };
        let put = client
            .put(
                self.reach.key.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await;
        match put {
            Ok(_) => {
                self.reach.not_before = Some(Instant::now() + REACH_EVERY);
                self.reach.written = Some((value, lease));
                if self.reach.failed.take().is_some() {
                    tracing::info!(key = %self.reach.key, "reachability record published again");
                }
            }
            Err(e) => {
                let e = e.to_string();
                self.reach.not_before = Some(Instant::now() + REACH_RETRY);
                if e.contains("lease not found") {
                    // The node key's next check publishes it under a new lease.
                    self.lease = None;
                }
                if self.reach.failed.as_ref() != Some(&e) {
                    tracing::warn!(
                        key = %self.reach.key,
                        retry_in = ?REACH_RETRY,
                        "could not publish the reachability record (meshctl status will not show this node's view): {e}"
                    );
                    self.reach.failed = Some(e);
                }
            }
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
