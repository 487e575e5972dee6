//! Checks of the Helm chart in `deploy/helm/raftmesh`: [`render`] runs `helm template` (with
//! the CRDs) and parses every object; [`validate`] round-trips each one through its
//! k8s-openapi type, so a misspelt, misplaced or unknown field (which the type would drop)
//! fails instead of being ignored by the API server; [`pss`] checks pod templates against the
//! Pod Security Standards.

pub mod pss;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_json::Value;

/// The Kubernetes version the chart is rendered for.
pub const KUBE_VERSION: &str = "1.29.0";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// helm could not be run.
    #[error("running helm: {0} (scripts/test installs it)")]
    Helm(std::io::Error),
    /// helm refused.
    #[error("helm {args}: {stderr}")]
    Refused {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// The output is not YAML.
    #[error("rendered YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/raftmesh")
}

/// Runs `helm ARGS` in the chart's directory: its standard output.
pub fn helm(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("helm")
        .args(args)
        .current_dir(chart_dir())
        .output()
        .map_err(Error::Helm)?;
    if !out.status.success() {
        return Err(Error::Refused {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template` of the chart with `extra` arguments (values files, `--set`), CRDs
/// included: every object.
pub fn render(extra: &[&str]) -> Result<Vec<Value>, Error> {
    let mut args = vec![
        "template",
        "r1",
        ".",
        "--namespace",
        "mesh",
        "--include-crds",
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    let text = helm(&args)?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)
            .expect("YAML values are JSON values");
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Checks `object` against its Kubernetes type: it must parse, and serializing it back must
/// give the same object (a field the type does not know would be dropped). The problems,
/// empty when it is valid.
pub fn validate(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or("");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    let back = match kind {
        "StatefulSet" => round_trip::<StatefulSet>(object),
        "DaemonSet" => round_trip::<DaemonSet>(object),
        "Service" => round_trip::<Service>(object),
        "ServiceAccount" => round_trip::<ServiceAccount>(object),
        "ConfigMap" => round_trip::<ConfigMap>(object),
        "StorageClass" => round_trip::<StorageClass>(object),
        "Namespace" => round_trip::<Namespace>(object),
        "Pod" => round_trip::<Pod>(object),
        "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(object),
        "ClusterRole" => round_trip::<ClusterRole>(object),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(object),
        "Role" => round_trip::<Role>(object),
        "RoleBinding" => round_trip::<RoleBinding>(object),
        "Job" => round_trip::<Job>(object),
        "CronJob" => round_trip::<CronJob>(object),
        "ValidatingAdmissionPolicy" => round_trip::<ValidatingAdmissionPolicy>(object),
        "ValidatingAdmissionPolicyBinding" => {
            round_trip::<ValidatingAdmissionPolicyBinding>(object)
        }
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(object),
        "ServiceMonitor" | "PodMonitor" => {
            round_trip::<monitoring::Monitor>(object).and_then(|v| {
                monitoring::check(kind, &v)?;
                Ok(v)
            })
        }
        other => return vec![format!("{other} {name}: no schema to check it against")],
    };
    match back {
        Err(e) => vec![format!("{kind} {name}: {e}")],
        Ok(back) => {
            let mut problems = Vec::new();
            diff(object, &back, &format!("{kind} {name}"), &mut problems);
            problems
        }
    }
}

/// Our own schema of the Prometheus Operator objects the chart renders (their CRDs are not in
/// k8s-openapi): the fields the chart uses, and no others.
pub mod monitoring {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// A ServiceMonitor or PodMonitor.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Monitor {
        /// `monitoring.coreos.com/v1`.
        pub api_version: String,
        /// `ServiceMonitor` or `PodMonitor`.
        pub kind: String,
        /// Name, namespace, labels.
        pub metadata: ObjectMeta,
        /// What to scrape.
        pub spec: MonitorSpec,
    }

    /// The spec of either kind.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct MonitorSpec {
        /// The Services (ServiceMonitor) or pods (PodMonitor) to scrape.
        pub selector: LabelSelector,
        /// ServiceMonitor's endpoints.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub endpoints: Option<Vec<Endpoint>>,
        /// PodMonitor's endpoints.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pod_metrics_endpoints: Option<Vec<Endpoint>>,
    }

    /// One scrape endpoint.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Endpoint {
        /// The named port.
        pub port: String,
        /// The HTTP path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path: Option<String>,
        /// How often (the operator's duration pattern: `30s`, `1m30s`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interval: Option<String>,
    }

    fn duration(s: &str) -> bool {
        let mut rest = s;
        if rest.is_empty() {
            return false;
        }
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return false;
            }
            rest = &rest[digits..];
            let unit = ["ms", "s", "m", "h"]
                .into_iter()
                .find(|u| rest.starts_with(u));
            let Some(unit) = unit else { return false };
            rest = &rest[unit.len()..];
        }
        true
    }

    /// What the CRDs require beyond the shape: the group version, the endpoints list that
    /// belongs to the kind, and durations the operator accepts.
    pub fn check(kind: &str, v: &Value) -> Result<(), String> {
        if v["apiVersion"] != "monitoring.coreos.com/v1" {
            return Err(format!("{kind}: apiVersion {}", v["apiVersion"]));
        }
        let (wanted, other) = if kind == "ServiceMonitor" {
            ("endpoints", "podMetricsEndpoints")
        } else {
            ("podMetricsEndpoints", "endpoints")
        };
        let spec = &v["spec"];
        if spec.get(other).is_some() || spec[wanted].as_array().is_none_or(Vec::is_empty) {
            return Err(format!("{kind}: needs spec.{wanted} (and no spec.{other})"));
        }
        for e in spec[wanted].as_array().into_iter().flatten() {
            if let Some(i) = e["interval"].as_str()
                && !duration(i)
            {
                return Err(format!("{kind}: interval {i:?} is not a duration like 30s"));
            }
        }
        Ok(())
    }
}

/// Where `a` (rendered) and `b` (after the round trip) differ.
fn diff(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff(v, w, &format!("{at}.{k}"), out),
                    None => out.push(format!("{at}.{k}: unknown field (dropped by the type)")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{at}.{k}: added by the type"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(v, w, &format!("{at}[{i}]"), out);
            }
        }
        _ if a == b => {}
        // The types hold some integers as floats (JSON schema bounds): the same number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ => out.push(format!("{at}: {a} became {b}")),
    }
}
