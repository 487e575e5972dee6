//! The Helm chart: lint and render with the default, Talos and EKS values, every object
//! validated against its Kubernetes type, and what the rendered objects say checked against
//! what the values asked for.

use deploy::{helm, render, validate};
use serde_json::{Value, json};

const IDENTITY: &[&str] = &["--set", "cluster.name=apps,cluster.id=1"];

/// What an install on each platform gives besides the values file: the pod CIDR on EKS.
fn platform_args(values: Option<&str>) -> Vec<&'static str> {
    match values {
        Some("values-eks.yaml") => vec!["--set", "cluster.podCIDR=10.0.0.0/16"],
        _ => Vec::new(),
    }
}

fn rendered(values: Option<&str>) -> Vec<Value> {
    let mut args: Vec<&str> = IDENTITY.to_vec();
    if let Some(f) = values {
        args.extend(["-f", f]);
    }
    args.extend(platform_args(values));
    render(&args).unwrap()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container(o: &Value) -> &Value {
    &o["spec"]["template"]["spec"]["containers"][0]
}

fn args(o: &Value) -> Vec<String> {
    container(o)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn env(o: &Value, name: &str) -> Option<String> {
    container(o)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

#[test]
fn lint_and_render_with_each_values_file_and_every_object_is_valid() {
    for values in [None, Some("values-talos.yaml"), Some("values-eks.yaml")] {
        let mut lint = vec!["lint", ".", "--set", "cluster.name=apps,cluster.id=1"];
        if let Some(f) = values {
            lint.extend(["-f", f]);
        }
        lint.extend(platform_args(values));
        helm(&lint).unwrap_or_else(|e| panic!("{values:?}: {e}"));
        let objects = rendered(values);
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "CustomResourceDefinition",
            "StatefulSet",
            "DaemonSet",
            "PodDisruptionBudget",
            "ClusterRole",
        ] {
            assert!(kinds.contains(&kind), "{values:?}: no {kind} in {kinds:?}");
        }
        for o in &objects {
            let problems = validate(o);
            assert!(problems.is_empty(), "{values:?}: {problems:#?}");
        }
    }
}

#[test]
fn the_validation_catches_an_unknown_or_misplaced_field() {
    let objects = rendered(None);
    let mut sts = object(&objects, "StatefulSet", "r1-apiserver").clone();
    assert_eq!(validate(&sts), Vec::<String>::new());
    sts["spec"]["replicaz"] = json!(3);
    sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    let problems = validate(&sts);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("replicaz") || problems[1].contains("replicaz"));
    let mut svc = object(&objects, "Service", "r1-remote").clone();
    svc["spec"]["ports"][0]["port"] = json!("not a number");
    assert_eq!(validate(&svc).len(), 1);
    assert_eq!(
        validate(&json!({"kind": "PrometheusRule", "metadata": {"name": "x"}})),
        ["PrometheusRule x: no schema to check it against"],
        "a kind without a schema is not passed"
    );
}

#[test]
fn the_api_servers_are_three_spread_members_with_a_budget_and_readiness() {
    let objects = rendered(None);
    let sts = object(&objects, "StatefulSet", "r1-apiserver");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["serviceName"], "r1-peers");
    let anti = &sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        [0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "apiserver"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "8Gi"
    );
    assert_eq!(
        container(sts)["readinessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    let pdb = object(&objects, "PodDisruptionBudget", "r1-apiserver");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    let a = args(sts);
    for want in [
        "--initial-cluster=r1-apiserver-0=https://r1-apiserver-0.r1-peers.mesh.svc:2380,r1-apiserver-1=https://r1-apiserver-1.r1-peers.mesh.svc:2380,r1-apiserver-2=https://r1-apiserver-2.r1-peers.mesh.svc:2380",
        "--cluster-name=apps",
        "--cluster-id=1",
        "--kubernetes",
        "--client-cert-auth",
        "--peer-client-cert-auth",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} not in {a:#?}");
    }
    assert!(!a.iter().any(|x| x.starts_with("--pod-cidr")));
    let peers = object(&objects, "Service", "r1-peers");
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    // Non-root, read-only, no capabilities.
    let sc = &container(sts)["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["readOnlyRootFilesystem"], true);
}

#[test]
fn rbac_reads_the_published_kinds_reviews_tokens_writes_the_mcs_objects_and_nothing_more() {
    let objects = rendered(None);
    let role = object(&objects, "ClusterRole", "r1-apiserver");
    let rules: Vec<(String, String, String)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let group = r["apiGroups"][0].as_str().unwrap().to_owned();
            let verbs: Vec<&str> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let verbs = verbs.join(",");
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |res| {
                    (
                        group.clone(),
                        res.as_str().unwrap().to_owned(),
                        verbs.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let read = "get,list,watch";
    let written = "get,list,watch,create,update,delete";
    let want: Vec<(String, String, String)> = [
        ("", "nodes", read),
        ("", "pods", read),
        ("", "services", read),
        // The published kinds are read; imported EndpointSlices are written too.
        ("discovery.k8s.io", "endpointslices", written),
        ("multicluster.x-k8s.io", "serviceexports", read),
        (
            "multicluster.x-k8s.io",
            "serviceexports/status",
            "get,update",
        ),
        ("multicluster.x-k8s.io", "serviceimports", written),
        (
            "multicluster.x-k8s.io",
            "serviceimports/status",
            "get,update",
        ),
        ("mesh.raftmesh.io", "meshpolicies", read),
        // The agents' bootstrap: TokenReviews, create only.
        ("authentication.k8s.io", "tokenreviews", "create"),
    ]
    .iter()
    .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
    .collect();
    let mut got = rules.clone();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
    // The agent gets no API token: only a projected token for the bootstrap (below).
    let agent_sa = object(&objects, "ServiceAccount", "r1-agent");
    assert_eq!(agent_sa["automountServiceAccountToken"], false);
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ClusterRoleBinding" && o["subjects"][0]["name"] == "r1-agent")
    );
}

#[test]
fn the_agent_has_the_capabilities_and_mounts_it_needs_and_no_more() {
    let objects = rendered(None);
    let ds = object(&objects, "DaemonSet", "r1-agent");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["automountServiceAccountToken"], false);
    let sc = &container(ds)["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"])
    );
    assert!(sc.get("privileged").is_none_or(|p| p == false));
    // Added capabilities are effective for root only; the image's default user is not root.
    assert_eq!(sc["runAsUser"], 0);
    let mounts: Vec<(&str, &str)> = container(ds)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    for want in [
        ("bpffs", "/sys/fs/bpf"),
        ("cgroup", "/sys/fs/cgroup"),
        ("ca", "/etc/raftmesh/ca"),
        ("token", "/var/run/secrets/raftmesh"),
        ("state", "/var/lib/raftmesh-agent"),
    ] {
        assert!(mounts.contains(&want), "{want:?} not in {mounts:?}");
    }
    // Its certificate comes from the bootstrap: the CA certificate alone from a Secret, a
    // short-lived token for the bootstrap's audience.
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |n: &str| volumes.iter().find(|v| v["name"] == n).unwrap();
    // In their own namespace, the CA certificate the PKI jobs keep there (the Secrets are in
    // the release's).
    assert_eq!(
        volume("ca")["configMap"],
        json!({"name": "r1-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
    );
    assert_eq!(ds["metadata"]["namespace"], "r1-agent");
    assert_eq!(
        volume("token")["projected"]["sources"],
        json!([{"serviceAccountToken": {"audience": "raftmesh", "expirationSeconds": 3600, "path": "token"}}])
    );
    let a = args(ds);
    for want in [
        "--bootstrap-url=https://r1-apiserver.mesh.svc:2381",
        "--bootstrap-token-file=/var/run/secrets/raftmesh/token",
        "--cacert=/etc/raftmesh/ca/ca.crt",
        "--cert=/var/lib/raftmesh-agent/agent.crt",
        "--key=/var/lib/raftmesh-agent/agent.key",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} not in {a:#?}");
    }
    assert!(
        !mounts.iter().any(|(n, _)| *n == "wireguard-sockets"),
        "kernel WireGuard"
    );
    let a = args(ds);
    assert!(a.contains(&"--endpoints=https://r1-apiserver.mesh.svc:2379".to_owned()));
    // A pin directory per node, below the bpffs mount (never the mount itself).
    assert!(
        a.contains(&"--bpffs=/sys/fs/bpf/raftmesh/$(NODE_NAME)".to_owned()),
        "{a:?}"
    );
    assert!(a.contains(&"--wg-backend=kernel".to_owned()));
    assert!(a.contains(&"--policy-attach=auto".to_owned()));
    assert!(a.contains(&"--masquerade-exemption=nftables".to_owned()));
    let forced = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,agent.policyAttach=tc,agent.masqueradeExemption=off",
    ])
    .unwrap();
    let forced = args(object(&forced, "DaemonSet", "r1-agent"));
    assert!(
        forced.contains(&"--policy-attach=tc".to_owned()),
        "{forced:?}"
    );
    assert!(
        forced.contains(&"--masquerade-exemption=off".to_owned()),
        "{forced:?}"
    );
    // Userspace WireGuard mounts the UAPI socket directory.
    let userspace = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,agent.wireguard.backend=userspace",
    ])
    .unwrap();
    let ds = object(&userspace, "DaemonSet", "r1-agent");
    assert!(args(ds).contains(&"--wg-backend=userspace".to_owned()));
    assert!(
        container(ds)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/var/run/wireguard")
    );
}

