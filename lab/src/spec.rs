//! What a lab is made of: the YAML spec `meshctl lab up --spec` reads (format and defaults in
//! `lab/examples/default.yaml`, which is also the default lab), validated once into a
//! [`LabSpec`] whose every name and number is known to fit the lab's address plan
//! ([`crate::plan`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default lab's spec.
pub const DEFAULT_SPEC: &str = include_str!("../examples/default.yaml");

/// Most clusters in one lab (each takes a /28 of the lab's host range for its members).
pub const MAX_CLUSTERS: usize = 15;
/// Most API-server members per cluster.
pub const MAX_MEMBERS: u8 = 7;
/// Most nodes per cluster.
pub const MAX_NODES: u8 = 50;
/// Most pods per node (addresses .10 to .249 of its /24).
pub const MAX_PODS_PER_NODE: usize = 240;
/// Most services per cluster (VIPs .10 to .249 of 10.255.<id>.0/24).
pub const MAX_SERVICES: usize = 240;

/// A spec that cannot be built, and why; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not YAML of the spec's shape.
    #[error("not a lab spec: {0}")]
    Parse(String),
    /// A field's value is out of its range or malformed.
    #[error("{field}: {reason}")]
    Invalid {
        /// Where, e.g. `clusters[1].pods[0].node`.
        field: String,
        /// What is wrong, with the limit.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A lab: clusters, and how agents treat disconnected remotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabSpec {
    /// The agents' `--remote-stale-after` (written `10s`, `500ms`).
    #[serde(
        default = "default_stale",
        serialize_with = "mesh_api::duration::text::serialize",
        deserialize_with = "stale_after"
    )]
    pub remote_stale_after: Duration,
    /// The clusters (1..=15).
    pub clusters: Vec<ClusterSpec>,
    /// More flags for every API server (e.g. `[--remote-write-mib-per-minute, "2"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apiserver_args: Vec<String>,
    /// More flags for every node agent (e.g. `[--remote-pod-limit, "1000"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_args: Vec<String>,
}

fn default_stale() -> Duration {
    Duration::from_secs(10)
}

/// `remoteStaleAfter`, its name in the error (serde names no top-level field).
fn stale_after<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    mesh_api::duration::text::deserialize(d)
        .map_err(|e| serde::de::Error::custom(format!("remoteStaleAfter: {e}")))
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    /// Its name (a DNS label), also its meshctl context's.
    pub name: String,
    /// Its id (1..=250): its address ranges derive from it.
    pub id: u8,
    /// How its nodes are built: `plain`, `talos` or `eks` ([`crate::flavor`]).
    #[serde(default)]
    pub flavor: crate::flavor::Flavor,
    /// API-server members (1..=7).
    #[serde(default = "default_members")]
    pub members: u8,
    /// Nodes, named `node-1` … (1..=50).
    #[serde(default = "default_nodes")]
    pub nodes: u8,
    /// Pods.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// Services.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// MeshPolicies.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

fn default_members() -> u8 {
    3
}

fn default_nodes() -> u8 {
    2
}

fn default_namespace() -> String {
    "demo".to_owned()
}

fn yes() -> bool {
    true
}

/// A pod: a namespace behind its node running `mesh-echo serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// Its name (a DNS label, unique in its cluster).
    pub name: String,
    /// Its Kubernetes namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Its node (`node-N`); by default the nodes in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether its endpoints are ready (a not-ready pod stays in the EndpointSlices, as in
    /// Kubernetes, but is no backend).
    #[serde(default = "yes")]
    pub ready: bool,
}

/// A Service with a selector; its EndpointSlice lists the pods the selector matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `mesh.raftmesh.io/global`.
    #[serde(default)]
    pub global: bool,
    /// `mesh.raftmesh.io/shared` (default true).
    #[serde(default = "yes")]
    pub shared: bool,
    /// `mesh.raftmesh.io/affinity`: `local`, `remote` or `none`.
    #[serde(default = "default_affinity")]
    pub affinity: String,
    /// A `ServiceExport` beside it (the Multi-Cluster Services API): every cluster of the
    /// clusterset imports it, and its pods answer `<name>.<namespace>.svc.clusterset.local`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exported: bool,
    /// `clusterIP: None`: a headless service; its endpoints carry their pods' names as
    /// hostnames (as a StatefulSet's do).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// Labels the backends carry.
    pub selector: BTreeMap<String, String>,
    /// Its ports.
    pub ports: Vec<PortSpec>,
}

fn default_affinity() -> String {
    "none".to_owned()
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// Its name (unique in the service).
    pub name: String,
    /// The port on the VIP.
    pub port: u16,
    /// The pods' port (the echo workload listens on 8080).
    #[serde(default = "default_target")]
    pub target_port: u16,
    /// `TCP` or `UDP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_target() -> u16 {
    8080
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

/// A MeshPolicy: its `spec` is written as given (the API server validates it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `spec` of the MeshPolicy object.
    pub spec: serde_yaml::Value,
}

impl Eq for PolicySpec {}

