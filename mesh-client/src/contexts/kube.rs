//! meshctl on a Kubernetes cluster: `--context NAME` names a kubeconfig context when no meshctl
//! context has that name. meshctl then finds the raftmesh install the chart made there:
//!
//! - the remote Service (label `app.kubernetes.io/component=apiserver-remote`), in
//!   `$RAFTMESH_NAMESPACE` or in the one namespace that has one;
//! - where it is reached from outside the cluster: the LoadBalancer's ingress (IP or host
//!   name) or, for a NodePort Service, the node port on every ready node (external address
//!   first, else internal);
//! - the admin Secret (`ca.crt`, `tls.crt`, `tls.key`) and the CA Secret (`ca.crt`, `ca.key`)
//!   named by the Service's annotations. The admin files are cached under
//!   `~/.raftmesh/kube/<context>/` (mode 0600, as kubectl caches credentials); the CA key is
//!   held in memory only, for `meshctl connect`, and only when the Secret is readable.
//!
//! The API server's certificate does not name the load balancer's address (it is not known
//! when the certificate is made), so meshctl checks it against the name the Service's
//! `raftmesh.io/server-name` annotation gives, which the certificate does carry.
//!
//! Everything that decides is a function of API objects ([`choose`], [`install`],
//! [`credentials`], [`member_health`]), tested on objects as the API returns them; only
//! [`resolve`] and [`member_pods`] talk to a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{CaPem, ClusterContext, KubeInstall};

/// The remote Service the chart labels for meshctl.
pub const REMOTE_SELECTOR: &str =
    "app.kubernetes.io/name=raftmesh,app.kubernetes.io/component=apiserver-remote";
/// The API server pods.
pub const APISERVER_SELECTOR: &str =
    "app.kubernetes.io/name=raftmesh,app.kubernetes.io/component=apiserver";
/// Which namespace to look in when a cluster has more than one install.
pub const NAMESPACE_ENV: &str = "RAFTMESH_NAMESPACE";

/// Annotations of the remote Service (set by the chart).
pub const ADMIN_SECRET_ANNOTATION: &str = "raftmesh.io/admin-secret";
pub const CA_SECRET_ANNOTATION: &str = "raftmesh.io/ca-secret";
pub const SERVER_NAME_ANNOTATION: &str = "raftmesh.io/server-name";
pub const CLUSTER_ANNOTATION: &str = "raftmesh.io/cluster";

/// The remote Service of the install to use: the one in `namespace` when given, else the only
/// one there is.
pub fn choose<'a>(
    services: &'a [Service],
    namespace: Option<&str>,
    kube_context: &str,
) -> anyhow::Result<&'a Service> {
    let candidates: Vec<&Service> = services
        .iter()
        .filter(|s| namespace.is_none_or(|ns| s.metadata.namespace.as_deref() == Some(ns)))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => match namespace {
            Some(ns) => bail!(
                "kubeconfig context {kube_context:?} has no raftmesh install in namespace {ns} (no Service labelled {REMOTE_SELECTOR})"
            ),
            None => bail!(
                "kubeconfig context {kube_context:?} has no raftmesh install (no Service labelled {REMOTE_SELECTOR}; helm install the chart first)"
            ),
        },
        many => {
            let names: Vec<String> = many.iter().map(|s| qualified(s)).collect();
            bail!(
                "kubeconfig context {kube_context:?} has {} raftmesh installs ({}): set {NAMESPACE_ENV} to one's namespace",
                many.len(),
                names.join(", ")
            )
        }
    }
}

/// What the remote Service says about the install: where it is reached and its Secrets.
pub fn install(service: &Service, nodes: &[Node]) -> anyhow::Result<KubeInstall> {
    let namespace = service
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| anyhow!("Service {} has no namespace", qualified(service)))?;
    let annotation = |key: &str| {
        service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "Service {} lacks the annotation {key} (made by an older chart? helm upgrade it)",
                    qualified(service)
                )
            })
    };
    Ok(KubeInstall {
        namespace,
        service: service.metadata.name.clone().unwrap_or_default(),
        cluster: annotation(CLUSTER_ANNOTATION).ok(),
        endpoints: endpoints(service, nodes)?,
        server_name: annotation(SERVER_NAME_ANNOTATION)?,
        admin_secret: annotation(ADMIN_SECRET_ANNOTATION)?,
        ca_secret: annotation(CA_SECRET_ANNOTATION)?,
    })
}

