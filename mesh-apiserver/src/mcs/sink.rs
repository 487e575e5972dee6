//! Where the MCS controller's objects go: one [`Sink`] with two implementations, so the lab
//! (no API server) runs the same controller as a cluster.
//!
//! - [`ManifestsSink`]: YAML files in a directory (`<manifests-dir>/mcs/`, which the publisher
//!   does not read): `serviceimports.yaml`, `endpointslices.yaml` and
//!   `serviceexports-status.yaml` (each ServiceExport with its status), each written whole and
//!   renamed into place, and only when its content changes.
//! - [`LiveSink`]: the Kubernetes API. ServiceImports (in the version the API serves,
//!   `v1beta1` else `v1alpha1`) and EndpointSlices carry [`MANAGED_BY`]; only objects with that
//!   label are ever replaced or deleted. ServiceExport conditions go through the status
//!   subresource. What was written is remembered, so a pass that changes nothing makes no
//!   request; everything is listed again every [`RESYNC`] (and after an error), which also
//!   undoes edits made by others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use serde_json::{Value, json};

use super::desired::{
    Desired, MANAGED_BY, export_status, import_object, import_status, slice_object,
};
use crate::publish::objects::{MCS_GROUP, MCS_VERSIONS};

/// How often the live sink lists what exists again, whatever it remembers.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Why a sink could not write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Kubernetes API refused or failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        source: Box<kube::Error>,
    },
    /// Neither version of the ServiceImport resource is served.
    #[error("the ServiceImport CRD (multicluster.x-k8s.io) is not installed")]
    NoCrd,
}

/// What one apply wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    /// Objects created or replaced (files rewritten, for the manifests sink).
    pub written: u64,
    /// Objects deleted.
    pub deleted: u64,
    /// Statuses written.
    pub statuses: u64,
}

/// Where the objects go.
#[derive(Debug)]
pub enum Sink {
    /// A directory.
    Manifests(ManifestsSink),
    /// The Kubernetes API.
    Live(Box<LiveSink>),
}

impl Sink {
    /// Brings the objects to `desired`.
    pub async fn apply(&mut self, desired: &Desired) -> Result<Writes, SinkError> {
        match self {
            Sink::Manifests(s) => s.apply(desired),
            Sink::Live(s) => s.apply(desired).await,
        }
    }
}

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The YAML files of a directory.
#[derive(Debug)]
pub struct ManifestsSink {
    dir: PathBuf,
}

impl ManifestsSink {
    /// Writes into `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> ManifestsSink {
        ManifestsSink { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn apply(&mut self, desired: &Desired) -> Result<Writes, SinkError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| SinkError::File { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let imports: Vec<Value> = desired
            .imports
            .iter()
            .map(|((ns, name), o)| {
                let mut v = import_object(ns, name, o, MCS_VERSIONS[0]);
                v["status"] = import_status(o);
                v
            })
            .collect();
        let slices: Vec<Value> = desired
            .slices
            .iter()
            .map(|((ns, name), s)| slice_object(ns, name, s))
            .collect();
        // Transition times survive rewrites: read back the statuses as they are.
        let status_file = self.dir.join("serviceexports-status.yaml");
        let old: BTreeMap<(String, String), Value> = std::fs::read_to_string(&status_file)
            .ok()
            .map(|text| parse_documents(&text))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let ns = v["metadata"]["namespace"].as_str()?.to_owned();
                let name = v["metadata"]["name"].as_str()?.to_owned();
                Some(((ns, name), v["status"].clone()))
            })
            .collect();
        let now = now();
        let statuses: Vec<Value> = desired
            .statuses
            .iter()
            .map(|((ns, name), (version, conditions))| {
                json!({
                    "apiVersion": format!("{MCS_GROUP}/{version}"),
                    "kind": "ServiceExport",
                    "metadata": {"name": name, "namespace": ns},
                    "status": export_status(conditions, old.get(&(ns.clone(), name.clone())), &now),
                })
            })
            .collect();
        let mut writes = Writes::default();
        for (file, objects) in [
            ("serviceimports.yaml", imports),
            ("endpointslices.yaml", slices),
            ("serviceexports-status.yaml", statuses),
        ] {
            let mut text = String::new();
            for o in &objects {
                text.push_str("---\n");
                text.push_str(&serde_yaml::to_string(o).expect("JSON values are YAML"));
            }
            let path = self.dir.join(file);
            if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
                continue;
            }
            let tmp = self.dir.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, text).map_err(err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(err(&path))?;
            if file == "serviceexports-status.yaml" {
                writes.statuses += 1;
            } else {
                writes.written += 1;
            }
        }
        Ok(writes)
    }
}

/// The YAML documents of `text` as JSON values (unparsable documents left out).
pub fn parse_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

/// The resource of `kind` (plural `plural`) in `version` of the MCS group.
fn mcs_resource(kind: &str, plural: &str, version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(MCS_GROUP, version, kind), plural)
}