/// Whether `s` is a DNS label (RFC 1123): what cluster, node, pod and namespace names must be.
pub fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl LabSpec {
    /// Parses and validates a spec.
    pub fn parse(text: &str) -> Result<LabSpec, SpecError> {
        let mut spec: LabSpec =
            serde_yaml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        spec.validate()?;
        spec.assign_nodes();
        Ok(spec)
    }

    /// The default lab.
    pub fn default_lab() -> LabSpec {
        LabSpec::parse(DEFAULT_SPEC).expect("the default spec is valid")
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Gives every pod without a node the nodes in turn.
    fn assign_nodes(&mut self) {
        for c in &mut self.clusters {
            let nodes = c.nodes;
            for (i, p) in c.pods.iter_mut().enumerate() {
                if p.node.is_none() {
                    p.node = Some(format!("node-{}", i % usize::from(nodes) + 1));
                }
            }
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        for (field, args) in [
            ("apiserverArgs", &self.apiserver_args),
            ("agentArgs", &self.agent_args),
        ] {
            if args.first().is_some_and(|a| !a.starts_with("--")) {
                return Err(invalid(
                    field,
                    format!("{:?} is not a flag (--name)", args[0]),
                ));
            }
        }
        if self.clusters.is_empty() || self.clusters.len() > MAX_CLUSTERS {
            return Err(invalid(
                "clusters",
                format!("1 to {MAX_CLUSTERS} clusters, not {}", self.clusters.len()),
            ));
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if !dns_label(&c.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("{:?} is not a DNS label (a-z, 0-9, -)", c.name),
                ));
            }
            if !names.insert(&c.name) {
                return Err(invalid(format!("{at}.name"), format!("{:?} twice", c.name)));
            }
            if !(1..=250).contains(&c.id) || !ids.insert(c.id) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("{} is not a unique id in 1..=250", c.id),
                ));
            }
            if !(1..=MAX_MEMBERS).contains(&c.members) {
                return Err(invalid(
                    format!("{at}.members"),
                    format!("1 to {MAX_MEMBERS}, not {}", c.members),
                ));
            }
            if !(1..=MAX_NODES).contains(&c.nodes) {
                return Err(invalid(
                    format!("{at}.nodes"),
                    format!("1 to {MAX_NODES}, not {}", c.nodes),
                ));
            }
            c.validate_pods(&at)?;
            c.validate_services(&at)?;
            let mut policies = BTreeSet::new();
            for (j, p) in c.policies.iter().enumerate() {
                let at = format!("{at}.policies[{j}]");
                if !dns_label(&p.name) || !dns_label(&p.namespace) {
                    return Err(invalid(at, "name and namespace must be DNS labels"));
                }
                if !policies.insert((&p.namespace, &p.name)) {
                    return Err(invalid(at, format!("{}/{} twice", p.namespace, p.name)));
                }
            }
        }
        Ok(())
    }
}

impl ClusterSpec {
    /// The names of its nodes.
    pub fn node_names(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.nodes).map(|n| format!("node-{n}"))
    }

    fn validate_pods(&self, at: &str) -> Result<(), SpecError> {
        let mut names = BTreeSet::new();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for (j, p) in self.pods.iter().enumerate() {
            let at = format!("{at}.pods[{j}]");
            if !dns_label(&p.name) || !dns_label(&p.namespace) {
                return Err(invalid(
                    at,
                    format!(
                        "{:?} in {:?}: name and namespace must be DNS labels",
                        p.name, p.namespace
                    ),
                ));
            }
            if !names.insert(&p.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!(
                        "{:?} twice (pod names are unique per cluster in the lab)",
                        p.name
                    ),
                ));
            }
            let node = match &p.node {
                Some(n) => {
                    if !self.node_names().any(|m| m == *n) {
                        return Err(invalid(
                            format!("{at}.node"),
                            format!("{n:?}: the cluster has node-1 … node-{}", self.nodes),
                        ));
                    }
                    n.clone()
                }
                None => format!("node-{}", j % usize::from(self.nodes) + 1),
            };
            let count = per_node.entry(node.clone()).or_default();
            *count += 1;
            if *count > MAX_PODS_PER_NODE {
                return Err(invalid(
                    at,
                    format!("more than {MAX_PODS_PER_NODE} pods on {node}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_services(&self, at: &str) -> Result<(), SpecError> {
        if self.services.len() > MAX_SERVICES {
            return Err(invalid(
                format!("{at}.services"),
                format!("at most {MAX_SERVICES}"),
            ));
        }
        let mut names = BTreeSet::new();
        for (j, s) in self.services.iter().enumerate() {
            let at = format!("{at}.services[{j}]");
            if !dns_label(&s.name) || !dns_label(&s.namespace) {
                return Err(invalid(at, "name and namespace must be DNS labels"));
            }
            if !names.insert((&s.namespace, &s.name)) {
                return Err(invalid(at, format!("{}/{} twice", s.namespace, s.name)));
            }
            if !matches!(s.affinity.as_str(), "local" | "remote" | "none") {
                return Err(invalid(
                    format!("{at}.affinity"),
                    format!("{:?}: local, remote or none", s.affinity),
                ));
            }
            if s.selector.is_empty() {
                return Err(invalid(format!("{at}.selector"), "at least one label"));
            }
            if s.ports.is_empty() {
                return Err(invalid(format!("{at}.ports"), "at least one port"));
            }
            let mut ports = BTreeSet::new();
            for (k, p) in s.ports.iter().enumerate() {
                let at = format!("{at}.ports[{k}]");
                if !matches!(p.protocol.as_str(), "TCP" | "UDP") {
                    return Err(invalid(
                        format!("{at}.protocol"),
                        format!("{:?}: TCP or UDP", p.protocol),
                    ));
                }
                if p.port == 0 || p.target_port == 0 {
                    return Err(invalid(at, "ports are 1..=65535"));
                }
                if !ports.insert(&p.name) {
                    return Err(invalid(format!("{at}.name"), format!("{:?} twice", p.name)));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