#[test]
fn talos_values_reach_the_cgroup_root_kubeprism_and_a_node_port() {
    let objects = rendered(Some("values-talos.yaml"));
    let ds = object(&objects, "DaemonSet", "r1-agent");
    assert!(args(ds).contains(&"--cgroup-root=/sys/fs/cgroup".to_owned()));
    // KubePrism for the host-network agents; the API servers' pods have their own loopback,
    // so they keep the in-cluster Service.
    assert_eq!(
        env(ds, "KUBERNETES_SERVICE_HOST").as_deref(),
        Some("localhost")
    );
    assert_eq!(env(ds, "KUBERNETES_SERVICE_PORT").as_deref(), Some("7445"));
    let sts = object(&objects, "StatefulSet", "r1-apiserver");
    assert_eq!(env(sts, "KUBERNETES_SERVICE_HOST"), None);
    let remote = object(&objects, "Service", "r1-remote");
    assert_eq!(remote["spec"]["type"], "NodePort");
    // Not 32379: Cilium ClusterMesh's default, and both may run on one cluster.
    assert_eq!(remote["spec"]["ports"][0]["nodePort"], 32479);
    // Another cgroup mount (e.g. this lab machine's) reaches the flag and the mount.
    let here = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,agent.cgroupRoot=/sys/fs/cgroup/unified",
    ])
    .unwrap();
    let ds = object(&here, "DaemonSet", "r1-agent");
    assert!(args(ds).contains(&"--cgroup-root=/sys/fs/cgroup/unified".to_owned()));
    assert!(
        container(ds)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "cgroup" && m["mountPath"] == "/sys/fs/cgroup/unified")
    );
}

