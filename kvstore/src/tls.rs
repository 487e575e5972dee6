//! TLS on the member's ports: the server side (accepting connections, with the client's
//! identity attached to every request it sends), the peer client side (a connector for
//! tonic channels), and reloading certificates while serving.
//!
//! The handshake runs in its own task per connection with a deadline, so a client that sends
//! garbage, speaks plaintext or stalls is dropped without holding up anyone else; the port
//! never stops accepting, and when too many handshakes are in progress the oldest are closed
//! (see [`incoming`]). Rejections are logged with the reason rustls gives and counted.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use certs::Identity;
use certs::tls::{ClientTls, ServerTls, peer_identity};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Uri;
use tonic::transport::server::Connected;

use crate::admission::{Admission, Admitted};

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once per port. A new connection beyond it closes the oldest one
/// in progress, so the port always accepts, and connections that never send a ClientHello
/// cannot lock real clients out (or exhaust file descriptors).
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at once from one source address; a new one beyond it closes that
/// address's oldest (so clients behind one NAT address still get in).
const MAX_HANDSHAKES_PER_SOURCE: usize = 64;
/// TCP keepalive on accepted connections: idle time before the first probe.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How long a peer connection may take to open (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Handshake outcomes, for metrics.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    /// Connections that completed the handshake.
    pub accepted: Counter,
    /// Connections refused or dropped during the handshake.
    pub refused: Counter,
}

/// What tonic attaches to every request of a TLS connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The identity its certificate proved.
    /// Shared by every request of the connection, so authorizing one clones no strings.
    pub identity: Option<Arc<Identity>>,
}

/// A server-side TLS connection, as tonic serves it.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Turns on TCP keepalive, so connections whose peer vanished are dropped.
pub fn keepalive(tcp: &TcpStream) {
    let sock = socket2::SockRef::from(tcp);
    let _ = sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE)
            .with_interval(Duration::from_secs(10)),
    );
}

