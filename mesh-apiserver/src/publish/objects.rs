//! The Kubernetes objects the mesh publishes, as k8s-openapi types, and reading them from
//! YAML as `kubectl get -o yaml` prints it (one object, several `---` documents, or a `List`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

/// The `MeshPolicy` custom resource (`mesh.raftmesh.io/v1alpha1`): which peers, possibly in
/// other clusters, may reach the endpoints it selects.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct MeshPolicy {
    /// Standard object metadata (name and namespace are used).
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// The policy.
    pub spec: MeshPolicySpec,
}

/// `spec` of a [`MeshPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// Labels of the endpoints the policy applies to.
    #[serde(default)]
    pub endpoint_selector: LabelSelector,
    /// Allowed ingress.
    #[serde(default)]
    pub ingress: Vec<MeshPolicyRule>,
}

/// `matchLabels` only (expressions are not supported, and refused).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must all match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One ingress rule of a [`MeshPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicyRule {
    /// Clusters the peers may be in (empty: any).
    #[serde(default)]
    pub from_clusters: Vec<String>,
    /// Labels the peers must have.
    #[serde(default)]
    pub from_endpoints: LabelSelector,
    /// Ports (empty: any).
    #[serde(default)]
    pub ports: Vec<MeshPolicyPort>,
}

/// A port of a [`MeshPolicyRule`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct MeshPolicyPort {
    /// Port number (0: any).
    #[serde(default)]
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`; empty for any.
    #[serde(default)]
    pub protocol: String,
}

/// The API group of the Multi-Cluster Services API.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// The versions of it read and written: mcs-api's current (`v1beta1`) and the one most
/// clusters still serve (`v1alpha1`). `ServiceExport` has the same shape in both.
pub const MCS_VERSIONS: [&str; 2] = ["v1beta1", "v1alpha1"];

/// A `ServiceExport` (multicluster.x-k8s.io, `v1alpha1` or `v1beta1`): exports the Service of
/// the same namespace and name to every cluster of the clusterset. It has no spec; its
/// creation time orders conflicting exports (the oldest wins).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ServiceExport {
    /// Standard object metadata (name, namespace, creationTimestamp are used).
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// The version it was read in (its status is written back in the same one).
    #[serde(skip)]
    pub version: String,
}

impl ServiceExport {
    /// `creationTimestamp` as Unix seconds; 0 when unset (a manifest written without one).
    pub fn created(&self) -> i64 {
        self.metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second())
    }
}

/// Every object of the kinds the mesh publishes.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// MeshPolicies.
    pub policies: Vec<MeshPolicy>,
    /// ServiceExports.
    pub exports: Vec<ServiceExport>,
}

/// A manifest that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML, or not the shape of its kind.
    #[error("document {document}: {source}")]
    Yaml {
        /// 1-based document number in the file.
        document: usize,
        /// The parser's complaint.
        source: serde_yaml::Error,
    },
    /// Not an object with apiVersion and kind.
    #[error("document {document}: {reason}")]
    Shape {
        /// 1-based document number.
        document: usize,
        /// What is missing.
        reason: String,
    },
}

impl Objects {
    /// Adds every object in `yaml`; objects of other kinds are ignored. Returns how many
    /// objects were taken.
    pub fn add_yaml(&mut self, yaml: &str) -> Result<usize, ManifestError> {
        let mut taken = 0;
        for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let document = i + 1;
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|source| ManifestError::Yaml { document, source })?;
            if value.is_null() {
                continue;
            }
            taken += self.add_value(value, document)?;
        }
        Ok(taken)
    }

    fn add_value(
        &mut self,
        value: serde_yaml::Value,
        document: usize,
    ) -> Result<usize, ManifestError> {
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(ManifestError::Shape {
                document,
                reason: "not a Kubernetes object (no apiVersion and kind)".to_owned(),
            });
        };
        fn parse<T: serde::de::DeserializeOwned>(
            v: serde_yaml::Value,
            document: usize,
        ) -> Result<T, ManifestError> {
            serde_yaml::from_value(v).map_err(|source| ManifestError::Yaml { document, source })
        }
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "List") => {
                let items = value
                    .get("items")
                    .and_then(|v| v.as_sequence())
                    .cloned()
                    .unwrap_or_default();
                let mut taken = 0;
                for item in items {
                    taken += self.add_value(item, document)?;
                }
                return Ok(taken);
            }
            ("v1", "Node") => self.nodes.push(parse(value, document)?),
            ("v1", "Pod") => self.pods.push(parse(value, document)?),
            ("v1", "Service") => self.services.push(parse(value, document)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => self.slices.push(parse(value, document)?),
            ("mesh.raftmesh.io/v1alpha1", "MeshPolicy") => {
                self.policies.push(parse(value, document)?)
            }
            (api, "ServiceExport")
                if api
                    .strip_prefix(MCS_GROUP)
                    .and_then(|v| v.strip_prefix('/'))
                    .is_some_and(|v| MCS_VERSIONS.contains(&v)) =>
            {
                let mut export: ServiceExport = parse(value, document)?;
                export.version = api[MCS_GROUP.len() + 1..].to_owned();
                self.exports.push(export)
            }
            _ => return Ok(0),
        }
        Ok(1)
    }
}