#[test]
fn eks_values_reach_the_load_balancer_annotations_and_the_pod_cidr() {
    let objects = rendered(Some("values-eks.yaml"));
    let remote = object(&objects, "Service", "r1-remote");
    assert_eq!(remote["spec"]["type"], "LoadBalancer");
    let ann = &remote["metadata"]["annotations"];
    assert_eq!(
        ann["service.beta.kubernetes.io/aws-load-balancer-type"],
        "external"
    );
    assert_eq!(
        ann["service.beta.kubernetes.io/aws-load-balancer-scheme"],
        "internal"
    );
    // What meshctl --context <kubeconfig context> finds the install by, kept beside the
    // operator's own annotations.
    assert_eq!(
        remote["metadata"]["labels"]["app.kubernetes.io/component"],
        "apiserver-remote"
    );
    assert_eq!(ann["raftmesh.io/cluster"], "apps");
    assert_eq!(ann["raftmesh.io/server-name"], "r1-apiserver.mesh.svc");
    assert_eq!(ann["raftmesh.io/admin-secret"], "r1-admin-tls");
    assert_eq!(ann["raftmesh.io/ca-secret"], "r1-ca");
    let sts = object(&objects, "StatefulSet", "r1-apiserver");
    assert!(args(sts).contains(&"--pod-cidr=10.0.0.0/16".to_owned()));
    assert_eq!(
        env(sts, "KUBERNETES_SERVICE_HOST"),
        None,
        "in-cluster defaults on EKS"
    );
}

#[test]
fn bad_values_are_refused_with_the_field_named() {
    let refused = |set: &str| match render(&["--set", set]) {
        Ok(_) => panic!("{set} rendered"),
        Err(e) => e.to_string(),
    };
    assert!(refused("cluster.id=1").contains("cluster.name is required"));
    assert!(refused("cluster.name=apps").contains("cluster.id is required"));
    // The schema names the field and the rule (values.schema.json).
    for (set, says) in [
        (
            "cluster.name=apps,cluster.id=300",
            "cluster.id: Must be less than or equal to 255",
        ),
        (
            "cluster.name=apps,cluster.id=1,agent.wireguard.backend=wg",
            "agent.wireguard.backend: agent.wireguard.backend must be one of the following",
        ),
        (
            "cluster.name=apps,cluster.id=1,apiserver.remote.type=ClusterIP",
            "apiserver.remote.type: apiserver.remote.type must be one of the following",
        ),
    ] {
        let e = refused(set);
        assert!(e.contains(says), "{set}: {e}");
    }
}

