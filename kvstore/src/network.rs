//! The client side of the peer port: openraft's network and the calls a member makes to the
//! leader (forwarded writes, ReadIndex, lease renewal) or to any peer (discovery).
//!
//! A leader's AppendEntries to a follower go on one long-lived `AppendStream` call
//! ([`Connection`]): a request message, then its answer, one at a time, as openraft sends them.
//! Any failure or timeout drops the stream, so an answer is never read as a later request's; a
//! request that fails on a stream opened earlier goes once more on a fresh one. A peer without
//! the call (an older member, answering `Unimplemented`) gets unary `AppendEntries` calls.
//!
//! A follower forwards its writes to the leader the same way, on `CallStream` calls it keeps
//! open ([`Peers::forward`]): one request, then its answer, on each; as many calls as writes
//! in flight, each back in the idle set once answered and dropped at any failure.
//!
//! Channels are created lazily and cached per peer URL; tonic reconnects on its own. With
//! peer TLS configured, every connection is mutual TLS with the member's peer certificate and
//! the other end must prove it is a member of the same cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use certs::tls::ClientTls;

use crate::error::Error;
use crate::peer::pb::Blob;
use crate::peer::pb::peer_client::PeerClient;
use crate::peer::{PeerRequest, PeerResponse};
use crate::raft_types::{Member, NodeId, TypeConfig};
use crate::tls::PeerConnector;

/// Cached channels to peers, by URL.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Opens TLS connections; `None` for plaintext (`--insecure-plaintext`).
    tls: Option<PeerConnector>,
    /// When each peer last accepted this member's AppendEntries.
    acks: crate::prevote::Acks,
    /// Open `CallStream` calls waiting for the next forwarded call, by peer URL.
    idle_calls: Arc<Mutex<HashMap<String, Vec<BlobStream>>>>,
    /// Peers (by URL) that answered `CallStream` with `Unimplemented` (an older member,
    /// during a rolling upgrade): calls forwarded to them go as unary calls.
    unary_calls: Arc<Mutex<HashSet<String>>>,
}

/// Most `CallStream` calls kept idle per peer: a follower has at most
/// [`crate::propose::MAX_IN_FLIGHT`] batches of writes out at once.
const IDLE_CALLS: usize = 4;

/// A failure to reach a peer or to understand its answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The member has no usable peer URL.
    #[error("member has no valid peer URL: {urls:?}")]
    NoUrl {
        /// The URLs it has.
        urls: Vec<String>,
    },
    /// The RPC failed at the transport or the peer refused it.
    #[error("peer RPC to {url} failed: {status}")]
    Rpc {
        /// The peer.
        url: String,
        /// What gRPC said.
        status: tonic::Status,
    },
    /// The payload did not decode.
    #[error("peer payload: {0}")]
    Codec(#[from] bincode::Error),
}

impl PeerError {
    /// Whether the request certainly never reached the peer: it has no address, or no
    /// connection to it could be made (refused, unreachable, handshake failed). A forwarded
    /// write failing so may be sent again; one failing otherwise may have been appended.
    pub fn never_sent(&self) -> bool {
        match self {
            PeerError::NoUrl { .. } => true,
            PeerError::Rpc { status, .. } => {
                let mut source = std::error::Error::source(status);
                while let Some(e) = source {
                    if e.is::<tonic::ConnectError>() {
                        return true;
                    }
                    source = e.source();
                }
                false
            }
            PeerError::Codec(_) => false,
        }
    }
}

impl Peers {
    /// Channels that connect with `tls` (plaintext when `None`).
    pub fn new(tls: Option<Arc<ClientTls>>) -> Self {
        Self {
            channels: Arc::default(),
            tls: tls.map(PeerConnector::new),
            acks: Default::default(),
            idle_calls: Arc::default(),
            unary_calls: Arc::default(),
        }
    }

    /// When each peer last accepted this member's AppendEntries.
    pub(crate) fn acks(&self) -> &crate::prevote::Acks {
        &self.acks
    }