fn slice_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
        "endpointslices",
    )
}

/// The Kubernetes API.
pub struct LiveSink {
    client: kube::Client,
    /// The ServiceImport version served (found at the first resync).
    version: Option<&'static str>,
    /// What is in the API, as last listed and written: ServiceImports (spec and status)
    /// and EndpointSlices by (namespace, name), and the statuses written by (namespace, name).
    imports: BTreeMap<(String, String), Value>,
    slices: BTreeMap<(String, String), Value>,
    statuses: BTreeMap<(String, String), Value>,
    synced: Option<Instant>,
}

impl std::fmt::Debug for LiveSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSink")
            .field("version", &self.version)
            .field("imports", &self.imports.len())
            .field("slices", &self.slices.len())
            .finish_non_exhaustive()
    }
}

/// What of an object the sink compares: its spec (ServiceImport), or everything an
/// EndpointSlice holds but its metadata beyond name, namespace and labels.
fn essence(v: &Value) -> Value {
    let mut e = v.clone();
    if let Some(m) = e.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels"));
    }
    if let Some(o) = e.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
    }
    e
}

fn key_of(v: &Value) -> Option<(String, String)> {
    Some((
        v["metadata"]["namespace"].as_str()?.to_owned(),
        v["metadata"]["name"].as_str()?.to_owned(),
    ))
}

impl LiveSink {
    /// Writes through `client`.
    pub fn new(client: kube::Client) -> LiveSink {
        LiveSink {
            client,
            version: None,
            imports: BTreeMap::new(),
            slices: BTreeMap::new(),
            statuses: BTreeMap::new(),
            synced: None,
        }
    }