#[test]
fn monitoring_objects_only_when_asked_and_valid_against_our_schema() {
    let plain = rendered(None);
    assert!(
        !plain
            .iter()
            .any(|o| o["kind"] == "ServiceMonitor" || o["kind"] == "PodMonitor")
    );
    let objects = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom",
    ])
    .unwrap();
    let sm = object(&objects, "ServiceMonitor", "r1-apiserver");
    let pm = object(&objects, "PodMonitor", "r1-agent");
    for o in [sm, pm] {
        assert_eq!(validate(o), Vec::<String>::new());
        assert_eq!(o["metadata"]["labels"]["release"], "prom");
    }
    // The ServiceMonitor selects the client Service alone (not the peers' or the remote one).
    let selected: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Service")
        .filter(|o| {
            sm["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &o["metadata"]["labels"][k] == v)
        })
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(selected, ["r1-apiserver"]);
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    // Our schema refuses what the operator would.
    let mut bad = sm.clone();
    bad["spec"]["endpoints"][0]["intervall"] = json!("30s");
    assert_eq!(validate(&bad).len(), 1);
    let mut bad = sm.clone();
    bad["spec"]["endpoints"][0]["interval"] = json!("30 seconds");
    assert!(
        validate(&bad)[0].contains("not a duration"),
        "{:?}",
        validate(&bad)
    );
    let mut bad = pm.clone();
    bad["spec"]["endpoints"] = bad["spec"]["podMetricsEndpoints"].take();
    bad["spec"]
        .as_object_mut()
        .unwrap()
        .remove("podMetricsEndpoints");
    assert!(
        validate(&bad)[0].contains("needs spec.podMetricsEndpoints"),
        "{:?}",
        validate(&bad)
    );
}

/// The metric families the binaries export (tests/metrics-exported.txt says how it was read).
fn exported() -> Vec<String> {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/metrics-exported.txt"
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with('#') && !l.is_empty())
    .map(|l| l.split_whitespace().next().unwrap().to_owned())
    .collect()
}

/// The `raftmesh_…` metric names in a PromQL expression, without the scrape suffixes.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("raftmesh_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_total", "_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        out.push(name.to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_is_valid_json_whose_queries_name_exported_metrics() {
    assert!(!rendered(None).iter().any(|o| o["kind"] == "ConfigMap"));
    let objects = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,dashboard.enabled=true",
    ])
    .unwrap();
    let cm = object(&objects, "ConfigMap", "r1-dashboard");
    assert_eq!(validate(cm), Vec::<String>::new());
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["raftmesh.json"].as_str().unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "raftmesh-overview");
    let exported = exported();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metrics_in(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(exported.contains(&n), "{n} (in {expr:?}) is not exported");
                queried += 1;
            }
        }
    }
    assert!(queried >= 20, "{queried}");
    // The check itself catches a misspelt metric.
    assert_eq!(
        metrics_in("rate(raftmesh_raft_leader_change_total[5m])"),
        ["raftmesh_raft_leader_change"]
    );
    assert!(!exported.contains(&"raftmesh_raft_leader_change".to_owned()));
}

