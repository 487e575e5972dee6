//! The Multi-Cluster Services API's controller (KEP-1645): while this member leads, keeps
//! this cluster's `ServiceImport`s, imported `EndpointSlice`s and the conditions of its
//! `ServiceExport`s equal to what every cluster's records call for (ARCHITECTURE.md,
//! "Multi-cluster services").
//!
//! The records come from this cluster's own store — its services and, mirrored, every
//! connected cluster's — through one list and a watch ([`view`]); the desired objects are
//! computed purely ([`desired`]) and written by a [`sink`]: the live Kubernetes API, or the
//! manifests directory (the lab has no API server and runs the same controller).

pub mod desired;
pub mod sink;
pub mod view;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::controller::{Context, Controller};
use crate::publish::controller::Source;
use crate::publish::objects::Objects;
use desired::{Desired, Local, LocalExport};
use sink::Sink;
use view::View;

/// How often a pass runs while the records or objects may have changed.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The controller's metrics.
#[derive(Debug, Default)]
struct Metrics {
    imports: Gauge,
    conflicts: Gauge,
    passes: Counter,
    failures: Counter,
    writes: Counter,
}

/// The MCS controller of cluster `cluster`.
pub struct Mcs {
    cluster: String,
    source: Source,
    sink: Mutex<Sink>,
    metrics: Metrics,
}

impl std::fmt::Debug for Mcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mcs")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// This cluster's exports, Services and namespaces, from its objects.
pub fn local(objects: &Objects, namespaces_known: bool) -> Local {
    let mut l = Local::default();
    for e in &objects.exports {
        if let (Some(ns), Some(name)) = (&e.metadata.namespace, &e.metadata.name) {
            // One export listed in two versions is one export: the first version read wins.
            if !l
                .exports
                .iter()
                .any(|x| &x.namespace == ns && &x.name == name)
            {
                l.exports.push(LocalExport {
                    namespace: ns.clone(),
                    name: name.clone(),
                    version: e.version.clone(),
                });
            }
        }
    }
    for s in &objects.services {
        if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
            let type_ = s
                .spec
                .as_ref()
                .and_then(|s| s.type_.clone())
                .unwrap_or_else(|| "ClusterIP".to_owned());
            l.services.insert((ns.clone(), name.clone()), type_);
        }
    }
    if namespaces_known {
        let mut ns: BTreeSet<String> = BTreeSet::new();
        ns.extend(
            objects
                .pods
                .iter()
                .filter_map(|o| o.metadata.namespace.clone()),
        );
        ns.extend(
            objects
                .services
                .iter()
                .filter_map(|o| o.metadata.namespace.clone()),
        );
        ns.extend(
            objects
                .slices
                .iter()
                .filter_map(|o| o.metadata.namespace.clone()),
        );
        ns.extend(
            objects
                .exports
                .iter()
                .filter_map(|o| o.metadata.namespace.clone()),
        );
        ns.extend(
            objects
                .policies
                .iter()
                .filter_map(|o| o.metadata.namespace.clone()),
        );
        l.namespaces = Some(ns);
    }
    l
}

impl Mcs {
    /// The controller of `cluster`, reading its objects from `source`, writing to `sink`.
    pub fn new(cluster: String, source: Source, sink: Sink) -> Mcs {
        Mcs {
            cluster,
            source,
            sink: Mutex::new(sink),
            metrics: Metrics::default(),
        }
    }

    /// Registers the metrics.
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "mcs_imports",
            "ServiceImports this cluster should have (every service exported anywhere, in an existing namespace)",
            m.imports.clone(),
        );
        registry.register(
            "mcs_conflicts",
            "Imported services whose exports disagree (a Conflict condition on every export)",
            m.conflicts.clone(),
        );
        registry.register("mcs_passes", "MCS controller passes", m.passes.clone());
        registry.register(
            "mcs_failures",
            "MCS controller passes that failed (the store or the sink)",
            m.failures.clone(),
        );
        registry.register(
            "mcs_writes",
            "Kubernetes objects (or files) the MCS controller wrote or deleted",
            m.writes.clone(),
        );
    }

    /// The objects the source holds now; `None` while it is not ready (or a manifest does not
    /// read: the publisher reports that).
    fn local(&self) -> Option<Local> {
        let ready = match &self.source {
            Source::Live(live) => live.ready(),
            Source::Manifests(_) => true,
        };
        if !ready {
            return None;
        }
        let objects = self.source.objects().ok()?;
        Some(local(&objects, matches!(self.source, Source::Manifests(_))))
    }

    async fn run_term(&self, ctx: &Context, term: &CancellationToken) -> Result<(), String> {
        let mut client = ctx
            .local
            .connect_for_streams()
            .await
            .map_err(|e| format!("connecting to this member: {e}"))?;
        let (mut view, revision) =
            tokio::time::timeout(crate::controller::LOCAL_TIMEOUT, View::list(&mut client))
                .await
                .map_err(|_| "listing the records timed out".to_owned())?
                .map_err(|e| format!("listing the records: {e}"))?;
        let mut watch = View::watch(&mut client, revision)
            .await
            .map_err(|e| format!("watching the records: {e}"))?;
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Desired> = None;
        // The last failure logged: the same one again (a missing CRD, every second) is logged
        // at debug level only, until something else happens.
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                () = term.cancelled() => return Ok(()),
                message = watch.message() => match message {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            return Err(format!("the watch was cancelled: {}", response.cancel_reason()));
                        }
                        view.apply_events(&response);
                        continue;
                    }
                    Ok(None) => return Err("the watch ended".to_owned()),
                    Err(e) => return Err(format!("watching the records: {e}")),
                },
                _ = tick.tick() => {}
            }
            let Some(local) = self.local() else { continue };
            let desired = desired::desired(&view, &self.cluster, &local);
            self.metrics.imports.set(desired.imports.len() as i64);
            self.metrics.conflicts.set(
                desired
                    .imports
                    .values()
                    .filter(|o| !o.import.conflicts.is_empty())
                    .count() as i64,
            );
            let mut sink = self.sink.lock().await;
            match sink.apply(&desired).await {
                Ok(w) => {
                    self.metrics.passes.inc();
                    let n = w.written + w.deleted + w.statuses;
                    self.metrics.writes.inc_by(n);
                    if n > 0 || last.as_ref() != Some(&desired) {
                        tracing::debug!(
                            imports = desired.imports.len(),
                            slices = desired.slices.len(),
                            exports = desired.statuses.len(),
                            written = w.written,
                            deleted = w.deleted,
                            statuses = w.statuses,
                            "MCS objects brought up to date"
                        );
                    }
                    last = Some(desired);
                    if failing.take().is_some() {
                        tracing::info!("writing the MCS objects works again");
                    }
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    let text = e.to_string();
                    if failing.as_ref() == Some(&text) {
                        tracing::debug!(error = %text, "writing the MCS objects still fails");
                    } else {
                        tracing::warn!(error = %text, "writing the MCS objects failed; trying again every pass");
                        failing = Some(text);
                    }
                }
            }
        }
    }
}

impl Controller for Mcs {
    fn name(&self) -> &'static str {
        "mcs"
    }

    fn run<'a>(&'a self, ctx: &'a Context, term: CancellationToken) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            while !term.is_cancelled() {
                if let Err(e) = self.run_term(ctx, &term).await {
                    self.metrics.failures.inc();
                    tracing::warn!(error = %e, "the MCS controller stopped; starting again");
                    tokio::select! {
                        () = term.cancelled() => {}
                        () = tokio::time::sleep(INTERVAL) => {}
                    }
                }
            }
        })
    }
}
