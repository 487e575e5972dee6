//! The live Kubernetes API as a source of objects: kube-rs reflectors on Node, Pod, Service,
//! EndpointSlice, the `MeshPolicy` custom resource and the MCS API's `ServiceExport` (one
//! reflector per version, `v1beta1` and `v1alpha1`), in-cluster or from a kubeconfig.
//!
//! The source is not ready until every reflector has completed its initial list: publishing
//! before that would delete the records of objects merely not listed yet. A `ServiceExport`
//! version the API does not serve (its list answers 404: the CRD, or that version of it, is
//! not installed) counts as listed and empty, so a cluster without the MCS CRDs still
//! publishes; its reflector keeps retrying and picks exports up once the CRD is installed.
//! Every watch event bumps a generation, which is how the publisher notices a change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::objects::{MCS_GROUP, MCS_VERSIONS, MeshPolicy, Objects, ServiceExport};

/// The MeshPolicy custom resource's group, version, kind and plural.
pub fn mesh_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mesh.raftmesh.io", "v1alpha1", "MeshPolicy"),
        "meshpolicies",
    )
}

/// The ServiceExport resource of one MCS API version.
pub fn service_export_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(MCS_GROUP, version, "ServiceExport"),
        "serviceexports",
    )
}

/// The reflector of one version of a custom resource that may not be installed.
#[derive(Clone)]
struct Optional {
    version: &'static str,
    store: Store<DynamicObject>,
    /// The last list answered 404.
    absent: Arc<AtomicBool>,
}

/// Reflected objects of every kind the mesh publishes.
#[derive(Clone)]
pub struct LiveSource {
    nodes: Store<Node>,
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    policies: Store<DynamicObject>,
    exports: Vec<Optional>,
    /// The client the reflectors use.
    client: kube::Client,
    /// Bumped by every watch event of any kind.
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for LiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSource")
            .field("generation", &self.generation.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl LiveSource {
    /// Starts the reflectors (they run until the process ends, re-listing after errors).
    pub fn start(client: kube::Client) -> LiveSource {
        let generation = Arc::new(AtomicU64::new(0));
        let nodes = reflect(Api::<Node>::all(client.clone()), &generation);
        let pods = reflect(Api::<Pod>::all(client.clone()), &generation);
        let services = reflect(Api::<Service>::all(client.clone()), &generation);
        let slices = reflect(Api::<EndpointSlice>::all(client.clone()), &generation);
        let policies = reflect_dynamic(&client, mesh_policy_resource(), &generation, None);
        let kube = client.clone();
        let exports = MCS_VERSIONS
            .into_iter()
            .map(|version| {
                let absent = Arc::new(AtomicBool::new(false));
                let store = reflect_dynamic(
                    &client,
                    service_export_resource(version),
                    &generation,
                    Some(absent.clone()),
                );
                Optional {
                    version,
                    store,
                    absent,
                }
            })
            .collect();
        LiveSource {
            nodes,
            pods,
            services,
            slices,
            policies,
            exports,
            client: kube,
            generation,
        }
    }

    /// The client its reflectors use (for writers of the same cluster's objects).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Whether every reflector has listed its kind once.
    pub fn ready(&self) -> bool {
        fn listed<K: kube::runtime::reflector::Lookup + Clone + 'static>(s: &Store<K>) -> bool
        where
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            matches!(s.wait_until_ready().now_or_never(), Some(Ok(())))
        }
        listed(&self.nodes)
            && listed(&self.pods)
            && listed(&self.services)
            && listed(&self.slices)
            && listed(&self.policies)
            && self
                .exports
                .iter()
                .all(|e| e.absent.load(Relaxed) || listed(&e.store))
    }

    /// A number that changes whenever an object may have changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The objects as reflected now. A MeshPolicy that does not parse is skipped (logged).
    pub fn objects(&self) -> Objects {
        let policies = self
            .policies
            .state()
            .iter()
            .filter_map(|o| {
                let value = serde_json::to_value(o.as_ref()).ok()?;
                match serde_json::from_value::<MeshPolicy>(value) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(name = ?o.metadata.name, error = %e, "skipped a MeshPolicy that does not parse");
                        None
                    }
                }
            })
            .collect();
        let exports = self
            .exports
            .iter()
            .flat_map(|e| e.store.state().into_iter().map(move |o| (e.version, o)))
            .filter_map(|(version, o)| {
                let value = serde_json::to_value(o.as_ref()).ok()?;
                match serde_json::from_value::<ServiceExport>(value) {
                    Ok(mut export) => {
                        export.version = version.to_owned();
                        Some(export)
                    }
                    Err(e) => {
                        tracing::warn!(name = ?o.metadata.name, error = %e, "skipped a ServiceExport that does not parse");
                        None
                    }
                }
            })
            .collect();
        Objects {
            nodes: self
                .nodes
                .state()
                .iter()
                .map(|o| o.as_ref().clone())
                .collect(),
            pods: self
                .pods
                .state()
                .iter()
                .map(|o| o.as_ref().clone())
                .collect(),
            services: self
                .services
                .state()
                .iter()
                .map(|o| o.as_ref().clone())
                .collect(),
            slices: self
                .slices
                .state()
                .iter()
                .map(|o| o.as_ref().clone())
                .collect(),
            policies,
            exports,
        }
    }
}

fn reflect<K>(api: Api<K>, generation: &Arc<AtomicU64>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()));
    spawn_drive(stream, generation.clone(), std::any::type_name::<K>());
    reader
}

/// A reflector of a custom resource; with `absent`, a 404 on list sets it (the resource is
/// not installed) instead of being logged as a failure at every retry.
fn reflect_dynamic(
    client: &kube::Client,
    ar: ApiResource,
    generation: &Arc<AtomicU64>,
    absent: Option<Arc<AtomicBool>>,
) -> Store<DynamicObject> {
    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let reader = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            watcher::Config::default(),
        ),
    );
    let kind = format!("{}/{}", ar.api_version, ar.kind);
    drive(stream, generation.clone(), kind, absent);
    reader
}

fn spawn_drive<S, K>(stream: S, generation: Arc<AtomicU64>, kind: &'static str)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    drive(stream, generation, kind.to_owned(), None)
}

fn drive<S, K>(stream: S, generation: Arc<AtomicU64>, kind: String, absent: Option<Arc<AtomicBool>>)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.default_backoff());
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    if let Some(absent) = &absent
                        && absent.swap(false, Relaxed)
                    {
                        tracing::info!(kind, "the resource is served now");
                    }
                    generation.fetch_add(1, Relaxed);
                }
                Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                    if status.is_not_found() && absent.is_some() =>
                {
                    if !absent.as_ref().is_some_and(|a| a.swap(true, Relaxed)) {
                        tracing::info!(
                            kind,
                            "the resource is not served (CRD not installed); none are read until it is"
                        );
                        generation.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => tracing::warn!(kind, error = %e, "watching Kubernetes failed; retrying"),
            }
        }
    });
}