#[test]
fn the_api_servers_serve_the_bootstrap_with_the_ca_key_mounted() {
    let objects = rendered(None);
    let sts = object(&objects, "StatefulSet", "r1-apiserver");
    let a = args(sts);
    for want in [
        "--listen-bootstrap-urls=https://0.0.0.0:2381",
        "--bootstrap-ca-file=/etc/raftmesh/ca/ca.crt",
        "--bootstrap-ca-key-file=/etc/raftmesh/ca/ca.key",
        "--bootstrap-service-account=r1-agent/r1-agent",
        "--bootstrap-audience=raftmesh",
        "--agent-cert-validity=168h",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} not in {a:#?}");
    }
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let ca = volumes.iter().find(|v| v["name"] == "ca").unwrap();
    assert_eq!(
        ca["secret"],
        json!({"secretName": "r1-ca", "defaultMode": 288})
    );
    let client = object(&objects, "Service", "r1-apiserver");
    assert!(
        client["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "bootstrap" && p["port"] == 2381)
    );
}

#[test]
fn the_pki_is_made_before_install_and_renewed_daily_with_minimal_rights() {
    let objects = rendered(None);
    let job = object(&objects, "Job", "r1-pki");
    let ann = &job["metadata"]["annotations"];
    assert_eq!(ann["helm.sh/hook"], "pre-install,pre-upgrade");
    assert_eq!(ann["helm.sh/hook-weight"], "0");
    let cron = object(&objects, "CronJob", "r1-pki-renew");
    assert_eq!(cron["spec"]["schedule"], "17 3 * * *");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let pod = |o: &Value| -> Value {
        let t = &o["spec"]["template"];
        if t.is_null() {
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone()
        } else {
            t["spec"].clone()
        }
    };
    for (o, kind) in [(job, "hook"), (cron, "renew")] {
        let spec = pod(o);
        assert_eq!(spec["serviceAccountName"], format!("r1-pki-{kind}"));
        let c = &spec["containers"][0];
        assert_eq!(c["command"], json!(["/usr/local/bin/meshctl"]));
        let a: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for want in [
            "sync-secrets",
            "--cluster=apps",
            "--ca-secret=r1-ca",
            "--apiserver-secret=r1-apiserver-tls",
            "--admin-secret=r1-admin-tls",
            "--san=*.r1-peers.mesh.svc",
            "--san=r1-apiserver.mesh.svc",
            "--days=90",
            "--renew-before-days=30",
        ] {
            assert!(a.contains(&want), "{want} not in {a:?}");
        }
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        // Its Role: create Secrets, read and replace the three by name; nothing else.
        let role = object(&objects, "Role", &format!("r1-pki-{kind}"));
        assert_eq!(
            role["rules"],
            json!([
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["secrets"],
                 "resourceNames": ["r1-ca", "r1-apiserver-tls", "r1-admin-tls"], "verbs": ["get", "update"]}
            ])
        );
        let binding = object(&objects, "RoleBinding", &format!("r1-pki-{kind}"));
        assert_eq!(binding["subjects"][0]["name"], format!("r1-pki-{kind}"));
    }
    // Creating Secrets cannot be limited by name in RBAC: an admission policy does, on
    // clusters that serve it (Kubernetes 1.30+), and only there is it rendered.
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ValidatingAdmissionPolicy")
    );
    let mut args = IDENTITY.to_vec();
    args.extend([
        "--api-versions",
        "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
    ]);
    let with_policy = render(&args).unwrap();
    let policy = object(
        &with_policy,
        "ValidatingAdmissionPolicy",
        "r1-mesh-pki-secrets",
    );
    assert!(validate(policy).is_empty(), "{:?}", validate(policy));
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username in ['system:serviceaccount:mesh:r1-pki-hook', 'system:serviceaccount:mesh:r1-pki-renew']"
    );
    assert_eq!(
        policy["spec"]["validations"][0]["expression"],
        "object.kind == 'Secret' ? object.metadata.name in ['r1-ca', 'r1-apiserver-tls', 'r1-admin-tls'] : object.metadata.name == 'r1-ca'"
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"],
        json!(["CREATE"])
    );
    let binding = object(
        &with_policy,
        "ValidatingAdmissionPolicyBinding",
        "r1-mesh-pki-secrets",
    );
    assert!(validate(binding).is_empty(), "{:?}", validate(binding));
    assert_eq!(binding["spec"]["policyName"], "r1-mesh-pki-secrets");
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // The hook's own account and rights exist before the Job runs.
    let sa = object(&objects, "ServiceAccount", "r1-pki-hook");
    assert_eq!(sa["metadata"]["annotations"]["helm.sh/hook-weight"], "-10");
    // With pki.enabled=false the operator brings the Secrets: no Job, CronJob or Role.
    let own = render(&["--set", "cluster.name=apps,cluster.id=1,pki.enabled=false"]).unwrap();
    assert!(
        !own.iter()
            .any(|o| ["Job", "CronJob", "Role", "RoleBinding"]
                .contains(&o["kind"].as_str().unwrap()))
    );
}

#[test]
fn replacing_a_member_and_restoring_a_backup_reach_the_flags() {
    let objects = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,apiserver.initialClusterState=existing,apiserver.restore.claimName=backup,apiserver.restore.file=backup.db",
    ])
    .unwrap();
    let sts = object(&objects, "StatefulSet", "r1-apiserver");
    let a = args(sts);
    assert!(a.contains(&"--initial-cluster-state=existing".to_owned()));
    assert!(a.contains(&"--restore-from=/restore/backup.db".to_owned()));
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(volumes.iter().any(|v| v["persistentVolumeClaim"]
        == json!({"claimName": "backup", "readOnly": true})));
    assert!(
        container(sts)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/restore" && m["readOnly"] == true)
    );
    // By default neither.
    let plain = rendered(None);
    let a = args(object(&plain, "StatefulSet", "r1-apiserver"));
    assert!(a.contains(&"--initial-cluster-state=new".to_owned()));
    assert!(!a.iter().any(|x| x.starts_with("--restore-from")));
    assert!(
        render(&[
            "--set",
            "cluster.name=apps,cluster.id=1,apiserver.initialClusterState=old"
        ])
        .unwrap_err()
        .to_string()
        .contains("apiserver.initialClusterState")
    );
    assert!(
        render(&[
            "--set",
            "cluster.name=apps,cluster.id=1,apiserver.restore.claimName=b"
        ])
        .unwrap_err()
        .to_string()
        .contains("apiserver.restore.file")
    );
}

/// `--quota-backend-bytes` of the API servers rendered with `extra`.
fn quota(extra: &[&str]) -> Result<String, deploy::Error> {
    let mut a: Vec<&str> = IDENTITY.to_vec();
    a.extend_from_slice(extra);
    let objects = render(&a)?;
    let sts = object(&objects, "StatefulSet", "r1-apiserver");
    Ok(args(sts)
        .into_iter()
        .find_map(|a| a.strip_prefix("--quota-backend-bytes=").map(str::to_owned))
        .expect("a quota flag"))
}