/// Accepts connections on `listener` and yields those that complete a handshake with the
/// current configuration of `tls`. Ends when the returned stream is dropped.
///
/// The port never stops accepting: handshakes run in their own tasks with a deadline, and
/// when too many are in progress (in all, or from one source address) the oldest is closed.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    port: &'static str,
    stats: Arc<HandshakeStats>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let pending = Arc::new(Mutex::new(Admission::new(
        MAX_HANDSHAKES,
        MAX_HANDSHAKES_PER_SOURCE,
    )));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(port, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            keepalive(&tcp);
            let Admitted {
                id,
                evicted,
                closed,
            } = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(remote.ip());
            for _ in 0..closed {
                stats.refused.inc();
            }
            let acceptor = TlsAcceptor::from(tls.config());
            let (tx, stats, pending) = (tx.clone(), stats.clone(), pending.clone());
            tokio::spawn(async move {
                let outcome = tokio::select! {
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => Some(r),
                    // Closed to make room (counted by the acceptor).
                    _ = evicted => None,
                };
                pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .close(id);
                match outcome {
                    Some(Ok(Ok(stream))) => {
                        stats.accepted.inc();
                        let identity = peer_identity(stream.get_ref().1).map(Arc::new);
                        let info = ConnInfo { remote, identity };
                        let _ = tx.send(Ok(TlsConn { stream, info })).await;
                    }
                    Some(Ok(Err(e))) => {
                        stats.refused.inc();
                        tracing::warn!(port, %remote, error = %e, "TLS handshake refused");
                    }
                    Some(Err(_)) => {
                        stats.refused.inc();
                        tracing::warn!(port, %remote, "TLS handshake timed out");
                    }
                    None => {
                        tracing::debug!(port, %remote, "TLS handshake closed to make room for newer ones");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Opens TLS connections to other members for tonic channels, with the current client
/// configuration (so a reloaded certificate is used by the next connection).
#[derive(Debug, Clone)]
pub struct PeerConnector {
    tls: Arc<ClientTls>,
}

impl PeerConnector {
    /// A connector presenting `tls`'s certificate.
    pub fn new(tls: Arc<ClientTls>) -> Self {
        Self { tls }
    }
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.config();
        Box::pin(async move {
            let invalid = |what: &str| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"))
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let name = ServerName::try_from(host.clone()).map_err(|_| invalid("bad host"))?;
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                TlsConnector::from(config).connect(name, tcp).await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {uri}"))
                })??;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Something whose certificate files may change.
pub trait Reload: Send + Sync {
    /// Re-reads the files; whether anything changed.
    fn reload(&self) -> certs::Result<bool>;
    /// The certificate file, for logs.
    fn cert_path(&self) -> std::path::PathBuf;
}

impl<C: Send + Sync> Reload for certs::tls::Reloading<C> {
    fn reload(&self) -> certs::Result<bool> {
        certs::tls::Reloading::reload(self)
    }

    fn cert_path(&self) -> std::path::PathBuf {
        self.files().cert.clone()
    }
}

/// Checks every [`RELOAD_INTERVAL`] whether the files of `configs` changed and installs the
/// new ones; a change that does not load is logged and the previous configuration stays.
pub async fn reload_periodically(
    configs: Vec<(&'static str, Arc<dyn Reload>)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Remember the last failure, so a broken file is reported once, not every second.
    let mut failing: Vec<Option<String>> = vec![None; configs.len()];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        for ((port, config), failed) in configs.iter().zip(&mut failing) {
            match config.reload() {
                Ok(true) => {
                    *failed = None;
                    tracing::info!(port, cert = %config.cert_path().display(), "TLS certificates reloaded");
                }
                Ok(false) => *failed = None,
                Err(e) => {
                    let e = e.to_string();
                    if failed.as_deref() != Some(&e) {
                        tracing::error!(port, error = %e, "new TLS files not loaded; keeping the previous ones");
                        *failed = Some(e);
                    }
                }
            }
        }
    }
}

/// A member's TLS: the client port, the peer port, and its connections to other members.
#[derive(Debug, Clone)]
pub struct MemberTls {
    /// The client port (`--cert-file`, `--key-file`, `--trusted-ca-file`): any role of this
    /// cluster; authorization decides per request.
    pub client: Arc<ServerTls>,
    /// The peer port (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`): only
    /// members of this cluster.
    pub peer_server: Arc<ServerTls>,
    /// Connections to other members, with the peer certificate.
    pub peer_client: Arc<ClientTls>,
}

/// Why a member's TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file did not load.
    #[error("{port} TLS: {source}")]
    Load {
        /// `client` or `peer`.
        port: &'static str,
        /// Why.
        source: certs::Error,
    },
    /// A member's own certificate is not an `apiserver` certificate.
    #[error(
        "{port} certificate {identity} is not an apiserver certificate (issue one with `meshctl pki issue --role apiserver`)"
    )]
    NotApiserver {
        /// `client` or `peer`.
        port: &'static str,
        /// The identity it has.
        identity: Identity,
    },
    /// The client and peer certificates name different clusters.
    #[error("the client certificate is for cluster {client} but the peer certificate for {peer}")]
    ClusterMismatch {
        /// The client certificate's cluster.
        client: String,
        /// The peer certificate's cluster.
        peer: String,
    },
}

impl MemberTls {
    /// Loads both ports' files and checks that both certificates are apiserver certificates
    /// of one cluster.
    pub fn load(
        client: certs::tls::TlsFiles,
        peer: certs::tls::TlsFiles,
    ) -> Result<Self, TlsError> {
        use certs::tls::Accept;
        fn load<T>(port: &'static str, r: certs::Result<T>) -> Result<Arc<T>, TlsError> {
            r.map(Arc::new)
                .map_err(|source| TlsError::Load { port, source })
        }
        let tls = Self {
            client: load("client", ServerTls::server(client, Accept::AnyRole))?,
            peer_server: load("peer", ServerTls::server(peer.clone(), Accept::Members))?,
            peer_client: load("peer", ClientTls::client(peer))?,
        };
        for (port, identity) in [
            ("client", tls.client.identity()),
            ("peer", tls.peer_server.identity()),
        ] {
            if identity.role != certs::Role::Apiserver {
                return Err(TlsError::NotApiserver { port, identity });
            }
        }
        let (client, peer) = (
            tls.client.identity().cluster,
            tls.peer_server.identity().cluster,
        );
        if client != peer {
            return Err(TlsError::ClusterMismatch { client, peer });
        }
        Ok(tls)
    }

    /// The cluster this member belongs to, from its certificates.
    pub fn cluster(&self) -> String {
        self.client.identity().cluster
    }

    /// The configurations to keep current with their files.
    pub fn reloadable(&self) -> Vec<(&'static str, Arc<dyn Reload>)> {
        vec![
            ("client", self.client.clone() as Arc<dyn Reload>),
            ("peer", self.peer_server.clone() as Arc<dyn Reload>),
            ("peer client", self.peer_client.clone() as Arc<dyn Reload>),
        ]
    }
}