/// `https://` URLs the Service is reached at from outside the cluster.
fn endpoints(service: &Service, nodes: &[Node]) -> anyhow::Result<Vec<String>> {
    let name = qualified(service);
    let spec = service
        .spec
        .as_ref()
        .ok_or_else(|| anyhow!("Service {name} has no spec"))?;
    let ports = spec.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("client"))
        .or_else(|| ports.first())
        .ok_or_else(|| anyhow!("Service {name} has no ports"))?;
    let mut urls = Vec::new();
    match spec.type_.as_deref() {
        Some("LoadBalancer") => {
            let ingress = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_deref())
                .unwrap_or_default();
            for i in ingress {
                if let Some(host) = i.ip.as_deref().or(i.hostname.as_deref()) {
                    urls.push(url(host, port.port));
                }
            }
            if urls.is_empty() {
                bail!(
                    "the load balancer of Service {name} has no address yet (kubectl -n {} get service {} shows when it has)",
                    service.metadata.namespace.as_deref().unwrap_or_default(),
                    service.metadata.name.as_deref().unwrap_or_default()
                );
            }
        }
        Some("NodePort") => {
            let node_port = port
                .node_port
                .ok_or_else(|| anyhow!("NodePort Service {name} has no node port allocated"))?;
            let mut ready: Vec<&Node> = nodes.iter().filter(|n| node_ready(n)).collect();
            ready.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            for node in ready {
                if let Some(address) = node_address(node) {
                    urls.push(url(&address, node_port));
                }
            }
            if urls.is_empty() {
                bail!("Service {name} is a NodePort, and no node is ready with an address");
            }
        }
        other => bail!(
            "Service {name} is of type {}: other clusters reach a LoadBalancer or a NodePort",
            other.unwrap_or("ClusterIP")
        ),
    }
    Ok(urls)
}

fn url(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A node's external address, else its internal one.
fn node_address(node: &Node) -> Option<String> {
    let addresses = node.status.as_ref()?.addresses.as_deref()?;
    ["ExternalIP", "InternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .find(|a| a.type_ == *kind)
            .map(|a| a.address.clone())
    })
}

/// The admin credentials and, when readable, the CA with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The cluster's CA certificate (PEM).
    pub ca_crt: String,
    /// The admin certificate and key (PEM).
    pub cert: String,
    pub key: String,
    /// The CA's certificate and key, from the CA Secret.
    pub ca: Option<CaPem>,
}

/// Reads the admin Secret and, if given, the CA Secret.
pub fn credentials(admin: &Secret, ca: Option<&Secret>) -> anyhow::Result<Credentials> {
    let field = |secret: &Secret, key: &str| -> anyhow::Result<String> {
        let name = format!(
            "{}/{}",
            secret.metadata.namespace.as_deref().unwrap_or_default(),
            secret.metadata.name.as_deref().unwrap_or_default()
        );
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| anyhow!("Secret {name} has no {key}"))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| anyhow!("Secret {name}: {key} is not PEM"))
    };
    let ca = match ca {
        Some(s) => Some(CaPem {
            cert: field(s, "ca.crt")?,
            key: field(s, "ca.key")?,
        }),
        None => None,
    };
    Ok(Credentials {
        ca_crt: field(admin, "ca.crt")?,
        cert: field(admin, "tls.crt")?,
        key: field(admin, "tls.key")?,
        ca,
    })
}

