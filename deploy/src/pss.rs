//! The Kubernetes Pod Security Standards, as the `PodSecurity` admission plugin applies them to
//! a namespace labelled `pod-security.kubernetes.io/enforce: <level>`: every rule of the
//! `baseline` and `restricted` levels (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>,
//! Kubernetes 1.29–1.35), checked on a rendered pod template, so the chart's pods are known to
//! be admitted where they go (Talos enforces `baseline` in every namespace but `kube-system`).
//!
//! Works on the JSON of a pod template (`metadata` + `spec`), as rendered: the chart's objects
//! are round-tripped through their k8s-openapi types elsewhere ([`crate::validate`]).

use serde_json::Value;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything.
    Privileged,
    /// Known privilege escalations prevented.
    Baseline,
    /// Hardened.
    Restricted,
}

impl Level {
    /// The level of a `pod-security.kubernetes.io/enforce` label value.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
}

/// Capabilities `baseline` allows a container to add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls `baseline` allows.
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types `baseline` allows.
const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Volume types `restricted` allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Every container of a pod spec: containers, init and ephemeral containers.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| spec[k].as_array().into_iter().flatten())
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("?")
}

/// What keeps the pod template `template` (`{metadata, spec}`) from being admitted at
/// `level`: one line per violated rule and place, empty when it is admitted.
pub fn violations(template: &Value, level: Level) -> Vec<String> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    baseline(template, &mut out);
    if level == Level::Restricted {
        restricted(&template["spec"], &mut out);
    }
    out
}

fn baseline(template: &Value, out: &mut Vec<String>) {
    let spec = &template["spec"];
    let psc = &spec["securityContext"];
    // HostProcess.
    if psc["windowsOptions"]["hostProcess"] == true {
        out.push("HostProcess: spec.securityContext.windowsOptions.hostProcess".into());
    }
    // Host namespaces.
    for ns in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[ns] == true {
            out.push(format!("host namespaces: spec.{ns} is true"));
        }
    }
    // HostPath volumes.
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if v.get("hostPath").is_some() {
            out.push(format!(
                "hostPath volumes: volume {}",
                v["name"].as_str().unwrap_or("?")
            ));
        }
    }
    // Sysctls.
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let n = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&n) {
            out.push(format!("sysctls: {n} is not a safe sysctl"));
        }
    }
    // AppArmor (annotations, and the field since 1.30).
    if let Some(ann) = template["metadata"]["annotations"].as_object() {
        for (k, v) in ann {
            if k.starts_with("container.apparmor.security.beta.kubernetes.io/") {
                let v = v.as_str().unwrap_or("");
                if !(v == "runtime/default" || v.starts_with("localhost/")) {
                    out.push(format!("AppArmor: annotation {k}: {v}"));
                }
            }
        }
    }
    let mut contexts: Vec<(String, &Value)> = vec![("spec.securityContext".into(), psc)];
    for c in containers(spec) {
        contexts.push((format!("container {}", name(c)), &c["securityContext"]));
        let sc = &c["securityContext"];
        if sc["windowsOptions"]["hostProcess"] == true {
            out.push(format!("HostProcess: container {}", name(c)));
        }
        if sc["privileged"] == true {
            out.push(format!("privileged containers: container {}", name(c)));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            let cap = cap.as_str().unwrap_or("");
            if !BASELINE_CAPABILITIES.contains(&cap) {
                out.push(format!(
                    "capabilities: container {} adds {cap}, beyond the baseline set",
                    name(c)
                ));
            }
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_i64().is_some_and(|h| h != 0) {
                out.push(format!(
                    "host ports: container {} hostPort {}",
                    name(c),
                    p["hostPort"]
                ));
            }
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            out.push(format!("/proc mount type: container {}", name(c)));
        }
    }
    for (at, sc) in contexts {
        if let Some(t) = sc["appArmorProfile"]["type"].as_str()
            && !matches!(t, "RuntimeDefault" | "Localhost")
        {
            out.push(format!("AppArmor: {at} profile {t}"));
        }
        let se = &sc["seLinuxOptions"];
        if let Some(t) = se["type"].as_str()
            && !SELINUX_TYPES.contains(&t)
        {
            out.push(format!("SELinux: {at} type {t}"));
        }
        for field in ["user", "role"] {
            if se[field].as_str().is_some_and(|v| !v.is_empty()) {
                out.push(format!("SELinux: {at} sets {field}"));
            }
        }
        if sc["seccompProfile"]["type"] == "Unconfined" {
            out.push(format!("seccomp: {at} is Unconfined"));
        }
    }
}

fn restricted(spec: &Value, out: &mut Vec<String>) {
    let psc = &spec["securityContext"];
    // Volume types.
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = v
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "name")
            .collect();
        for k in kinds {
            if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                out.push(format!(
                    "volume types: volume {} is {k}",
                    v["name"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    let pod_non_root = psc["runAsNonRoot"] == true;
    let pod_seccomp = psc["seccompProfile"]["type"]
        .as_str()
        .is_some_and(|t| matches!(t, "RuntimeDefault" | "Localhost"));
    if psc["runAsUser"] == 0 {
        out.push("running as non-root user: spec.securityContext.runAsUser is 0".into());
    }
    for c in containers(spec) {
        let sc = &c["securityContext"];
        let n = name(c);
        if sc["allowPrivilegeEscalation"] != false {
            out.push(format!(
                "privilege escalation: container {n} does not set allowPrivilegeEscalation: false"
            ));
        }
        let non_root = match sc["runAsNonRoot"].as_bool() {
            Some(v) => v,
            None => pod_non_root,
        };
        if !non_root {
            out.push(format!(
                "running as non-root: container {n} (and the pod) do not set runAsNonRoot: true"
            ));
        }
        if sc["runAsUser"] == 0 {
            out.push(format!(
                "running as non-root user: container {n} runAsUser is 0"
            ));
        }
        let seccomp = match sc["seccompProfile"]["type"].as_str() {
            Some(t) => matches!(t, "RuntimeDefault" | "Localhost"),
            None => pod_seccomp,
        };
        if !seccomp {
            out.push(format!(
                "seccomp: container {n} (and the pod) set no RuntimeDefault or Localhost profile"
            ));
        }
        let drops_all = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            out.push(format!("capabilities: container {n} does not drop ALL"));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                out.push(format!("capabilities: container {n} adds {cap}"));
            }
        }
    }
}

/// The pod templates of a rendered object: (where, template `{metadata, spec}`).
pub fn pod_templates(object: &Value) -> Vec<(String, &Value)> {
    let kind = object["kind"].as_str().unwrap_or("");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    let template = match kind {
        "Pod" => Some(object),
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicaSet" => {
            Some(&object["spec"]["template"])
        }
        "CronJob" => Some(&object["spec"]["jobTemplate"]["spec"]["template"]),
        _ => None,
    };
    template
        .map(|t| vec![(format!("{kind} {name}"), t)])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
