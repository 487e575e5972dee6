//! Leader-gated controllers: background loops that act on the store only while this member
//! leads (the publisher, the remote mirror).
//!
//! Every member runs [`supervise`]. When its member becomes Raft leader it starts each
//! controller's [`Controller::run`] with a fresh *term* token; when leadership is lost or the
//! process shuts down, the token is cancelled and the runs are given [`STOP_GRACE`] to return
//! before they are aborted. A run that ends on its own while the member still leads (an error
//! it did not handle, a panic) is logged and started again after [`RESTART_DELAY`].
//!
//! Leadership here is Raft's own view, which a deposed leader may hold for a moment after a
//! new one was elected. Controllers must therefore stay correct with two runs at once: every
//! write they make is guarded by a compare on what they read (see `publish::store` and the
//! mirror), so the stale one changes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use futures::FutureExt;
use futures::future::BoxFuture;
use kvstore::node::Node;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a controller has to return after its term ends before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause before restarting a controller whose run ended while its member still leads.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A loop that acts while its member leads.
pub trait Controller: Send + Sync + std::fmt::Debug + 'static {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// Acts until `term` is cancelled (leadership lost or shutdown), then returns promptly.
    /// State that must not outlive a leadership term lives inside the run; counters that do
    /// live in the controller.
    fn run<'a>(&'a self, ctx: &'a Context, term: CancellationToken) -> BoxFuture<'a, ()>;
}

/// What every controller may use.
#[derive(Debug, Clone)]
pub struct Context {
    /// This cluster's name, when known (from `--cluster-name` or the certificates).
    pub cluster: Option<String>,
    /// How to reach this member's own client port.
    pub local: LocalClient,
    /// The running member: its membership (client URLs) and state.
    pub node: Arc<Node>,
}

/// How a controller connects to its own member: over the client port, as the member itself
/// (its apiserver certificate), like any other client.
#[derive(Debug, Clone)]
pub struct LocalClient {
    /// This member's client URL.
    pub url: String,
    /// CA, certificate and key files (the member's own client-port files); `None` in
    /// plaintext mode.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// Bound on one unary request of a controller to its own member.
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

impl LocalClient {
    /// A client whose unary requests time out after [`LOCAL_TIMEOUT`] (the deadline is sent
    /// to the server, so do not open streams with it: see [`LocalClient::connect_for_streams`]).
    /// The files are read on every connect, so a rotated certificate is used by the next
    /// connection.
    pub async fn connect(&self) -> Result<Client, LocalError> {
        self.connect_with(Some(LOCAL_TIMEOUT)).await
    }

    /// A client without a request deadline, for watches; bound unary calls yourself.
    pub async fn connect_for_streams(&self) -> Result<Client, LocalError> {
        self.connect_with(None).await
    }

    async fn connect_with(&self, timeout: Option<Duration>) -> Result<Client, LocalError> {
        let settings = mesh_client::Settings::timeouts(Duration::from_secs(2), timeout);
        let credentials = self
            .tls
            .as_ref()
            .map(|(ca, cert, key)| mesh_client::Credentials::new(ca, cert, key));
        mesh_client::member(&self.url, credentials.as_ref(), &settings).await
    }
}

/// Why a controller could not reach its own member (a TLS file did not read, or the
/// connection failed).
pub type LocalError = mesh_client::Error;

/// Runs `controllers` during every leadership term of this member until `shutdown`.
pub async fn supervise(
    controllers: Vec<Arc<dyn Controller>>,
    ctx: Context,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    if controllers.is_empty() {
        return;
    }
    let ctx = Arc::new(ctx);
    loop {
        // Wait to lead.
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!("leading: starting controllers");
        let term = shutdown.child_token();
        let mut runs = JoinSet::new();
        for c in &controllers {
            runs.spawn(run_once(
                c.clone(),
                ctx.clone(),
                term.clone(),
                Duration::ZERO,
            ));
        }
        // Lead until leadership or the process ends; restart runs that end meanwhile.
        loop {
            tokio::select! {
                () = term.cancelled() => break,
                r = leading.wait_for(|l| !*l) => {
                    if r.is_ok() {
                        tracing::info!("no longer leading: stopping controllers");
                    }
                    break;
                }
                Some(ended) = runs.join_next() => {
                    let Ok(name) = ended else {
                        // Aborted: only happens below, after the term ended.
                        continue;
                    };
                    if term.is_cancelled() {
                        continue;
                    }
                    if let Some(c) = controllers.iter().find(|c| c.name() == name) {
                        tracing::warn!(controller = name, "controller stopped while leading; restarting");
                        runs.spawn(run_once(c.clone(), ctx.clone(), term.clone(), RESTART_DELAY));
                    }
                }
            }
        }
        term.cancel();
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while runs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("controllers did not stop within {STOP_GRACE:?}; aborting them");
            runs.abort_all();
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// One run of `c` within `term`, after `delay`; returns the controller's name when it ends,
/// also by panicking.
async fn run_once(
    c: Arc<dyn Controller>,
    ctx: Arc<Context>,
    term: CancellationToken,
    delay: Duration,
) -> &'static str {
    tokio::select! {
        () = term.cancelled() => return c.name(),
        () = tokio::time::sleep(delay) => {}
    }
    // A panic ends this run only; the supervisor starts it again.
    if let Err(panic) = std::panic::AssertUnwindSafe(c.run(&ctx, term))
        .catch_unwind()
        .await
    {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(controller = c.name(), panic = %what, "controller panicked");
    }
    c.name()
}
