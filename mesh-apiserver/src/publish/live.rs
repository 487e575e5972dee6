//! The live Kubernetes API as a source of objects: kube-rs reflectors on Node, Pod, Service,
//! EndpointSlice and the `MeshPolicy` custom resource, in-cluster or from a kubeconfig.
//!
//! The source is not ready until every reflector has completed its initial list: publishing
//! before that would delete the records of objects merely not listed yet. Every watch event
//! bumps a generation, which is how the publisher notices a change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::objects::{MeshPolicy, Objects};

/// The MeshPolicy custom resource's group, version, kind and plural.
pub fn mesh_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mesh.raftmesh.io", "v1alpha1", "MeshPolicy"),
        "meshpolicies",
    )
}

/// Reflected objects of every kind the mesh publishes.
#[derive(Clone)]
pub struct LiveSource {
    nodes: Store<Node>,
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    policies: Store<DynamicObject>,
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
        let ar = mesh_policy_resource();
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let reader = writer.as_reader();
        let stream = reflector::reflector(
            writer,
            watcher(
                Api::<DynamicObject>::all_with(client, &ar),
                watcher::Config::default(),
            ),
        );
        spawn_drive(stream, generation.clone(), "MeshPolicy");
        LiveSource {
            nodes,
            pods,
            services,
            slices,
            policies: reader,
            generation,
        }
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

fn spawn_drive<S, K>(stream: S, generation: Arc<AtomicU64>, kind: &'static str)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.default_backoff());
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    generation.fetch_add(1, Relaxed);
                }
                Err(e) => tracing::warn!(kind, error = %e, "watching Kubernetes failed; retrying"),
            }
        }
    });
}
