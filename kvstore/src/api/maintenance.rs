//! etcd's Maintenance service: Status and Alarm, which `etcdctl endpoint status/health` use.

use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceServer, PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse,
    PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{allow, convert};
use crate::auth::Operation;
use crate::metrics::Metrics;
use crate::node::Node;

/// The etcd API version this server implements, as Status reports it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// The Maintenance service of one member.
#[derive(Debug, Clone)]
pub struct Maintenance {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

impl Maintenance {
    /// Serves `node`'s status.
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> PbMaintenanceServer<Self> {
        PbMaintenanceServer::new(Self { node, metrics })
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for Maintenance {
    async fn alarm(
        &self,
        req: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        let _t = self.metrics.rpc("Alarm");
        // GET reads; activating or deactivating an alarm administers.
        let op = if req.get_ref().action == 0 {
            Operation::ReadCluster
        } else {
            Operation::Administer
        };
        allow(&self.node, &req, op)?;
        // No alarms are raised (no space quota yet): GET answers none, as a healthy etcd.
        Ok(Response::new(PbAlarmResponse {
            header: convert::header(self.node.current_header()),
            alarms: vec![],
        }))
    }

    async fn status(
        &self,
        req: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let _t = self.metrics.rpc("Status");
        allow(&self.node, &req, Operation::ReadCluster)?;
        let m = self.node.raft.metrics().borrow().clone();
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.node.id);
        let db_size = self.metrics.db_size(&self.node) as i64;
        Ok(Response::new(PbStatusResponse {
            header: convert::header(self.node.current_header()),
            version: ETCD_API_VERSION.to_owned(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: vec![],
            db_size_in_use: db_size,
            is_learner,
            storage_version: String::new(),
            db_size_quota: 0,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        req: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("Defragment is not served"))
    }

    async fn hash(&self, req: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("Hash is not served"))
    }

    async fn hash_kv(
        &self,
        req: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("HashKV is not served"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<PbSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("Snapshot is not served"))
    }

    async fn move_leader(
        &self,
        req: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("MoveLeader is not served"))
    }

    async fn downgrade(
        &self,
        req: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("Downgrade is not served"))
    }
}
