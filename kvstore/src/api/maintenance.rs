//! etcd's Maintenance service: Status and Alarm (which `etcdctl endpoint status/health` use).

use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbAlarmMember, PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse,
    PbDowngradeRequest, PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest,
    PbHashResponse, PbMaintenanceServer, PbMaintenanceService, PbMoveLeaderRequest,
    PbMoveLeaderResponse, PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{allow, convert, status};
use crate::auth::Operation;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::raft_types::{Command, Outcome};

/// The etcd API version this server implements, as Status reports it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Bytes per message of a streamed backup.
const SNAPSHOT_CHUNK: usize = 1 << 20;

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
        let req = req.into_inner();
        let listed = |alarms: Vec<(u64, i32)>| {
            alarms
                .into_iter()
                .map(|(member_id, alarm)| PbAlarmMember { member_id, alarm })
                .collect()
        };
        let alarms = match req.action {
            // GET: every raised alarm of the type asked for (all for NONE), as etcd.
            0 => {
                self.node.linearize().await.map_err(status)?;
                let data = self.node.shared.read();
                data.alarms
                    .iter()
                    .filter(|(_, a)| req.alarm == 0 || *a == req.alarm)
                    .copied()
                    .collect()
            }
            action @ (1 | 2) => {
                if req.alarm == 0 {
                    return Err(Status::invalid_argument("etcdserver: no alarm type given"));
                }
                let cmd = Command::Alarm {
                    activate: action == 1,
                    member: req.member_id,
                    alarm: req.alarm,
                };
                match self.node.propose(cmd).await.map_err(status)?.result {
                    Ok(Outcome::Alarms(changed)) => changed,
                    Ok(other) => {
                        return Err(Status::internal(format!("unexpected outcome {other:?}")));
                    }
                    Err(e) => return Err(status(e)),
                }
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm action {other}"
                )));
            }
        };
        Ok(Response::new(PbAlarmResponse {
            header: convert::header(self.node.current_header()),
            alarms: listed(alarms),
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
        // etcd lists the raised alarms as the status's errors.
        let alarms = self
            .node
            .shared
            .read()
            .alarms
            .iter()
            .map(|(member, alarm)| format!("memberID:{member} alarm:{} ", alarm_name(*alarm)))
            .collect();
        Ok(Response::new(PbStatusResponse {
            header: convert::header(self.node.current_header()),
            version: ETCD_API_VERSION.to_owned(),
            db_size,
            leader: self.node.leader().unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: alarms,
            db_size_in_use: db_size,
            is_learner,
            storage_version: String::new(),
            db_size_quota: i64::try_from(self.node.store_limits().quota_bytes).unwrap_or(i64::MAX),
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        req: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        let _t = self.metrics.rpc("Defragment");
        allow(&self.node, &req, Operation::Administer)?;
        // Nothing here fragments; what an operator wants from defrag is the disk back. A
        // snapshot of the current state lets this member drop the log it covers.
        self.node.compact_disk().await.map_err(status)?;
        Ok(Response::new(PbDefragmentResponse {
            header: convert::header(self.node.current_header()),
        }))
    }

    async fn hash(&self, req: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        let _t = self.metrics.rpc("Hash");
        allow(&self.node, &req, Operation::Administer)?;
        let (hashed, current) = {
            let data = self.node.shared.read();
            (data.mvcc.hash_kv(0), data.mvcc.revision())
        };
        let (hash, _) = hashed.map_err(status)?;
        Ok(Response::new(PbHashResponse {
            header: convert::header(self.node.header(current)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        let _t = self.metrics.rpc("HashKV");
        allow(&self.node, &req, Operation::Administer)?;
        // This member's own state, as etcd: comparing members is the point.
        let asked = req.get_ref().revision;
        let (hashed, current) = {
            let data = self.node.shared.read();
            (data.mvcc.hash_kv(asked), data.mvcc.revision())
        };
        let (hash, compact_revision) = hashed.map_err(status)?;
        Ok(Response::new(PbHashKvResponse {
            header: convert::header(self.node.header(current)),
            hash,
            compact_revision,
            hash_revision: if asked > 0 { asked } else { current },
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<PbSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let _t = self.metrics.rpc("Snapshot");
        allow(&self.node, &req, Operation::Administer)?;
        // A consistent copy: every write acknowledged before the call, taken under the lock
        // (values are shared, not copied), then encoded off the runtime.
        self.node.linearize().await.map_err(status)?;
        let (data, revision) = {
            let data = self.node.shared.read();
            let copy = crate::state_machine::Data {
                mvcc: data.mvcc.clone(),
                ..Default::default()
            };
            (copy, data.mvcc.revision())
        };
        let bytes = tokio::task::spawn_blocking(move || crate::backup::encode(&data))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(revision, bytes = bytes.len(), "streaming a backup");
        let header = convert::header(self.node.header(revision));
        // Chunks are cut as the client reads them, so the backup is in memory once.
        let total = bytes.len();
        let chunks = (0..total.div_ceil(SNAPSHOT_CHUNK)).map(move |i| {
            let end = total.min((i + 1) * SNAPSHOT_CHUNK);
            Ok(PbSnapshotResponse {
                header,
                remaining_bytes: (total - end) as u64,
                blob: bytes[i * SNAPSHOT_CHUNK..end].to_vec(),
                version: ETCD_API_VERSION.to_owned(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        req: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        let _t = self.metrics.rpc("MoveLeader");
        allow(&self.node, &req, Operation::Administer)?;
        let target = req.into_inner().target_id;
        self.node.move_leader(target).await.map_err(status)?;
        Ok(Response::new(PbMoveLeaderResponse {
            header: convert::header(self.node.current_header()),
        }))
    }

    async fn downgrade(
        &self,
        req: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("Downgrade is not served"))
    }
}

/// etcd's name of an `AlarmType`.
fn alarm_name(alarm: i32) -> &'static str {
    match alarm {
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "NONE",
    }
}
