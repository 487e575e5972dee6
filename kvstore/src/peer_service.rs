//! The server side of the peer port: Raft RPCs from the other members of this cluster, and
//! the calls they forward to this member ([`crate::peer`] has the messages).
//!
//! Trust boundary: this service is served on the peer port only, never on the client port,
//! because it accepts raw Raft messages. Only members of this cluster may reach it.

use std::sync::Arc;

use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse, pb};

/// The peer gRPC service.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// Serves `node`'s Raft and forwarded calls.
    pub fn new(node: Arc<Node>) -> pb::peer_server::PeerServer<Self> {
        pb::peer_server::PeerServer::new(Self { node })
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<pb::Blob>) -> Result<T, Status> {
    bincode::deserialize(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
}

/// Serves one AppendEntries (unary or on a stream).
async fn append(node: &Node, data: &[u8]) -> Result<pb::Blob, Status> {
    let rpc = bincode::deserialize(data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))?;
    let result = node.raft.append_entries(rpc).await;
    // Any answer but a higher vote means the sender is the leader this member follows.
    if matches!(&result, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
    {
        node.contact.heard();
    }
    encode(&result).map(Response::into_inner)
}

fn encode<T: Serialize>(value: &T) -> Result<Response<pb::Blob>, Status> {
    let data = bincode::serialize(value)
        .map_err(|e| Status::internal(format!("unencodable peer payload: {e}")))?;
    Ok(Response::new(pb::Blob { data }))
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn append_entries(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        append(&self.node, &req.into_inner().data)
            .await
            .map(Response::new)
    }

    type AppendStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Blob, Status>> + Send>>;

    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<pb::Blob>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        // One request at a time, answered in order: the next is read only once this one is
        // answered. The stream ends at the first failure (the leader opens another).
        let state = Some((req.into_inner(), self.node.clone()));
        let answers = futures::stream::unfold(state, |state| async move {
            let (mut inbound, node) = state?;
            match inbound.message().await {
                Ok(Some(blob)) => {
                    let answer = append(&node, &blob.data).await;
                    let next = answer.is_ok().then_some((inbound, node));
                    Some((answer, next))
                }
                Ok(None) => None,
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn call(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        let call: PeerRequest = decode(req)?;
        #[cfg(feature = "fault-injection")]
        let write = matches!(call, PeerRequest::Propose(_) | PeerRequest::ProposeBatch(_));
        let result: Result<PeerResponse, Error> = self.node.serve_peer_call(call).await;
        #[cfg(feature = "fault-injection")]
        if write && result.is_ok() && crate::fault::lose_answer(self.node.log.dir()) {
            return Err(Status::unavailable("test fault: the answer was lost"));
        }
        encode(&result)
    }
}
