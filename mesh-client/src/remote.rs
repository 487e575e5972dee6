//! Reaching a remote cluster's API server, as the mirror does (feature `remote`): its
//! endpoints resolved afresh on every attempt (EKS load balancers are host names whose
//! addresses change), each address tried in turn, over mutual TLS 1.3 with the connection's
//! own material (see [`certs::tls::remote_client`]: only that cluster's CA, only its apiserver
//! members, no host name check). The TLS connection is made here, not by tonic, so the
//! verifier is that rustls configuration and nothing else.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use hickory_resolver::TokioResolver;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Endpoint, Uri};

/// Bound on opening one connection (TCP and TLS) to one address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one unary request to a remote.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no endpoint of a remote could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An endpoint is not `https://host:port`.
    #[error(transparent)]
    BadEndpoint(#[from] mesh_api::endpoint::EndpointError),
    /// No endpoint worked; what each attempt said.
    #[error("no endpoint reachable: {}", attempts.join("; "))]
    Unreachable {
        /// `endpoint (address): error` per attempt.
        attempts: Vec<String>,
    },
}

/// Resolves host names (from the system's DNS configuration and hosts file).
#[derive(Clone)]
pub struct Resolver {
    /// `None` when the system has no usable DNS configuration: only IP endpoints work then.
    inner: Option<TokioResolver>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("configured", &self.inner.is_some())
            .finish()
    }
}

impl Resolver {
    /// The system's resolver.
    pub fn system() -> Self {
        let inner = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration: remote endpoints must be IP addresses");
                None
            }
        };
        Self { inner }
    }

    /// The addresses of `host` (itself when it is an IP address).
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let resolver = self
            .inner
            .as_ref()
            .ok_or_else(|| "no DNS configuration to resolve it".to_owned())?;
        let found = tokio::time::timeout(CONNECT_TIMEOUT, resolver.lookup_ip(host))
            .await
            .map_err(|_| "DNS lookup timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let ips: Vec<IpAddr> = found.iter().collect();
        if ips.is_empty() {
            return Err("no addresses".to_owned());
        }
        Ok(ips)
    }
}

/// Connects to the first reachable address of `endpoints`, in order, with `tls`. Returns the
/// client and the endpoint (and address) it reached.
pub async fn connect(
    endpoints: &[String],
    tls: Arc<ClientConfig>,
    resolver: &Resolver,
) -> Result<(Client, String), ConnectError> {
    let mut attempts = Vec::new();
    for endpoint in endpoints {
        let (host, port) = mesh_api::endpoint::host_port(endpoint)?;
        let ips = match resolver.lookup(&host).await {
            Ok(ips) => ips,
            Err(e) => {
                attempts.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        for ip in ips {
            let addr = SocketAddr::new(ip, port);
            match connect_one(&host, addr, tls.clone()).await {
                Ok(client) => return Ok((client, format!("{endpoint} ({addr})"))),
                Err(e) => attempts.push(format!("{endpoint} ({addr}): {e}")),
            }
        }
    }
    Err(ConnectError::Unreachable { attempts })
}

async fn connect_one(
    host: &str,
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<Client, etcd_client::Error> {
    // The server name only feeds SNI: the certificate check ignores it.
    let server_name = ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    let connector = RemoteConnector {
        addr,
        server_name,
        tls,
    };
    // Our connector makes the TLS connection, so tonic must see a plain http:// URI.
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await?;
    let options = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT);
    Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)).await
}

/// Opens the TCP and TLS connection to one address for a tonic channel.
#[derive(Debug, Clone)]
struct RemoteConnector {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
}

impl tower_service::Service<Uri> for RemoteConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let open = async {
                let tcp = TcpStream::connect(this.addr).await?;
                tcp.set_nodelay(true)?;
                TlsConnector::from(this.tls)
                    .connect(this.server_name, tcp)
                    .await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, open)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {}", this.addr),
                    )
                })??;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_addresses_need_no_dns_and_localhost_resolves_from_the_hosts_file() {
        let r = Resolver::system();
        assert_eq!(
            r.lookup("192.0.2.7").await.unwrap(),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        let local = r.lookup("localhost").await.unwrap();
        assert!(local.iter().all(IpAddr::is_loopback), "{local:?}");
    }
}
