//! Credentials, settings and the two ways to connect: to one member, or to the first member
//! that answers and knows a leader.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How long a member has to answer the status request [`with_leader`] checks it with.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why no client was made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TLS file did not read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection to a member failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The member's URL.
        endpoint: String,
        /// Why.
        source: Box<etcd_client::Error>,
    },
    /// No member could be used.
    #[error("no API-server member answered with a leader: {attempts}")]
    Unreachable {
        /// Each endpoint and why it was passed over.
        attempts: String,
    },
}

/// A CA bundle to trust, and a client certificate and key to present (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The cluster's CA bundle.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The name the server's certificate is checked against, when not the endpoint's host.
    pub server_name: Option<String>,
}

impl Credentials {
    /// The credentials in these files.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Credentials {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            server_name: None,
        }
    }

    /// The same, checking the server's certificate against `name`.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The client TLS settings, with the files read now.
    pub fn tls(&self) -> Result<TlsOptions, Error> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })
        };
        let mut tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

/// Timeouts and keep-alives of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Bound on opening the connection.
    pub connect_timeout: Duration,
    /// Bound on each unary request, sent to the server as its deadline. `None` for a client
    /// that opens streams (watches, lease keep-alives), which a deadline would end: bound its
    /// unary calls yourself.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keep-alive pings (interval, timeout): a member that stopped answering (frozen,
    /// partitioned) fails the requests and streams on it instead of leaving them hanging.
    pub keep_alive: Option<(Duration, Duration)>,
    /// Pings also while nothing is in flight (a client that only watches).
    pub keep_alive_while_idle: bool,
}

impl Default for Settings {
    /// 5 s to connect, 10 s per request, no keep-alive pings.
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(10)),
            keep_alive: None,
            keep_alive_while_idle: false,
        }
    }
}

impl Settings {
    /// The default settings with `connect` to connect and `request` per request.
    pub fn timeouts(connect: Duration, request: Option<Duration>) -> Self {
        Settings {
            connect_timeout: connect,
            request_timeout: request,
            ..Settings::default()
        }
    }

    /// The same, with keep-alive pings every `interval`, each answered within `timeout`.
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration, while_idle: bool) -> Self {
        self.keep_alive = Some((interval, timeout));
        self.keep_alive_while_idle = while_idle;
        self
    }

    fn options(&self, credentials: Option<&Credentials>) -> Result<ConnectOptions, Error> {
        let mut options = ConnectOptions::new().with_connect_timeout(self.connect_timeout);
        if let Some(t) = self.request_timeout {
            options = options.with_timeout(t);
        }
        if let Some((interval, timeout)) = self.keep_alive {
            options = options
                .with_keep_alive(interval, timeout)
                .with_keep_alive_while_idle(self.keep_alive_while_idle);
        }
        if let Some(c) = credentials {
            options = options.with_tls(c.tls()?);
        }
        Ok(options)
    }
}

/// A client of the member at `url` alone (`None` credentials: plaintext).
pub async fn member(
    url: &str,
    credentials: Option<&Credentials>,
    settings: &Settings,
) -> Result<Client, Error> {
    let options = settings.options(credentials)?;
    Client::connect([url], Some(options))
        .await
        .map_err(|source| Error::Connect {
            endpoint: url.to_owned(),
            source: Box::new(source),
        })
}

/// A client balanced over every one of `endpoints`, as etcd's clientv3 and etcdctl make them:
/// only for tests that check the store against that client pattern. raftmesh's own programs
/// never use it (a balanced client keeps choosing a killed member: see [`with_leader`]).
pub async fn balanced(
    endpoints: &[String],
    credentials: Option<&Credentials>,
    settings: &Settings,
) -> Result<Client, Error> {
    let options = settings.options(credentials)?;
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|source| Error::Connect {
            endpoint: endpoints.join(","),
            source: Box::new(source),
        })
}

/// A client of the first of `endpoints`, from index `start` on (wrapping), that answers a
/// status request within [`STATUS_TIMEOUT`] and knows a leader; with the index it reached.
///
/// One member at a time, checked before use: a client balanced over every endpoint kept
/// sending new requests to a killed member (tonic's balancer does not retry elsewhere; found
/// by `mesh-bench propagation`), and a member that knows no leader (cut off from its peers, or
/// electing) has nothing new to tell. Callers that lose the member move on with `start` one
/// past the index they had.
pub async fn with_leader(
    endpoints: &[String],
    start: usize,
    credentials: Option<&Credentials>,
    settings: &Settings,
) -> Result<(Client, usize), Error> {
    pick(endpoints, start, credentials, settings, true).await
}

/// Like [`with_leader`], but settles for the first member that answered when none knows a
/// leader: for reading a cluster's own state (members, status), which a cluster without a
/// leader still has to show.
pub async fn answering(
    endpoints: &[String],
    start: usize,
    credentials: Option<&Credentials>,
    settings: &Settings,
) -> Result<(Client, usize), Error> {
    pick(endpoints, start, credentials, settings, false).await
}

async fn pick(
    endpoints: &[String],
    start: usize,
    credentials: Option<&Credentials>,
    settings: &Settings,
    need_leader: bool,
) -> Result<(Client, usize), Error> {
    let options = settings.options(credentials)?;
    let n = endpoints.len();
    let mut attempts = Vec::new();
    let mut leaderless = None;
    for i in (0..n).map(|k| (start + k) % n) {
        let endpoint = &endpoints[i];
        let attempt = async {
            let mut client = Client::connect([endpoint.as_str()], Some(options.clone())).await?;
            let status = client.status().await?;
            Ok::<_, etcd_client::Error>((client, status.leader()))
        };
        match tokio::time::timeout(STATUS_TIMEOUT, attempt).await {
            Ok(Ok((client, leader))) if leader != 0 => return Ok((client, i)),
            Ok(Ok((client, _))) => {
                attempts.push(format!("{endpoint}: no leader"));
                if leaderless.is_none() {
                    leaderless = Some((client, i));
                }
            }
            Ok(Err(e)) => attempts.push(format!("{endpoint}: {e}")),
            Err(_) => attempts.push(format!("{endpoint}: no answer within {STATUS_TIMEOUT:?}")),
        }
    }
    if let Some(found) = leaderless.filter(|_| !need_leader) {
        return Ok(found);
    }
    if attempts.is_empty() {
        attempts.push("no endpoints".to_owned());
    }
    Err(Error::Unreachable {
        attempts: attempts.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials::new(dir.path().join("ca.crt"), "c", "k");
        let e = c.tls().unwrap_err();
        assert!(e.to_string().contains("ca.crt"), "{e}");
    }

    #[tokio::test]
    async fn no_member_is_unreachable_with_every_reason() {
        // A closed port on loopback: refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let settings = Settings::timeouts(Duration::from_millis(500), None);
        let e = with_leader(&[url.clone(), url.clone()], 1, None, &settings)
            .await
            .err()
            .expect("nothing listens");
        let text = e.to_string();
        assert_eq!(text.matches(&url).count(), 2, "{text}");
        let e = with_leader(&[], 0, None, &settings).await.err().unwrap();
        assert!(e.to_string().contains("no endpoints"), "{e}");
    }
}