#[test]
fn the_store_quota_is_half_the_memory_limit_and_never_above_it() {
    // Default: a 2Gi limit, so a 1 GiB quota.
    assert_eq!(quota(&[]).unwrap(), "1073741824");
    let with = |set: &str| quota(&["--set", set]);
    assert_eq!(
        with("apiserver.resources.limits.memory=3000Mi").unwrap(),
        (3000u64 * 1024 * 1024 / 2).to_string()
    );
    assert_eq!(
        with("apiserver.quotaBackendBytes=512Mi").unwrap(),
        (512u64 * 1024 * 1024).to_string()
    );
    // A quota at or above the limit, or no limit at all, is refused with the reason.
    for (set, says) in [
        (
            "apiserver.quotaBackendBytes=2Gi",
            "is not below the memory limit 2Gi",
        ),
        (
            "apiserver.quotaBackendBytes=4G",
            "is not below the memory limit 2Gi",
        ),
        (
            "apiserver.resources.limits.memory=null",
            "apiserver.resources.limits.memory is required",
        ),
        (
            "apiserver.resources.limits.memory=1.5Gi",
            "a whole number of bytes",
        ),
    ] {
        let e = with(set).expect_err(set).to_string();
        assert!(e.contains(says), "{set}: {e}");
    }
}

#[test]
fn members_volumes_name_a_class_on_talos_and_eks() {
    let class = |objects: &[Value]| {
        object(objects, "StatefulSet", "r1-apiserver")["spec"]["volumeClaimTemplates"][0]["spec"]
            ["storageClassName"]
            .as_str()
            .map(str::to_owned)
    };
    let talos = rendered(Some("values-talos.yaml"));
    assert_eq!(class(&talos).as_deref(), Some("local-path"));
    assert!(!talos.iter().any(|o| o["kind"] == "StorageClass"));
    let eks = rendered(Some("values-eks.yaml"));
    assert_eq!(class(&eks).as_deref(), Some("raftmesh-gp3"));
    let sc = object(&eks, "StorageClass", "raftmesh-gp3");
    assert_eq!(sc["provisioner"], "ebs.csi.aws.com");
    assert_eq!(sc["parameters"]["type"], "gp3");
    assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");
    // The default values leave the class to the cluster's default one.
    assert_eq!(class(&rendered(None)), None);
    // EKS needs the pod CIDRs: without them the chart says so.
    let e = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1",
        "-f",
        "values-eks.yaml",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("cluster.podCIDR is required here"), "{e}");
}

/// Every values file (and the userspace WireGuard backend), rendered as an install would be.
fn installs() -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for values in [None, Some("values-talos.yaml"), Some("values-eks.yaml")] {
        out.push((format!("{values:?}"), rendered(values)));
    }
    out.push((
        "userspace WireGuard".into(),
        render(&[
            "--set",
            "cluster.name=apps,cluster.id=1,agent.wireguard.backend=userspace",
        ])
        .unwrap(),
    ));
    out
}

#[test]
fn every_pod_is_admitted_by_the_pod_security_level_its_namespace_enforces() {
    use deploy::pss::{self, Level};
    for (install, objects) in installs() {
        // The levels the chart's own namespaces declare; the release's namespace is held to
        // `restricted` (Talos enforces `baseline` there; `restricted` is stricter).
        let declared: std::collections::BTreeMap<String, Level> = objects
            .iter()
            .filter(|o| o["kind"] == "Namespace")
            .map(|o| {
                let name = o["metadata"]["name"].as_str().unwrap().to_owned();
                let level = o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
                    .as_str()
                    .and_then(Level::parse)
                    .unwrap_or_else(|| panic!("{install}: namespace {name} enforces no level"));
                (name, level)
            })
            .collect();
        let mut checked = 0;
        for o in &objects {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("mesh");
            for (what, template) in pss::pod_templates(o) {
                let level = declared.get(ns).copied().unwrap_or(Level::Restricted);
                let v = pss::violations(template, level);
                assert!(
                    v.is_empty(),
                    "{install}: {what} in {ns} ({level:?}): {v:#?}"
                );
                checked += 1;
                // Only the agent needs more than restricted, and it says why in its namespace.
                if level != Level::Restricted {
                    assert_eq!(what, "DaemonSet r1-agent", "{install}");
                    assert!(!pss::violations(template, Level::Baseline).is_empty());
                }
            }
        }
        // Agents, API servers, the PKI job, export job and CronJob, the test pod.
        assert!(checked >= 6, "{install}: {checked} pod templates");
        assert_eq!(
            declared.get("r1-agent"),
            Some(&Level::Privileged),
            "{install}"
        );
    }
}

