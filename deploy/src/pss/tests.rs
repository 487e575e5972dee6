use serde_json::json;

use super::*;

/// A pod template `restricted` admits.
fn clean() -> Value {
    json!({
        "metadata": {"labels": {"app": "x"}},
        "spec": {
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "main",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
                "ports": [{"containerPort": 80}],
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
                {"name": "tls", "secret": {"secretName": "s"}},
                {"name": "token", "projected": {"sources": []}},
            ],
        },
    })
}

/// `template` with `f` applied.
fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut t = clean();
    f(&mut t);
    t
}

fn rejected(t: &Value, level: Level, rule: &str) {
    let v = violations(t, level);
    assert!(
        v.iter().any(|x| x.starts_with(rule)),
        "{level:?} admitted what breaks {rule:?}: {v:?}"
    );
}

#[test]
fn a_hardened_pod_passes_every_level() {
    for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
        assert_eq!(
            violations(&clean(), level),
            Vec::<String>::new(),
            "{level:?}"
        );
    }
}

#[test]
fn each_baseline_rule_rejects_its_violation() {
    let cases: Vec<(&str, Value)> = vec![
        (
            "host namespaces",
            with(|t| t["spec"]["hostNetwork"] = json!(true)),
        ),
        (
            "host namespaces",
            with(|t| t["spec"]["hostPID"] = json!(true)),
        ),
        (
            "host namespaces",
            with(|t| t["spec"]["hostIPC"] = json!(true)),
        ),
        (
            "privileged containers",
            with(|t| t["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true)),
        ),
        (
            "capabilities",
            with(|t| {
                t["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["NET_ADMIN"])
            }),
        ),
        (
            "hostPath volumes",
            with(|t| {
                t["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "h", "hostPath": {"path": "/"}}))
            }),
        ),
        (
            "host ports",
            with(|t| t["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(8080)),
        ),
        (
            "seccomp",
            with(|t| {
                t["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                    json!({"type": "Unconfined"})
            }),
        ),
        (
            "SELinux",
            with(|t| t["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"})),
        ),
        (
            "SELinux",
            with(|t| {
                t["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] =
                    json!({"user": "system_u"})
            }),
        ),
        (
            "AppArmor",
            with(|t| {
                t["metadata"]["annotations"] =
                    json!({"container.apparmor.security.beta.kubernetes.io/main": "unconfined"})
            }),
        ),
        (
            "AppArmor",
            with(|t| {
                t["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"})
            }),
        ),
        (
            "/proc mount type",
            with(|t| {
                t["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked")
            }),
        ),
        (
            "sysctls",
            with(|t| {
                t["spec"]["securityContext"]["sysctls"] =
                    json!([{"name": "net.ipv4.ip_forward", "value": "1"}])
            }),
        ),
        (
            "HostProcess",
            with(|t| t["spec"]["securityContext"]["windowsOptions"] = json!({"hostProcess": true})),
        ),
    ];
    for (rule, t) in &cases {
        rejected(t, Level::Baseline, rule);
        rejected(t, Level::Restricted, rule);
        assert!(violations(t, Level::Privileged).is_empty());
    }
    // What baseline allows: a capability of its set, a safe sysctl, RuntimeDefault AppArmor,
    // a container_t SELinux type.
    let allowed = with(|t| {
        t["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["CHOWN"]);
        t["spec"]["securityContext"]["sysctls"] =
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
        t["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "container_t"});
        t["metadata"]["annotations"] =
            json!({"container.apparmor.security.beta.kubernetes.io/main": "runtime/default"});
    });
    assert_eq!(violations(&allowed, Level::Baseline), Vec::<String>::new());
}

#[test]
fn each_restricted_rule_rejects_its_violation_that_baseline_admits() {
    let cases: Vec<(&str, Value)> = vec![
        (
            "volume types",
            with(|t| {
                t["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "n", "nfs": {"server": "s", "path": "/"}}))
            }),
        ),
        (
            "privilege escalation",
            with(|t| {
                t["spec"]["containers"][0]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("allowPrivilegeEscalation");
            }),
        ),
        (
            "running as non-root",
            with(|t| t["spec"]["securityContext"]["runAsNonRoot"] = json!(false)),
        ),
        (
            "running as non-root",
            with(|t| t["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false)),
        ),
        (
            "running as non-root user",
            with(|t| t["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0)),
        ),
        (
            "running as non-root user",
            with(|t| t["spec"]["securityContext"]["runAsUser"] = json!(0)),
        ),
        (
            "seccomp",
            with(|t| {
                t["spec"]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("seccompProfile");
            }),
        ),
        (
            "capabilities",
            with(|t| t["spec"]["containers"][0]["securityContext"]["capabilities"] = json!({})),
        ),
        (
            "capabilities",
            with(|t| {
                t["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["CHOWN"])
            }),
        ),
    ];
    for (rule, t) in &cases {
        rejected(t, Level::Restricted, rule);
        assert_eq!(
            violations(t, Level::Baseline),
            Vec::<String>::new(),
            "{rule}"
        );
    }
    // Init containers count too; a container's own seccomp profile stands for the pod's.
    let init = with(|t| {
        t["spec"]["initContainers"] = json!([{"name": "init", "image": "x"}]);
    });
    rejected(&init, Level::Restricted, "privilege escalation");
    let per_container = with(|t| {
        t["spec"]["securityContext"]
            .as_object_mut()
            .unwrap()
            .remove("seccompProfile");
        t["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
            json!({"type": "RuntimeDefault"});
    });
    assert_eq!(
        violations(&per_container, Level::Restricted),
        Vec::<String>::new()
    );
}

#[test]
fn pod_templates_are_found_in_every_workload_kind() {
    let t = clean();
    for (kind, object) in [
        (
            "Pod",
            json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": t["spec"]}),
        ),
        (
            "DaemonSet",
            json!({"kind": "DaemonSet", "metadata": {"name": "d"}, "spec": {"template": t}}),
        ),
        (
            "Job",
            json!({"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": t}}),
        ),
        (
            "CronJob",
            json!({"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": t}}}}),
        ),
    ] {
        let found = pod_templates(&object);
        assert_eq!(found.len(), 1, "{kind}");
        assert!(found[0].1["spec"]["containers"].is_array(), "{kind}");
    }
    assert!(pod_templates(&json!({"kind": "Service"})).is_empty());
}