/// Whether each API server pod is ready, by pod name (the member's name), with why not.
pub fn member_health(pods: &[Pod]) -> BTreeMap<String, Result<(), String>> {
    pods.iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let status = p.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default()
                .iter()
                .find(|c| c.type_ == "Ready");
            let health = match ready {
                Some(c) if c.status == "True" => Ok(()),
                Some(c) => Err(format!(
                    "pod not ready{}",
                    c.message
                        .as_deref()
                        .or(c.reason.as_deref())
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                )),
                None => Err(format!(
                    "pod {}",
                    status
                        .and_then(|s| s.phase.as_deref())
                        .unwrap_or("without status")
                        .to_lowercase()
                )),
            };
            Some((name, health))
        })
        .collect()
}

/// Whether the kubeconfig has a context `name` (a missing or unreadable kubeconfig has none).
pub fn has_context(name: &str) -> bool {
    Kubeconfig::read().is_ok_and(|k| k.contexts.iter().any(|c| c.name == name))
}

/// A client of the kubeconfig context `name`.
pub async fn client(name: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read().context("reading the kubeconfig")?;
    let options = KubeConfigOptions {
        context: Some(name.to_owned()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("kubeconfig context {name:?}"))?;
    kube::Client::try_from(config).with_context(|| format!("kubeconfig context {name:?}"))
}

/// Resolves the kubeconfig context `name` to a meshctl context, caching the admin files in
/// `cache` (a directory of this context's own).
pub async fn resolve(name: &str, cache: &Path) -> anyhow::Result<ClusterContext> {
    let client = client(name).await?;
    let namespace = std::env::var(NAMESPACE_ENV).ok().filter(|n| !n.is_empty());
    let services: Api<Service> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let services = services
        .list(&ListParams::default().labels(REMOTE_SELECTOR))
        .await
        .with_context(|| format!("listing raftmesh Services in kubeconfig context {name:?}"))?
        .items;
    let service = choose(&services, namespace.as_deref(), name)?;
    let nodes = if service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort") {
        Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing nodes in kubeconfig context {name:?}"))?
            .items
    } else {
        Vec::new()
    };
    let found = install(service, &nodes)?;
    let secrets: Api<Secret> = Api::namespaced(client, &found.namespace);
    let admin = secrets.get(&found.admin_secret).await.with_context(|| {
        format!(
            "reading the admin Secret {}/{}",
            found.namespace, found.admin_secret
        )
    })?;
    // Reading the CA key is a privilege of its own: without it, everything but connect works.
    let ca = secrets.get_opt(&found.ca_secret).await.ok().flatten();
    let creds = credentials(&admin, ca.as_ref())?;
    let files = [
        ("ca.crt", &creds.ca_crt),
        ("admin-kube.crt", &creds.cert),
        ("admin-kube.key", &creds.key),
    ];
    for (file, contents) in files {
        let path = cache.join(file);
        certs::pki::write_pem(&path, contents)
            .with_context(|| format!("caching {}", path.display()))?;
    }
    Ok(ClusterContext {
        name: name.to_owned(),
        endpoints: found.endpoints.clone(),
        tls: Some((
            cache.join("ca.crt"),
            cache.join("admin-kube.crt"),
            cache.join("admin-kube.key"),
        )),
        pki_dir: None,
        ca_pem: creds.ca,
        server_name: Some(found.server_name.clone()),
        kube: Some(found),
    })
}

/// The API server pods of an install.
pub async fn member_pods(name: &str, install: &KubeInstall) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client(name).await?, &install.namespace);
    Ok(pods
        .list(&ListParams::default().labels(APISERVER_SELECTOR))
        .await
        .with_context(|| format!("listing API server pods in {}", install.namespace))?
        .items)
}

/// The cache directory of a kubeconfig context under `base`: its name with every byte but
/// `[A-Za-z0-9_-]` percent-encoded (EKS names contexts by ARN), so two names never share one.
pub fn cache_dir(base: &Path, name: &str) -> PathBuf {
    let mut safe = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') {
            safe.push(char::from(b));
        } else {
            safe.push_str(&format!("%{b:02X}"));
        }
    }
    base.join(safe)
}

fn qualified(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests;