#[test]
fn misspelt_keys_and_wrong_types_are_refused_by_the_schema() {
    for (set, says) in [
        (
            "agent.wireguard.backnd=kernel",
            "agent.wireguard: Additional property backnd is not allowed",
        ),
        (
            "apiserver.replica=3",
            "apiserver: Additional property replica is not allowed",
        ),
        (
            "agnt.logLevel=debug",
            "Additional property agnt is not allowed",
        ),
        (
            "apiserver.replicas=three",
            "apiserver.replicas: Invalid type. Expected: integer, given: string",
        ),
        (
            "agent.namespace.create=maybe",
            "agent.namespace.create: Invalid type. Expected: boolean",
        ),
        (
            "agent.policyAttach=xdp",
            "agent.policyAttach must be one of the following",
        ),
        (
            "apiserver.remote.nodePort=2379",
            "apiserver.remote.nodePort: Must be greater than or equal to 30000",
        ),
        (
            "agent.wireguard.interface=a-very-long-interface-name",
            "agent.wireguard.interface: String length must be less than or equal to 15",
        ),
        (
            "metrics.serviceMonitor.interval=often",
            "metrics.serviceMonitor.interval: Does not match pattern",
        ),
    ] {
        let all = format!("cluster.name=apps,cluster.id=1,{set}");
        let e = render(&["--set", &all]).expect_err(set).to_string();
        assert!(e.contains(says), "{set}: {e}");
    }
    // A values file with a misplaced key, as an operator would write it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.yaml");
    std::fs::write(
        &file,
        "agent:\n  wireguard:\n    backend: kernel\n  backend: kernel\n",
    )
    .unwrap();
    let e = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1",
        "-f",
        file.to_str().unwrap(),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("agent: Additional property backend is not allowed"),
        "{e}"
    );
}

#[test]
fn userspace_wireguard_runs_beside_the_agent_with_the_tun_device() {
    let objects = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,agent.wireguard.backend=userspace",
    ])
    .unwrap();
    let ds = object(&objects, "DaemonSet", "r1-agent");
    let spec = &ds["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agent", "wireguard"]);
    let agent = &containers[0];
    let wg = &containers[1];
    assert!(args(ds).contains(&"--wg-userspace-daemon=external".to_owned()));
    assert_eq!(wg["command"], json!(["/usr/local/bin/boringtun-cli"]));
    assert!(
        wg["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--foreground")
    );
    assert!(
        wg["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "raftmesh0")
    );
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(mounts(wg).contains(&"/dev/net/tun".to_owned()));
    assert!(!mounts(agent).contains(&"/dev/net/tun".to_owned()));
    for c in [agent, wg] {
        assert!(
            mounts(c).contains(&"/var/run/wireguard".to_owned()),
            "{}",
            c["name"]
        );
    }
    let volumes = spec["volumes"].as_array().unwrap();
    let tun = volumes.iter().find(|v| v["name"] == "tun").unwrap();
    assert_eq!(
        tun["hostPath"],
        json!({"path": "/dev/net/tun", "type": "CharDevice"})
    );
    assert_eq!(
        wg["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN"])
    );
    // The kernel backend has neither.
    let kernel = rendered(None);
    let ds = object(&kernel, "DaemonSet", "r1-agent");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(!serde_json::to_string(ds).unwrap().contains("/dev/net/tun"));
}

#[test]
fn no_nodeport_32379_and_a_helm_test_that_round_trips() {
    for (install, objects) in installs() {
        let text = serde_json::to_string(&objects).unwrap();
        assert!(
            !text.contains("32379"),
            "{install}: Cilium ClusterMesh's NodePort"
        );
        let test = object(&objects, "Pod", "r1-test-status");
        assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
        assert!(validate(test).is_empty(), "{:?}", validate(test));
        let script = test["spec"]["containers"][0]["args"][0].as_str().unwrap();
        assert!(
            script.contains("https://r1-apiserver.mesh.svc:2379")
                && script.contains("meshctl status --context apps --wait"),
            "{script}"
        );
        let volumes = test["spec"]["volumes"].as_array().unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v["secret"]["secretName"] == "r1-admin-tls")
        );
    }
}