    fn channel(&self, urls: &[String]) -> Result<(String, Channel), PeerError> {
        let url = urls
            .first()
            .ok_or_else(|| PeerError::NoUrl { urls: vec![] })?;
        let mut map = self.channels.lock().expect("peer channel cache poisoned");
        if let Some(ch) = map.get(url) {
            return Ok((url.clone(), ch.clone()));
        }
        // With TLS our connector wraps every connection; tonic itself must see a plain http://
        // URI, or it refuses an https:// one for lack of its own TLS settings.
        let endpoint = match (&self.tls, url.strip_prefix("https://")) {
            (Some(_), Some(rest)) => format!("http://{rest}"),
            _ => url.clone(),
        };
        let ch = Endpoint::from_shared(endpoint)
            .map_err(|_| PeerError::NoUrl {
                urls: urls.to_vec(),
            })?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let ch = match &self.tls {
            Some(connector) => ch.connect_with_connector_lazy(connector.clone()),
            None => ch.connect_lazy(),
        };
        map.insert(url.clone(), ch.clone());
        Ok((url.clone(), ch))
    }

    /// A client of the peer service at `urls`, on the cached channel, with no message size
    /// limit (members of one cluster trust each other's sizes).
    fn client(&self, urls: &[String]) -> Result<(String, PeerClient<Channel>), PeerError> {
        let (url, ch) = self.channel(urls)?;
        let client = PeerClient::new(ch)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Ok((url, client))
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        urls: &[String],
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let (url, mut client) = self.client(urls)?;
        let mut request = tonic::Request::new(Blob {
            data: bincode::serialize(req)?,
        });
        request.set_timeout(timeout);
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
            Method::Call => client.call(request).await,
        }
        .map_err(|status| PeerError::Rpc { url, status })?;
        Ok(bincode::deserialize(&reply.into_inner().data)?)
    }

    /// Opens a streamed call (`AppendStream` or `CallStream`) to the member at `urls`.
    async fn open_stream(
        &self,
        urls: &[String],
        method: Streamed,
    ) -> Result<BlobStream, PeerError> {
        let (url, mut client) = self.client(urls)?;
        let (requests, outbound) = tokio::sync::mpsc::channel(1);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(outbound);
        let answers = match method {
            Streamed::Appends => client.append_stream(outbound).await,
            Streamed::Calls => client.call_stream(outbound).await,
        }
        .map_err(|status| PeerError::Rpc { url, status })?
        .into_inner();
        Ok(BlobStream { requests, answers })
    }

    /// Sends `req` to the member at `urls`, as [`Peers::call`] does, but on one of the
    /// `CallStream` calls kept open to it (a new one if none is idle), which spares each call
    /// an HTTP/2 stream of its own. Fails as `call` would: a call answered with an error or
    /// not at all may have been served (a numbered write is then sent again and applied once,
    /// [`crate::session`]; this is what made kept-open calls safe for writes: on one, a write
    /// sent just as the leader died fails after it may have gone out).
    pub async fn forward(
        &self,
        urls: &[String],
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<Result<PeerResponse, Error>, PeerError> {
        let url = urls
            .first()
            .ok_or_else(|| PeerError::NoUrl { urls: vec![] })?
            .clone();
        if self
            .unary_calls
            .lock()
            .expect("not poisoned")
            .contains(&url)
        {
            return self.call(urls, req, timeout).await;
        }
        let data = bincode::serialize(req)?;
        let exchange = async {
            let mut stream = match self.idle_call(&url) {
                Some(stream) => stream,
                None => self.open_stream(urls, Streamed::Calls).await?,
            };
            let answer = stream.exchange(&url, data).await?;
            Ok::<_, PeerError>((stream, answer))
        };
        let (stream, answer) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(done)) => done,
            Ok(Err(PeerError::Rpc { status, .. }))
                if status.code() == tonic::Code::Unimplemented =>
            {
                // Refused before anything was served.
                tracing::info!(
                    peer = url,
                    "the peer serves no call stream: one call per call"
                );
                self.unary_calls.lock().expect("not poisoned").insert(url);
                return self.call(urls, req, timeout).await;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(PeerError::Rpc {
                    url,
                    status: tonic::Status::deadline_exceeded(format!(
                        "no answer within {timeout:?}"
                    )),
                });
            }
        };
        let mut idle = self.idle_calls.lock().expect("not poisoned");
        let streams = idle.entry(url).or_default();
        if streams.len() < IDLE_CALLS {
            streams.push(stream);
        }
        drop(idle);
        Ok(bincode::deserialize(&answer.data)?)
    }

    /// An idle `CallStream` call to `url` that is still open, if there is one.
    fn idle_call(&self, url: &str) -> Option<BlobStream> {
        let mut idle = self.idle_calls.lock().expect("not poisoned");
        let streams = idle.get_mut(url)?;
        while let Some(mut stream) = streams.pop() {
            if stream.is_open() {
                return Some(stream);
            }
        }
        None
    }

    /// Sends `req` to the member at `urls` and returns its answer.
    pub async fn call(
        &self,
        urls: &[String],
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<Result<PeerResponse, Error>, PeerError> {
        self.rpc(urls, Method::Call, req, timeout).await
    }
}

