//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvServer,
    PbKvService, PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse,
    PbRangeStreamResponse, PbTxnRequest, PbTxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{allow, convert, status};
use crate::auth::{Caller, Operation};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::raft_types::{Command, Outcome, Reply};
use crate::validate;

/// The KV service of one member.
#[derive(Debug, Clone)]
pub struct Kv {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

impl Kv {
    /// Serves `node`'s key space.
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> PbKvServer<Self> {
        PbKvServer::new(Self { node, metrics })
            .max_decoding_message_size(super::MAX_DECODE_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    fn check_size(req: &impl Message) -> Result<(), Status> {
        if req.encoded_len() > validate::MAX_REQUEST_BYTES {
            return Err(status(Error::RequestTooLarge));
        }
        Ok(())
    }

    /// `cmd` as the state machine applies it for `caller`: a write attaching keys to leases by
    /// a caller limited to its own leases is wrapped, so the state machine checks the leases'
    /// owner when it applies.
    fn as_caller(&self, caller: &Caller, cmd: Command) -> Result<Command, Status> {
        let mut leases = Vec::new();
        crate::state_machine::attached_leases(&cmd, &mut leases);
        if leases.is_empty() {
            return Ok(cmd);
        }
        Ok(
            match self.node.auth().lease_limits(caller).map_err(status)? {
                None => cmd,
                Some(l) => Command::As {
                    owner: l.owner,
                    cmd: Box::new(cmd),
                },
            },
        )
    }

    /// Holds a write of an agent or remote identity to its per-identity bounds
    /// ([`crate::per_identity`]): values of at most `value_bytes`, writes at most at its rate.
    fn limit_writes(&self, caller: &Caller, largest_value: usize) -> Result<(), Status> {
        let Some(identity) = self.node.auth().limited(caller) else {
            return Ok(());
        };
        let limits = self.node.store_limits().per_identity;
        if largest_value > limits.value_bytes {
            tracing::warn!(%identity, bytes = largest_value, limit = limits.value_bytes, "write refused: a value past --max-value-bytes-per-identity");
            return Err(status(Error::RequestTooLarge));
        }
        let now = std::time::Instant::now();
        if !self
            .node
            .usage()
            .charge_write(&identity, limits.writes_per_second, now)
        {
            tracing::debug!(%identity, "write refused: past --max-writes-per-second-per-identity");
            return Err(status(Error::TooManyRequests));
        }
        Ok(())
    }

    async fn write(&self, cmd: Command) -> Result<(Outcome, i64), Status> {
        let Reply { revision, result } = self.node.propose(cmd).await.map_err(status)?;
        Ok((result.map_err(status)?, revision))
    }

    /// The `lose-acked-put` test fault ([`crate::fault`]): acknowledges `req` with the
    /// revision of a write to another key.
    #[cfg(feature = "fault-injection")]
    async fn lose_put(
        &self,
        req: crate::request::PutRequest,
    ) -> Result<Response<PbPutResponse>, Status> {
        let decoy = crate::request::PutRequest {
            key: bytes::Bytes::from_static(crate::fault::DECOY_KEY),
            value: req.key.clone(),
            ..Default::default()
        };
        let (_, rev) = self.write(Command::Put(decoy)).await?;
        tracing::error!(
            key = %String::from_utf8_lossy(&req.key),
            revision = rev,
            "test fault: acknowledged a put without writing it"
        );
        Ok(Response::new(convert::put_response(
            crate::request::PutResponse::default(),
            self.node.header(rev),
        )))
    }
}

type RangeStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<PbRangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbKvService for Kv {
    async fn range(
        &self,
        req: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let _t = self.metrics.rpc("Range");
        let caller = self.node.auth().caller(req.extensions());
        let req = convert::range_request(req.into_inner());
        validate::range(&req).map_err(status)?;
        self.node
            .auth()
            .read(&caller, &req.key, &req.range_end)
            .map_err(status)?;
        if !req.serializable {
            self.node.linearize().await.map_err(status)?;
        }
        let (resp, revision) = {
            let data = self.node.shared.read();
            (data.mvcc.range(&req), data.mvcc.revision())
        };
        let resp = resp.map_err(status)?;
        Ok(Response::new(convert::range_response(
            resp,
            self.node.header(revision),
        )))
    }

    type RangeStreamStream = RangeStream;

    async fn range_stream(
        &self,
        _req: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented("RangeStream is not served"))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let _t = self.metrics.rpc("Put");
        let caller = self.node.auth().caller(req.extensions());
        let req = req.into_inner();
        Self::check_size(&req)?;
        let req = convert::put_request(req);
        validate::put(&req).map_err(status)?;
        self.node
            .auth()
            .write(&caller, &req.key, b"")
            .map_err(status)?;
        self.limit_writes(&caller, req.value.len())?;
        self.node.admit(put_cost(&req)).await.map_err(status)?;
        #[cfg(feature = "fault-injection")]
        if crate::fault::lose_put(&req.key) {
            return self.lose_put(req).await;
        }
        let cmd = self.as_caller(&caller, Command::Put(req))?;
        match self.write(cmd).await? {
            (Outcome::Put(r), rev) => Ok(Response::new(convert::put_response(
                r,
                self.node.header(rev),
            ))),
            (other, _) => Err(mismatch(&other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let _t = self.metrics.rpc("DeleteRange");
        let caller = self.node.auth().caller(req.extensions());
        let req = req.into_inner();
        Self::check_size(&req)?;
        let req = convert::delete_request(req);
        validate::delete_range(&req).map_err(status)?;
        self.node
            .auth()
            .write(&caller, &req.key, &req.range_end)
            .map_err(status)?;
        self.limit_writes(&caller, 0)?;
        match self.write(Command::DeleteRange(req)).await? {
            (Outcome::DeleteRange(r), rev) => Ok(Response::new(convert::delete_response(
                r,
                self.node.header(rev),
            ))),
            (other, _) => Err(mismatch(&other)),
        }
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let _t = self.metrics.rpc("Txn");
        let caller = self.node.auth().caller(req.extensions());
        let req = req.into_inner();
        Self::check_size(&req)?;
        let req = convert::txn_request(req);
        // The shape first (bounded by the op budget, as etcd orders it), then who may do it,
        // and only then the O(n log n) duplicate-key checks.
        validate::txn(&req).map_err(status)?;
        self.node.auth().txn(&caller, &req).map_err(status)?;
        validate::txn_keys(&req).map_err(status)?;
        if req.is_read_only() {
            // A txn that cannot write is a read: ReadIndex, not a log entry (as etcd).
            self.node.linearize().await.map_err(status)?;
            let (resp, revision) = {
                let data = self.node.shared.read();
                (data.mvcc.txn_read(&req), data.mvcc.revision())
            };
            let resp = resp.map_err(status)?;
            return Ok(Response::new(convert::txn_response(
                resp,
                self.node.header(revision),
            )));
        }
        self.limit_writes(&caller, largest_value(&req))?;
        let cost = txn_cost(&req);
        if cost > 0 {
            self.node.admit(cost).await.map_err(status)?;
        }
        let cmd = self.as_caller(&caller, Command::Txn(req))?;
        match self.write(cmd).await? {
            (Outcome::Txn(r), rev) => Ok(Response::new(convert::txn_response(
                r,
                self.node.header(rev),
            ))),
            (other, _) => Err(mismatch(&other)),
        }
    }

    async fn compact(
        &self,
        req: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let _t = self.metrics.rpc("Compact");
        allow(&self.node, &req, Operation::Administer)?;
        let revision = req.into_inner().revision;
        let (_, rev) = self.write(Command::Compact { revision }).await?;
        Ok(Response::new(PbCompactionResponse {
            header: convert::header(self.node.header(rev)),
        }))
    }
}

fn mismatch(outcome: &Outcome) -> Status {
    tracing::error!(?outcome, "state machine answered a different request");
    status(Error::Unhealthy)
}

/// What a put adds to the store's counted size.
fn put_cost(req: &crate::request::PutRequest) -> u64 {
    (req.key.len() + req.value.len()) as u64 + crate::mvcc::VERSION_OVERHEAD
}

/// What a txn may add: its costlier branch, nested txns included (as etcd's quota counts).
/// The largest value a put of `req` carries, at any depth.
fn largest_value(req: &crate::request::TxnRequest) -> usize {
    req.success
        .iter()
        .chain(&req.failure)
        .map(|op| match op {
            crate::request::RequestOp::Put(p) => p.value.len(),
            crate::request::RequestOp::Txn(t) => largest_value(t),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

fn txn_cost(req: &crate::request::TxnRequest) -> u64 {
    fn branch(ops: &[crate::request::RequestOp]) -> u64 {
        ops.iter()
            .map(|op| match op {
                crate::request::RequestOp::Put(p) => put_cost(p),
                crate::request::RequestOp::Txn(t) => txn_cost(t),
                _ => 0,
            })
            .sum()
    }
    branch(&req.success).max(branch(&req.failure))
}