#[test]
fn the_agents_namespace_gets_the_ca_certificate_from_the_pki_jobs() {
    let objects = rendered(None);
    let ns = object(&objects, "Namespace", "r1-agent");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let export = objects
        .iter()
        .find(|o| {
            o["kind"] == "Job"
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("r1-pki-export-")
        })
        .expect("the export Job");
    assert!(
        export["metadata"]["annotations"]
            .get("helm.sh/hook")
            .is_none(),
        "it runs beside the agents, not before their namespace exists"
    );
    let renew = object(&objects, "CronJob", "r1-pki-renew");
    let renew_args =
        renew["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    for a in [&container(export)["args"], &renew_args] {
        assert!(
            a.as_array()
                .unwrap()
                .iter()
                .any(|x| x == "--export-ca=r1-agent/r1-ca"),
            "{a}"
        );
    }
    let hook = object(&objects, "Job", "r1-pki");
    assert!(!container(hook)["args"].to_string().contains("--export-ca"));
    let role = objects
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == "r1-agent")
        .expect("a Role in the agents' namespace");
    assert_eq!(role["rules"][1]["resourceNames"], json!(["r1-ca"]));
    // An existing namespace (kube-system): no Namespace object, the same ConfigMap there.
    let existing = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,agent.namespace.create=false,agent.namespace.name=kube-system",
    ])
    .unwrap();
    assert!(!existing.iter().any(|o| o["kind"] == "Namespace"));
    assert_eq!(
        object(&existing, "DaemonSet", "r1-agent")["metadata"]["namespace"],
        "kube-system"
    );
    // The release's own namespace: the Secret, no export.
    let same = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,agent.namespace.create=false,agent.namespace.name=mesh",
    ])
    .unwrap();
    let ds = object(&same, "DaemonSet", "r1-agent");
    let ca = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ca")
        .unwrap()
        .clone();
    assert_eq!(ca["secret"]["secretName"], "r1-apiserver-tls");
    assert!(!same.iter().any(|o| {
        o["kind"] == "Job"
            && o["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("r1-pki-export")
    }));
}

#[test]
fn the_image_pins_the_boringtun_the_tests_run_and_ships_nft() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let containerfile =
        std::fs::read_to_string(format!("{root}/deploy/image/Containerfile")).unwrap();
    let deps = std::fs::read_to_string(format!("{root}/scripts/deps.sh")).unwrap();
    let pinned = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG BORINGTUN_VERSION="))
        .expect("a pinned boringtun");
    assert!(
        deps.contains(&format!("boringtun-cli@{pinned}")),
        "scripts/deps.sh installs another boringtun than the image's {pinned}"
    );
    assert!(containerfile.contains("boringtun-cli@${BORINGTUN_VERSION}"));
    // The agent runs nft (its masquerade exemption): the runtime stage installs nftables.
    let runtime = containerfile.rsplit("FROM ").next().unwrap();
    assert!(runtime.contains("nftables"), "{runtime}");
    assert!(runtime.contains("org.opencontainers.image.source"));
}

#[test]
fn mcs_crds_the_clusterset_range_and_dns_reach_the_cluster() {
    let objects = rendered(None);
    for crd in [
        "serviceexports.multicluster.x-k8s.io",
        "serviceimports.multicluster.x-k8s.io",
    ] {
        let o = object(&objects, "CustomResourceDefinition", crd);
        let versions: Vec<(&str, bool)> = o["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v["storage"].as_bool().unwrap()))
            .collect();
        assert_eq!(versions, [("v1beta1", true), ("v1alpha1", false)], "{crd}");
        let v = &o["spec"]["versions"];
        assert_eq!(
            v[0]["schema"], v[1]["schema"],
            "{crd}: one schema in both versions"
        );
        assert_eq!(v[0]["subresources"], json!({"status": {}}));
    }
    let sts = object(&objects, "StatefulSet", "r1-apiserver");
    assert!(args(sts).contains(&"--clusterset-service-cidr=198.18.0.0/16".to_owned()));
    let ds = object(&objects, "DaemonSet", "r1-agent");
    let agent = args(ds);
    assert!(
        agent.contains(&"--dns-listen=$(HOST_IP):8053".to_owned()),
        "{agent:?}"
    );
    assert!(agent.contains(&"--dns-zone=clusterset.local".to_owned()));
    assert_eq!(
        env(ds, "HOST_IP"),
        None,
        "HOST_IP comes from the downward API"
    );
    let host_ip = container(ds)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOST_IP")
        .unwrap();
    assert_eq!(
        host_ip["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    let svc = object(&objects, "Service", "r1-clusterset-dns");
    assert_eq!(svc["spec"]["internalTrafficPolicy"], "Local");
    assert_eq!(svc["spec"]["ports"][0]["port"], 53);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "dns");
    // Off: no flags, no Service; an empty range: no ClusterSetIPs.
    let off = render(&[
        "--set",
        "cluster.name=apps,cluster.id=1,mcs.dns.enabled=false,mcs.clustersetServiceCIDR=",
    ])
    .unwrap();
    assert!(
        !off.iter()
            .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "r1-clusterset-dns")
    );
    assert!(
        !args(object(&off, "DaemonSet", "r1-agent"))
            .iter()
            .any(|a| a.starts_with("--dns"))
    );
    assert!(
        !args(object(&off, "StatefulSet", "r1-apiserver"))
            .iter()
            .any(|a| a.starts_with("--clusterset"))
    );
}
