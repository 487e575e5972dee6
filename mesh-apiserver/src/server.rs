//! The composition root: one mesh API server process, assembled from a validated [`Config`]
//! and bound sockets, served until the shutdown future completes.
//!
//! It owns what the parts share: the one metrics registry, the one shutdown signal (a
//! cancellation token every loop watches), and the list of leader-gated controllers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kvstore::server::{Member, ServerError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bootstrap;
use crate::config::Config;
use crate::controller::{self, Context, Controller, LocalClient};
use crate::mcs::Mcs;
use crate::mcs::sink::{LiveSink, ManifestsSink, Sink};
use crate::mirror::Mirror;
use crate::publish::SourceConfig;
use crate::publish::controller::{Publisher, Source};
use crate::publish::live::LiveSource;

/// The sockets a server serves, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The etcd API.
    pub client: Vec<TcpListener>,
    /// Raft peers. Never expose to clients.
    pub peer: Vec<TcpListener>,
    /// `/metrics` and `/healthz`.
    pub metrics: Vec<TcpListener>,
    /// The agent bootstrap.
    pub bootstrap: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every `--listen-*-urls` address of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, Error> {
        async fn bind_all(addrs: &[String]) -> Result<Vec<TcpListener>, Error> {
            let mut out = Vec::new();
            for addr in addrs {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind {
                        addr: addr.clone(),
                        source,
                    })?;
                out.push(l);
            }
            Ok(out)
        }
        Ok(Listeners {
            client: bind_all(&config.listen_client).await?,
            peer: bind_all(&config.listen_peer).await?,
            metrics: bind_all(&config.listen_metrics).await?,
            bootstrap: match &config.bootstrap {
                Some(b) => bind_all(&b.listen).await?,
                None => Vec::new(),
            },
        })
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// `host:port`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store member failed.
    #[error(transparent)]
    Member(#[from] ServerError),
    /// `--kubernetes`: the API could not be reached.
    #[error("connecting to the Kubernetes API (--kubernetes): {0}")]
    Kubernetes(#[from] kube::Error),
    /// `--kubeconfig` does not load.
    #[error("--kubeconfig {0}")]
    KubeConfig(String),
    /// The agent bootstrap could not start.
    #[error("the agent bootstrap: {0}")]
    Bootstrap(String),
}

/// How long the controllers and metrics servers get to stop before the member stops.
const DRAIN: Duration = Duration::from_secs(5);

/// A leader that is asked to stop moves its leadership first, while it still serves, so a
/// rolling update or a drained node costs the cluster a hand-off rather than an election
/// timeout. Bounded by the move's own deadline; a failure is logged and the stop goes on.
async fn hand_off(node: &kvstore::node::Node) {
    match node.hand_off_leadership().await {
        Ok(Some(to)) => {
            tracing::info!(to = %format!("{to:x}"), "leadership handed off before stopping")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not hand off the leadership before stopping"),
    }
}

/// A client of the Kubernetes API: `--kubeconfig`'s current context, else kube's defaults
/// (in-cluster, then KUBECONFIG or ~/.kube/config).
async fn kube_client(config: &Config) -> Result<kube::Client, Error> {
    let Some(path) = &config.kubeconfig else {
        return Ok(kube::Client::try_default().await?);
    };
    let file = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
    let options = kube::config::KubeConfigOptions::default();
    let client_config = kube::Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
    Ok(kube::Client::try_from(client_config)?)
}

/// The bootstrap's issuer, reviewing tokens through the Kubernetes API.
async fn bootstrap_issuer(
    config: &Config,
    settings: &bootstrap::Settings,
    registry: &mut Registry,
) -> Result<Arc<bootstrap::Issuer>, Error> {
    let cluster = config
        .cluster_name()
        .ok_or_else(|| Error::Bootstrap("the cluster's name is unknown".to_owned()))?;
    let client = kube_client(config).await?;
    let issuer = bootstrap::Issuer::new(
        settings.clone(),
        &cluster,
        Arc::new(bootstrap::Kubernetes(client)),
    )
    .map_err(Error::Bootstrap)?;
    issuer.register(registry);
    Ok(Arc::new(issuer))
}

/// `/healthz`: healthy while the member knows a leader (etcd's `/health` body).
fn member_health(node: Arc<kvstore::node::Node>) -> admin_http::HealthFn {
    Arc::new(move || {
        let healthy = node.leader().is_some();
        admin_http::Health {
            healthy,
            body: if healthy {
                "{\"health\":\"true\"}\n".to_owned()
            } else {
                "{\"health\":\"false\",\"reason\":\"no leader\"}\n".to_owned()
            },
            content_type: "application/json",
        }
    })
}

/// Serves until `shutdown` completes (or the store fails), then stops everything in order:
/// controllers and metrics first, the member last.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let cluster_name = config.cluster_name();
    let member = Member::start(
        config.member.clone(),
        kvstore::server::Listeners {
            client: listeners.client,
            peer: listeners.peer,
        },
    )
    .await?;
    let mut registry = Registry::with_prefix("raftmesh");
    member.register_metrics(&mut registry);

    let mut controllers: Vec<Arc<dyn Controller>> = Vec::new();
    if let Some(p) = &config.publisher {
        let source = match &p.source {
            SourceConfig::Manifests(dir) => Source::Manifests(dir.clone()),
            SourceConfig::Kubernetes => {
                Source::Live(LiveSource::start(kube_client(&config).await?))
            }
        };
        tracing::info!(source = ?p.source, cluster = %p.settings.cluster, "publishing the cluster's objects while this member leads");
        let sink = match &source {
            Source::Manifests(dir) => Sink::Manifests(ManifestsSink::new(dir.join("mcs"))),
            Source::Live(live) => Sink::Live(Box::new(LiveSink::new(live.client()))),
        };
        let mcs = Mcs::new(p.settings.cluster.clone(), source.clone(), sink);
        mcs.register(&mut registry);
        controllers.push(Arc::new(mcs));
        let publisher = Publisher::new(p.clone(), source);
        publisher.register(&mut registry);
        controllers.push(Arc::new(publisher));
    }
    let mirror = Mirror::new(config.mirror.clone());
    mirror.register(&mut registry);
    controllers.push(Arc::new(mirror));

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    if let Some(settings) = &config.bootstrap {
        let issuer = bootstrap_issuer(&config, settings, &mut registry).await?;
        let (ca, cert, key) = config
            .local_tls
            .clone()
            .ok_or_else(|| Error::Bootstrap("needs TLS".to_owned()))?;
        let tls = certs::tls::ServerTls::server_without_client_auth(certs::tls::TlsFiles {
            cert,
            key,
            ca,
        })
        .map(Arc::new)
        .map_err(|e| Error::Bootstrap(e.to_string()))?;
        for l in listeners.bootstrap {
            tasks.spawn(bootstrap::serve(
                l,
                tls.clone(),
                issuer.clone(),
                bootstrap::MAX_CONNECTIONS,
                stop.clone(),
            ));
        }
        // The member's certificate files are reloaded when they change; so is this copy.
        let (stopped, stop_rx) = tokio::sync::watch::channel(false);
        let watch_stop = stop.clone();
        tasks.spawn(async move {
            watch_stop.cancelled().await;
            let _ = stopped.send(true);
        });
        tasks.spawn(kvstore::tls::reload_periodically(
            vec![("bootstrap", tls as Arc<dyn kvstore::tls::Reload>)],
            stop_rx,
        ));
        tracing::info!(listen = ?settings.listen, "serving the agent bootstrap");
    }
    let registry = Arc::new(registry);
    let health = member_health(member.node().clone());
    for l in listeners.metrics {
        tasks.spawn(admin_http::serve(
            l,
            registry.clone(),
            health.clone(),
            stop.clone(),
            "metrics",
        ));
    }
    let local = LocalClient {
        url: config
            .member
            .advertise_client_urls
            .first()
            .cloned()
            .unwrap_or_default(),
        tls: config.local_tls.clone(),
    };
    let ctx = Context {
        cluster: cluster_name,
        local,
        node: member.node().clone(),
    };
    tasks.spawn(controller::supervise(
        controllers,
        ctx,
        member.leading(),
        stop.clone(),
    ));

    let outcome = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            hand_off(member.node()).await;
            Ok(())
        }
        e = member.failed() => {
            tracing::error!(error = %e, "the store failed; shutting down");
            Err(Error::Member(e))
        }
    };
    stop.cancel();
    if tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    member.stop().await;
    outcome
}