/// The streamed calls of the peer service.
#[derive(Debug, Clone, Copy)]
enum Streamed {
    Appends,
    Calls,
}

#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Call,
}

/// openraft's network factory over the peer port.
#[derive(Debug, Clone, Default)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// A factory sharing `peers`' channels.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct Connection {
    peers: Peers,
    target: NodeId,
    urls: Vec<String>,
    /// The AppendEntries stream to the peer, once opened; dropped at any failure.
    appends: Option<BlobStream>,
    /// The peer does not serve `AppendStream` (a member of an older version, during a rolling
    /// upgrade): AppendEntries go as unary calls.
    unary: bool,
}

/// An open streamed call (`AppendStream`, `CallStream`): requests go out through `requests`,
/// and each is answered on `answers` in order. One request is out at a time (openraft sends a
/// peer one AppendEntries at a time, `RaftNetwork::append_entries` takes `&mut self`; a
/// forwarded call takes the stream out of the idle set), and the stream is dropped whenever a
/// request fails or times out, so an answer is never read as the answer to a later request.
#[derive(Debug)]
struct BlobStream {
    requests: tokio::sync::mpsc::Sender<Blob>,
    answers: tonic::Streaming<Blob>,
}

impl BlobStream {
    /// Sends one request and waits for its answer.
    async fn exchange(&mut self, url: &str, data: Vec<u8>) -> Result<Blob, PeerError> {
        let closed = || PeerError::Rpc {
            url: url.to_owned(),
            status: tonic::Status::unavailable("the peer's stream closed"),
        };
        self.requests
            .send(Blob { data })
            .await
            .map_err(|_| closed())?;
        match self.answers.message().await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(closed()),
            Err(status) => Err(PeerError::Rpc {
                url: url.to_owned(),
                status,
            }),
        }
    }

    /// Whether the call is still open, as far as can be told without waiting: the peer sends
    /// nothing unasked, so an answer or an end that is ready now means the call is over.
    fn is_open(&mut self) -> bool {
        !self.requests.is_closed() && self.answers.message().now_or_never().is_none()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            peers: self.peers.clone(),
            target,
            urls: node.peer_urls.clone(),
            appends: None,
            unary: false,
        }
    }
}

impl Connection {
    async fn send<Req, Resp, E>(
        &self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, E> = self
            .peers
            .rpc(&self.urls, method, req, option.hard_ttl())
            .await
            .map_err(rpc_error)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends one AppendEntries on the peer's stream and returns the answer. A stream opened
    /// earlier may have ended since without a sign (the peer restarted, the connection
    /// dropped): if it fails for any reason but the deadline, the request goes once more on a
    /// fresh stream within the same `timeout`. The peer may so receive an AppendEntries twice,
    /// which Raft takes as it takes any repeated one. (Reported at once instead, a restarted
    /// peer's first AppendEntries would fail as unreachable and openraft would back off before
    /// the next: `mesh-bench kv` saw a restarted member serve 0.25 s later.)
    async fn append(&mut self, data: Vec<u8>, timeout: Duration) -> Result<Blob, PeerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self.appends.is_some() {
            match self.exchange(data.clone(), deadline, timeout).await {
                Err(PeerError::Rpc { status, .. })
                    if status.code() != tonic::Code::DeadlineExceeded => {}
                done => return done,
            }
        }
        self.exchange(data, deadline, timeout).await
    }

