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
    from_bytes(&req.into_inner().data)
}

fn from_bytes<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    bincode::deserialize(data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
}

/// Serves one AppendEntries (unary or on a stream).
async fn append(node: &Node, data: &[u8]) -> Result<pb::Blob, Status> {
    let result = node.raft.append_entries(from_bytes(data)?).await;
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

    type AppendStreamStream = AnswerStream;

    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<pb::Blob>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let answers = in_order(
            req.into_inner(),
            self.node.clone(),
            |node, data| async move { append(&node, &data).await },
        );
        Ok(Response::new(answers))
    }

    type CallStreamStream = AnswerStream;

    async fn call_stream(
        &self,
        req: Request<tonic::Streaming<pb::Blob>>,
    ) -> Result<Response<Self::CallStreamStream>, Status> {
        let answers = in_order(
            req.into_inner(),
            self.node.clone(),
            |node, data| async move { call(&node, &data).await },
        );
        Ok(Response::new(answers))
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
        call(&self.node, &req.into_inner().data)
            .await
            .map(Response::new)
    }
}

/// The answers of a streamed call, one per request message.
type AnswerStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Blob, Status>> + Send>>;

/// Answers each message of `inbound` with `serve`, one at a time and in order: the next is
/// read only once this one is answered. The stream ends at the first failure (the caller
/// opens another).
fn in_order<F, Fut>(inbound: tonic::Streaming<pb::Blob>, node: Arc<Node>, serve: F) -> AnswerStream
where
    F: Fn(Arc<Node>, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<pb::Blob, Status>> + Send + 'static,
{
    let serve = Arc::new(serve);
    let answers = futures::stream::unfold(Some((inbound, node)), move |state| {
        let serve = serve.clone();
        async move {
            let (mut inbound, node) = state?;
            match inbound.message().await {
                Ok(Some(blob)) => {
                    let answer = serve(node.clone(), blob.data).await;
                    let next = answer.is_ok().then_some((inbound, node));
                    Some((answer, next))
                }
                Ok(None) => None,
                Err(status) => Some((Err(status), None)),
            }
        }
    });
    Box::pin(answers)
}

/// Serves one forwarded call (unary or on a stream).
async fn call(node: &Node, data: &[u8]) -> Result<pb::Blob, Status> {
    let call: PeerRequest = from_bytes(data)?;
    #[cfg(feature = "fault-injection")]
    let write = matches!(call, PeerRequest::Propose(_) | PeerRequest::ProposeBatch(_));
    let result: Result<PeerResponse, Error> = node.serve_peer_call(call).await;
    #[cfg(feature = "fault-injection")]
    if write && result.is_ok() && crate::fault::lose_answer(node.log.dir()) {
        return Err(Status::unavailable("test fault: the answer was lost"));
    }
    encode(&result).map(Response::into_inner)
}