    fn api(&self, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Lists what this controller manages.
    async fn resync(&mut self) -> Result<(), SinkError> {
        let selector = format!("app.kubernetes.io/managed-by={MANAGED_BY}");
        let params = ListParams::default().labels(&selector);
        let mut found = None;
        for version in MCS_VERSIONS {
            let ar = mcs_resource("ServiceImport", "serviceimports", version);
            match self.api(&ar, None).list(&params).await {
                Ok(list) => {
                    found = Some((version, list));
                    break;
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => continue,
                Err(source) => {
                    return Err(SinkError::Api {
                        what: "listing ServiceImports".into(),
                        source: Box::new(source),
                    });
                }
            }
        }
        let Some((version, list)) = found else {
            return Err(SinkError::NoCrd);
        };
        self.version = Some(version);
        self.imports = list
            .items
            .into_iter()
            .filter_map(|o| {
                let v = serde_json::to_value(o).ok()?;
                Some((key_of(&v)?, v))
            })
            .collect();
        let list = self
            .api(&slice_resource(), None)
            .list(&params)
            .await
            .map_err(|source| SinkError::Api {
                what: "listing EndpointSlices".into(),
                source: Box::new(source),
            })?;
        self.slices = list
            .items
            .into_iter()
            .filter_map(|o| {
                let v = serde_json::to_value(o).ok()?;
                Some((key_of(&v)?, v))
            })
            .collect();
        self.statuses.clear();
        self.synced = Some(Instant::now());
        Ok(())
    }

    async fn apply(&mut self, desired: &Desired) -> Result<Writes, SinkError> {
        if self.synced.is_none_or(|t| t.elapsed() >= RESYNC) {
            self.resync().await?;
        }
        let result = self.write(desired).await;
        if result.is_err() {
            // Something was not as remembered: list again at the next pass.
            self.synced = None;
        }
        result
    }

    async fn write(&mut self, desired: &Desired) -> Result<Writes, SinkError> {
        let version = self.version.expect("resynced");
        let imports_ar = mcs_resource("ServiceImport", "serviceimports", version);
        let slices_ar = slice_resource();
        let mut writes = Writes::default();
        // ServiceImports: spec, then status.
        for ((ns, name), o) in &desired.imports {
            let mut want = import_object(ns, name, o, version);
            let status = import_status(o);
            let have = self.imports.get(&(ns.clone(), name.clone())).cloned();
            let api = self.api(&imports_ar, Some(ns));
            let mut stored = match &have {
                Some(h)
                    if essence(&json!({"metadata": h["metadata"], "spec": h["spec"]}))
                        == essence(
                            &json!({"metadata": want["metadata"], "spec": want["spec"]}),
                        ) =>
                {
                    h.clone()
                }
                _ => match self
                    .put(&api, &mut want, have.as_ref(), "ServiceImport")
                    .await?
                {
                    Some(v) => {
                        writes.written += 1;
                        v
                    }
                    None => continue, // The namespace does not exist (yet).
                },
            };
            if stored["status"] != status {
                stored["status"] = status;
                let body: DynamicObject =
                    serde_json::from_value(stored.clone()).expect("an object");
                let v = api
                    .replace_status(name, &PostParams::default(), &body)
                    .await
                    .map_err(|source| SinkError::Api {
                        what: format!("writing the status of ServiceImport {ns}/{name}"),
                        source: Box::new(source),
                    })?;
                stored = serde_json::to_value(v).expect("JSON");
                writes.statuses += 1;
            }
            self.imports.insert((ns.clone(), name.clone()), stored);
        }
        // Imported EndpointSlices.
        for ((ns, name), s) in &desired.slices {
            let mut want = slice_object(ns, name, s);
            let have = self.slices.get(&(ns.clone(), name.clone())).cloned();
            if have.as_ref().is_some_and(|h| essence(h) == essence(&want)) {
                continue;
            }
            let api = self.api(&slices_ar, Some(ns));
            if let Some(v) = self
                .put(&api, &mut want, have.as_ref(), "EndpointSlice")
                .await?
            {
                writes.written += 1;
                self.slices.insert((ns.clone(), name.clone()), v);
            }
        }
        // What is no longer wanted (only ever objects with our label: the lists select it).
        for key in self.imports.keys().cloned().collect::<Vec<_>>() {
            if !desired.imports.contains_key(&key) {
                self.delete(&imports_ar, &key, "ServiceImport").await?;
                self.imports.remove(&key);
                writes.deleted += 1;
            }
        }
        for key in self.slices.keys().cloned().collect::<Vec<_>>() {
            if !desired.slices.contains_key(&key) {
                self.delete(&slices_ar, &key, "EndpointSlice").await?;
                self.slices.remove(&key);
                writes.deleted += 1;
            }
        }
        // ServiceExport conditions.
        let now = now();
        for ((ns, name), (version, conditions)) in &desired.statuses {
            let key = (ns.clone(), name.clone());
            let ar = mcs_resource("ServiceExport", "serviceexports", version);
            let api = self.api(&ar, Some(ns));
            let remembered = self.statuses.get(&key);
            if remembered.is_some_and(|s| export_status(conditions, Some(s), &now) == *s) {
                continue;
            }
            let Some(current) = api.get_opt(name).await.map_err(|source| SinkError::Api {
                what: format!("reading ServiceExport {ns}/{name}"),
                source: Box::new(source),
            })?
            else {
                continue; // Deleted since the source listed it.
            };
            let mut current = serde_json::to_value(current).expect("JSON");
            let status = export_status(conditions, current.get("status"), &now);
            if current.get("status") != Some(&status) {
                current["status"] = status.clone();
                let body: DynamicObject =
                    serde_json::from_value(current.clone()).expect("an object");
                api.replace_status(name, &PostParams::default(), &body)
                    .await
                    .map_err(|source| SinkError::Api {
                        what: format!("writing the conditions of ServiceExport {ns}/{name}"),
                        source: Box::new(source),
                    })?;
                writes.statuses += 1;
            }
            self.statuses.insert(key, status);
        }
        self.statuses
            .retain(|k, _| desired.statuses.contains_key(k));
        Ok(writes)
    }

    /// Creates `want`, or replaces `have` with it; `None` when its namespace does not exist.
    async fn put(
        &self,
        api: &Api<DynamicObject>,
        want: &mut Value,
        have: Option<&Value>,
        kind: &str,
    ) -> Result<Option<Value>, SinkError> {
        let name = want["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let what = |verb: &str| format!("{verb} {kind} {name}");
        let result = match have {
            Some(h) => {
                want["metadata"]["resourceVersion"] = h["metadata"]["resourceVersion"].clone();
                if let Some(status) = h.get("status") {
                    want["status"] = status.clone();
                }
                let object: DynamicObject =
                    serde_json::from_value(want.clone()).expect("an object");
                api.replace(&name, &PostParams::default(), &object)
                    .await
                    .map_err(|source| SinkError::Api {
                        what: what("replacing"),
                        source: Box::new(source),
                    })
            }
            None => {
                let object: DynamicObject =
                    serde_json::from_value(want.clone()).expect("an object");
                match api.create(&PostParams::default(), &object).await {
                    Err(kube::Error::Api(s)) if s.is_not_found() => {
                        tracing::debug!(kind, name, "namespace missing; created once it exists");
                        return Ok(None);
                    }
                    other => other.map_err(|source| SinkError::Api {
                        what: what("creating"),
                        source: Box::new(source),
                    }),
                }
            }
        }?;
        Ok(Some(serde_json::to_value(result).expect("JSON")))
    }

    async fn delete(
        &self,
        ar: &ApiResource,
        (ns, name): &(String, String),
        kind: &str,
    ) -> Result<(), SinkError> {
        match self
            .api(ar, Some(ns))
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(source) => Err(SinkError::Api {
                what: format!("deleting {kind} {ns}/{name}"),
                source: Box::new(source),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