    /// One AppendEntries on the stream (opened first if there is none) by `deadline`; any
    /// failure drops the stream.
    async fn exchange(
        &mut self,
        data: Vec<u8>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Blob, PeerError> {
        let url = self.urls.first().cloned().unwrap_or_default();
        let exchange = async {
            if self.appends.is_none() {
                self.appends = Some(
                    self.peers
                        .open_stream(&self.urls, Streamed::Appends)
                        .await?,
                );
            }
            let stream = self.appends.as_mut().expect("opened above");
            stream.exchange(&url, data).await
        };
        let result = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Rpc {
                url,
                status: tonic::Status::deadline_exceeded(format!(
                    "no AppendEntries answer within {timeout:?}"
                )),
            }),
        };
        if result.is_err() {
            self.appends = None;
        }
        result
    }
}

/// openraft's view of a failed peer call: unreachable (openraft backs off) when the peer
/// could not be reached or its stream closed, a network error otherwise.
fn rpc_error<E: std::error::Error>(e: PeerError) -> RPCError<NodeId, Member, E> {
    match &e {
        PeerError::Rpc { status, .. } if status.code() == tonic::Code::Unavailable => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let mut streamed = None;
        if !self.unary {
            let data = bincode::serialize(&rpc).map_err(|e| rpc_error(e.into()))?;
            match self.append(data, option.hard_ttl()).await {
                Err(PeerError::Rpc { status, .. })
                    if status.code() == tonic::Code::Unimplemented =>
                {
                    tracing::info!(
                        peer = self.target,
                        "the peer serves no AppendEntries stream: one call per AppendEntries"
                    );
                    self.unary = true;
                }
                answer => streamed = Some(answer.map_err(rpc_error)?),
            }
        }
        let resp = match streamed {
            Some(answer) => {
                let result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                    bincode::deserialize(&answer.data).map_err(|e| rpc_error(e.into()))?;
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?
            }
            None => self.send(Method::AppendEntries, &rpc, &option).await?,
        };
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.peers.acks.acked(self.target);
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.send(Method::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use openraft::Vote;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::peer::pb;

    /// A fake peer that answers every AppendEntries with success and every forwarded call
    /// with the number of calls it served: as an older member (`old`: unary calls only, the
    /// streams `Unimplemented`), or as a current one that ends every AppendEntries stream
    /// after its first answer, as a peer that restarted or lost the connection would.
    #[derive(Default)]
    struct FakePeer {
        old: bool,
        /// Unary AppendEntries answered.
        appends: Arc<AtomicUsize>,
        /// Forwarded calls answered, unary or streamed.
        calls: Arc<AtomicUsize>,
        /// `CallStream` calls opened.
        call_streams: Arc<AtomicUsize>,
    }

    impl FakePeer {
        fn answer_call(&self) -> Blob {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let answer: Result<PeerResponse, Error> = Ok(PeerResponse::ReadIndex(n as u64));
            Blob {
                data: bincode::serialize(&answer).unwrap(),
            }
        }
    }

    fn success() -> Blob {
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Ok(AppendEntriesResponse::Success);
        Blob {
            data: bincode::serialize(&answer).unwrap(),
        }
    }

    #[tonic::async_trait]
    impl pb::peer_server::Peer for FakePeer {
        async fn append_entries(&self, _: Request<Blob>) -> Result<Response<Blob>, Status> {
            if !self.old {
                return Err(Status::internal("a current peer gets them on the stream"));
            }
            self.appends.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(success()))
        }
        type AppendStreamStream =
            std::pin::Pin<Box<dyn futures::Stream<Item = Result<Blob, Status>> + Send>>;
        async fn append_stream(
            &self,
            req: Request<tonic::Streaming<Blob>>,
        ) -> Result<Response<Self::AppendStreamStream>, Status> {
            if self.old {
                return Err(Status::unimplemented("not in this version"));
            }
            let mut inbound = req.into_inner();
            let answer = futures::stream::once(async move {
                inbound.message().await?;
                Ok(success())
            });
            Ok(Response::new(Box::pin(answer)))
        }
        async fn vote(&self, _: Request<Blob>) -> Result<Response<Blob>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn install_snapshot(&self, _: Request<Blob>) -> Result<Response<Blob>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn call(&self, _: Request<Blob>) -> Result<Response<Blob>, Status> {
            if !self.old {
                return Err(Status::internal("a current peer gets them on a stream"));
            }
            Ok(Response::new(self.answer_call()))
        }
        type CallStreamStream =
            std::pin::Pin<Box<dyn futures::Stream<Item = Result<Blob, Status>> + Send>>;
        async fn call_stream(
            &self,
            req: Request<tonic::Streaming<Blob>>,
        ) -> Result<Response<Self::CallStreamStream>, Status> {
            if self.old {
                return Err(Status::unimplemented("not in this version"));
            }
            self.call_streams.fetch_add(1, Ordering::SeqCst);
            let peer = FakePeer {
                calls: self.calls.clone(),
                ..Default::default()
            };
            let answers = futures::stream::unfold(
                (req.into_inner(), peer),
                |(mut inbound, peer)| async move {
                    inbound.message().await.ok()??;
                    Some((Ok(peer.answer_call()), (inbound, peer)))
                },
            );
            Ok(Response::new(Box::pin(answers)))
        }
    }

    fn serve(
        listener: tokio::net::TcpListener,
        peer: impl pb::peer_server::Peer,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(pb::peer_server::PeerServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        })
    }

    fn heartbeat() -> AppendEntriesRequest<crate::raft_types::TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        }
    }

    /// A peer whose end of the stream is gone (it restarted, the connection dropped) gets
    /// the next AppendEntries on a fresh stream at once: an error there would make openraft
    /// take the peer for unreachable and back off.
    #[tokio::test]
    async fn a_peer_that_ended_the_stream_gets_the_next_append_entries_on_a_fresh_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = serve(listener, FakePeer::default());
        let member = Member {
            peer_urls: vec![format!("http://{addr}")],
            ..Default::default()
        };
        let mut connection = Network::default().new_client(2, &member).await;
        for _ in 0..3 {
            let answer = connection
                .append_entries(heartbeat(), RPCOption::new(Duration::from_secs(5)))
                .await;
            assert!(
                matches!(answer, Ok(AppendEntriesResponse::Success)),
                "{answer:?}"
            );
        }
        assert!(!connection.unary);
    }

    /// A rolling upgrade: a member whose peer serves no AppendEntries stream (it answers
    /// `Unimplemented`) still gets every AppendEntries, as unary calls.
    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_append_entries() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = FakePeer {
            old: true,
            ..Default::default()
        };
        let appends = peer.appends.clone();
        let _server = serve(listener, peer);
        let member = Member {
            peer_urls: vec![format!("http://{addr}")],
            ..Default::default()
        };
        let mut connection = Network::default().new_client(2, &member).await;
        for expected in 1..=2 {
            let answer = connection
                .append_entries(heartbeat(), RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
            assert!(matches!(answer, AppendEntriesResponse::Success));
            assert_eq!(appends.load(Ordering::SeqCst), expected);
        }
        assert!(connection.unary, "the fallback is remembered");
    }

    fn urls(addr: std::net::SocketAddr) -> Vec<String> {
        vec![format!("http://{addr}")]
    }

    async fn forward_three(peers: &Peers, urls: &[String]) -> Vec<u64> {
        let mut answers = Vec::new();
        for _ in 0..3 {
            let answer = peers
                .forward(urls, &PeerRequest::ReadIndex, Duration::from_secs(5))
                .await;
            match answer {
                Ok(Ok(PeerResponse::ReadIndex(n))) => answers.push(n),
                other => panic!("{other:?}"),
            }
        }
        answers
    }

    /// Calls forwarded one after another go on one `CallStream` call, each answered in turn.
    #[tokio::test]
    async fn forwarded_calls_share_one_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let urls = urls(listener.local_addr().unwrap());
        let peer = FakePeer::default();
        let streams = peer.call_streams.clone();
        let _server = serve(listener, peer);
        let peers = Peers::default();
        assert_eq!(forward_three(&peers, &urls).await, [1, 2, 3]);
        assert_eq!(streams.load(Ordering::SeqCst), 1);
    }

    /// A rolling upgrade: a leader whose peer service has no `CallStream` (it answers
    /// `Unimplemented`, having served nothing) gets every forwarded call as a unary call.
    #[tokio::test]
    async fn a_peer_without_the_call_stream_gets_unary_calls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let urls = urls(listener.local_addr().unwrap());
        let peer = FakePeer {
            old: true,
            ..Default::default()
        };
        let _server = serve(listener, peer);
        let peers = Peers::default();
        assert_eq!(forward_three(&peers, &urls).await, [1, 2, 3]);
        assert!(peers.unary_calls.lock().unwrap().contains(&urls[0]));
    }
}
