//! etcd's Lease service. Grant and revoke go through the log; keep-alive and time-to-live
//! are answered by the leader, which keeps the deadlines (see `lessor.rs`).

use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseServer, PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest,
    PbLeaseTimeToLiveResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{allow, convert, requires_leader, status};
use crate::auth::Operation;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::mvcc::MAX_LEASE_TTL;
use crate::node::Node;
use crate::raft_types::Command;

/// The Lease service of one member.
#[derive(Debug, Clone)]
pub struct Lease {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

impl Lease {
    /// Serves `node`'s leases.
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> PbLeaseServer<Self> {
        PbLeaseServer::new(Self { node, metrics })
    }
}

/// A fresh lease id: positive, unlikely to collide; the state machine refuses a collision
/// with `ErrLeaseExist`, and the grant is retried with another id.
fn new_lease_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 1).max(1) as i64
}

/// Whether `owner` granted lease `id` (an unknown lease passes: keeping it alive answers TTL 0).
/// A lease's owner never changes, so a lease this member knows is decided at once; one it does
/// not know yet is looked up again after a ReadIndex.
async fn owns(node: &Node, owner: &str, id: i64) -> Result<(), Error> {
    let foreign = |node: &Node| {
        node.shared
            .read()
            .mvcc
            .lease(id)
            .map(|l| l.owner.as_deref() != Some(owner))
    };
    let foreign = match foreign(node) {
        Some(f) => f,
        None => {
            node.linearize().await?;
            foreign(node).unwrap_or(false)
        }
    };
    if foreign {
        return Err(node.auth().lease_denied());
    }
    Ok(())
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbLeaseService for Lease {
    async fn lease_grant(
        &self,
        req: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let _t = self.metrics.rpc("LeaseGrant");
        let caller = self.node.auth().caller(req.extensions());
        let limits = self.node.auth().lease_limits(&caller).map_err(status)?;
        let req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(status(Error::LeaseTtlTooLarge));
        }
        let limits_now = self.node.store_limits();
        let (leases, own) = {
            let shared = self.node.shared.read();
            let own = limits.as_ref().map(|l| shared.mvcc.leases_of(&l.owner));
            (shared.mvcc.lease_count(), own)
        };
        if leases >= limits_now.max_leases {
            return Err(status(Error::TooManyLeases));
        }
        if own.is_some_and(|n| n >= limits_now.per_identity.leases) {
            tracing::warn!(
                owner = limits.as_ref().map(|l| l.owner.as_str()),
                held = own,
                "lease grant refused: the identity holds --max-leases-per-identity"
            );
            return Err(status(Error::TooManyLeases));
        }
        self.node
            .admit(crate::mvcc::VERSION_OVERHEAD)
            .await
            .map_err(status)?;
        // Shorter leases are lengthened, as etcd does, so they survive an election.
        let ttl = req.ttl.max(self.node.min_lease_ttl());
        let chosen = req.id == 0;
        for _ in 0..3 {
            let id = if chosen { new_lease_id() } else { req.id };
            let cmd = match &limits {
                None => Command::LeaseGrant { id, ttl },
                Some(l) => Command::LeaseGrantOwned {
                    id,
                    ttl,
                    owner: l.owner.clone(),
                },
            };
            let reply = self.node.propose(cmd).await.map_err(status)?;
            match reply.result {
                Err(Error::LeaseExist) if chosen => continue,
                Err(e) => return Err(status(e)),
                Ok(_) => {
                    return Ok(Response::new(PbLeaseGrantResponse {
                        header: convert::header(self.node.header(reply.revision)),
                        id,
                        ttl,
                        error: String::new(),
                    }));
                }
            }
        }
        Err(status(Error::LeaseExist))
    }

    async fn lease_revoke(
        &self,
        req: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let _t = self.metrics.rpc("LeaseRevoke");
        let caller = self.node.auth().caller(req.extensions());
        let id = req.into_inner().id;
        // A limited caller revokes only its own leases, and only those holding keys it may
        // delete (revoking deletes them): checked when the revoke applies.
        let cmd = match self.node.auth().lease_limits(&caller).map_err(status)? {
            None => Command::LeaseRevoke { id },
            Some(l) => Command::LeaseRevokeOwned {
                id,
                owner: l.owner,
                keys: l.keys.into_iter().map(bytes::Bytes::from).collect(),
            },
        };
        let reply = self.node.propose(cmd).await.map_err(status)?;
        reply.result.map_err(status)?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: convert::header(self.node.header(reply.revision)),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        // As etcd: a stream that requires a leader is refused without one, and ended once its
        // member has lost it.
        let required = requires_leader(&req);
        if required && self.node.leader().is_none() {
            return Err(status(Error::NoLeader));
        }
        let caller = self.node.auth().caller(req.extensions());
        let limits = self.node.auth().lease_limits(&caller).map_err(status)?;
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let lost = super::leader_lost(&node, required);
            tokio::pin!(lost);
            loop {
                let req = tokio::select! {
                    () = &mut lost => {
                        let _ = tx.send(Err(status(Error::NoLeader))).await;
                        return;
                    }
                    req = requests.next() => match req {
                        Some(Ok(req)) => req,
                        _ => return,
                    },
                };
                let _t = metrics.rpc("LeaseKeepAlive");
                // A limited caller keeps alive only its own leases (owners never change, so
                // the current state decides).
                if let Some(l) = &limits
                    && let Err(e) = owns(&node, &l.owner, req.id).await
                {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
                let ttl = match node.lease_keep_alive(req.id).await {
                    Ok(ttl) => ttl,
                    // etcd answers an unknown lease with TTL 0 on the stream.
                    Err(Error::LeaseNotFound) => 0,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let resp = PbLeaseKeepAliveResponse {
                    header: convert::header(node.current_header()),
                    id: req.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let _t = self.metrics.rpc("LeaseTimeToLive");
        allow(&self.node, &req, Operation::UseLeases)?;
        let caller = self.node.auth().caller(req.extensions());
        let req = req.into_inner();
        let ttl = self.node.lease_time_to_live(req.id).await.map_err(status)?;
        let header = convert::header(self.node.current_header());
        // etcd answers an unknown lease with TTL -1, not an error.
        let resp = match ttl {
            None => PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            },
            Some(t) => PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                // Only the attached keys the caller may read.
                keys: if req.keys {
                    t.keys
                        .into_iter()
                        .filter(|k| self.node.auth().read(&caller, k, b"").is_ok())
                        .map(Vec::from)
                        .collect()
                } else {
                    vec![]
                },
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let _t = self.metrics.rpc("LeaseLeases");
        allow(&self.node, &req, Operation::UseLeases)?;
        self.node.linearize().await.map_err(status)?;
        let leases = self
            .node
            .shared
            .read()
            .mvcc
            .leases()
            .map(|(id, _)| PbLeaseStatus { id })
            .collect();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: convert::header(self.node.current_header()),
            leases,
        }))
    }
}
