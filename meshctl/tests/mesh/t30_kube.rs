//! meshctl on kubeconfig contexts (issue 16): `--context` names a kubeconfig context, meshctl
//! finds the install through the Kubernetes API (here [`FakeApi`], a small HTTP server answering with the
//! objects a cluster with the chart would hold) and reaches the API servers the way another
//! cluster does: through the remote Service's address, checking the certificate against the
//! name the Service's annotation gives.

use std::path::Path;

use mesh_api::remote::RemoteConfigRecord;
use serde_json::{Value, json};
use testkit::kube::FakeApi;

use crate::support::*;

/// A file as a Secret's data value (base64).
fn file(dir: &Path, name: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(
        std::fs::read(dir.join(name)).unwrap(),
    ))
    .unwrap()
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The objects of a chart install named `r1` in namespace `mesh` of a cluster whose first
/// member is `tc`'s: its remote Service (`service_type`), a node, the API server pods and the
/// Secrets from `tc`'s PKI directory.
fn install(api: &FakeApi, tc: &TestCluster, service_type: &str, server_name: &str) {
    let url = tc.cluster.client_url(0);
    let port: i64 = url.rsplit(':').next().unwrap().parse().unwrap();
    let labels = json!({"app.kubernetes.io/name": "raftmesh", "app.kubernetes.io/instance": "r1",
                        "app.kubernetes.io/component": "apiserver-remote"});
    let annotations = json!({"raftmesh.io/admin-secret": "r1-admin-tls", "raftmesh.io/ca-secret": "r1-ca",
                             "raftmesh.io/server-name": server_name, "raftmesh.io/cluster": tc.name});
    let (ports, status) = if service_type == "NodePort" {
        (
            json!([{"name": "client", "port": 2379, "targetPort": "client", "nodePort": port, "protocol": "TCP"}]),
            json!({"loadBalancer": {}}),
        )
    } else {
        (
            json!([{"name": "client", "port": port, "targetPort": "client", "nodePort": 31999, "protocol": "TCP"}]),
            json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1", "ipMode": "VIP"}]}}),
        )
    };
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "r1-remote", "namespace": "mesh", "labels": labels, "annotations": annotations},
        "spec": {"type": service_type, "clusterIP": "10.96.0.50", "ports": ports},
        "status": status});
    api.put("/api/v1/services", list("Service", vec![service]));
    api.put(
        "/api/v1/nodes",
        list(
            "Node",
            vec![
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}),
            ],
        ),
    );
    let pods = (0..tc.cluster.len())
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": tc.cluster.member_config(i).name, "namespace": "mesh"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        })
        .collect();
    api.put("/api/v1/namespaces/mesh/pods", list("Pod", pods));
    let admin = std::fs::read_dir(&tc.pki)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("admin-") && n.ends_with(".crt"))
        .unwrap();
    let key = admin.replace(".crt", ".key");
    api.put(
        "/api/v1/namespaces/mesh/secrets/r1-admin-tls",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "r1-admin-tls", "namespace": "mesh"},
               "data": {"ca.crt": file(&tc.pki, "ca.crt"), "tls.crt": file(&tc.pki, &admin),
                        "tls.key": file(&tc.pki, &key)}}),
    );
    api.put(
        "/api/v1/namespaces/mesh/secrets/r1-ca",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "r1-ca", "namespace": "mesh"},
               "data": {"ca.crt": file(&tc.pki, "ca.crt"), "ca.key": file(&tc.pki, "ca.key")}}),
    );
}

/// A kubeconfig naming each fake API as context `kube-<name>`.
fn kubeconfig(path: &Path, apis: &[(&str, &str)]) {
    let mut clusters = Vec::new();
    let mut contexts = Vec::new();
    for (name, url) in apis {
        clusters.push(json!({"name": name, "cluster": {"server": url}}));
        contexts.push(
            json!({"name": format!("kube-{name}"), "context": {"cluster": name, "user": "admin"}}),
        );
    }
    let config = json!({"apiVersion": "v1", "kind": "Config", "clusters": clusters,
        "contexts": contexts, "users": [{"name": "admin", "user": {}}],
        "current-context": format!("kube-{}", apis[0].0)});
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
}

/// The mod revisions of both connection records.
async fn connection_revisions(mesh: &Mesh) -> [i64; 2] {
    let mut out = [0; 2];
    for (i, (side, other)) in [("apps", "infra"), ("infra", "apps")]
        .into_iter()
        .enumerate()
    {
        let mut client = mesh.get(side).cluster.client().await.unwrap();
        let key = format!("mesh/config/remotes/{other}");
        let resp = client.get(key.as_str(), None).await.unwrap();
        out[i] = resp.kvs()[0].mod_revision();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_contexts_find_the_install_and_connect_through_its_service() {
    let mut mesh = Mesh::new();
    mesh.start(ClusterSpec::new("apps", 1, "10.1.0.0/16")).await;
    mesh.start(ClusterSpec::new("infra", 2, "10.2.0.0/16"))
        .await;
    // Only kubeconfig contexts from here on.
    mesh.meshctl_ok(&["config", "delete-context", "apps"]);
    mesh.meshctl_ok(&["config", "delete-context", "infra"]);
    let (apps_api, infra_api) = (FakeApi::default(), FakeApi::default());
    // Talos-style NodePort in apps, a load balancer in infra; both certificates name their
    // member (n1), not the address meshctl dials.
    install(&apps_api, mesh.get("apps"), "NodePort", "n1");
    install(&infra_api, mesh.get("infra"), "LoadBalancer", "n1");
    let kubeconfig_path = mesh.dir.path().join("kubeconfig");
    kubeconfig(
        &kubeconfig_path,
        &[("apps", &apps_api.serve()), ("infra", &infra_api.serve())],
    );
    let meshctl = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"));
        c.env("RAFTMESH_CONFIG", mesh.config())
            .env("KUBECONFIG", &kubeconfig_path)
            .env_remove("RAFTMESH_NAMESPACE")
            .args(args);
        c.output().unwrap()
    };
    let ok = |args: &[&str]| {
        let out = meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // 1. status: members from the store, their health from the pods, the leader marked.
    let status: Value =
        serde_json::from_str(&ok(&["status", "--context", "kube-apps", "-o", "json"])).unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["healthy"] == true), "{status}");
    assert_eq!(
        members.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{status}"
    );
    assert_eq!(status["cluster"], "apps");
    let requests = apps_api.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("/api/v1/services?")
            && r.contains(
                "labelSelector=app.kubernetes.io%2Fname%3Draftmesh%2Capp.kubernetes.io%2Fcomponent%3Dapiserver-remote"
            )),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with("/api/v1/nodes")),
        "a NodePort lists the nodes: {requests:?}"
    );
    // An unready pod is an unhealthy member, with the reason.
    let mut pods: Value = apps_api.get("/api/v1/namespaces/mesh/pods");
    pods["items"][1]["status"]["conditions"][0] = json!({"type": "Ready", "status": "False", "message": "containers with unready status: [apiserver]"});
    apps_api.put("/api/v1/namespaces/mesh/pods", pods);
    let table = ok(&["status", "--context", "kube-apps"]);
    assert!(
        table.contains("unhealthy: pod not ready: containers with unready status: [apiserver]"),
        "{table}"
    );

    // 2. connect writes, in each cluster, the other's Service address.
    let out = ok(&[
        "connect",
        "--context",
        "kube-apps",
        "--destination",
        "kube-infra",
        "--wait",
    ]);
    assert!(out.starts_with("connected apps ⇄ infra"), "{out}");
    let expect = [
        ("apps", "infra", mesh.get("infra").cluster.client_url(0)),
        ("infra", "apps", mesh.get("apps").cluster.client_url(0)),
    ];
    for (side, other, url) in expect {
        let mut client = mesh.get(side).cluster.client().await.unwrap();
        let key = format!("mesh/config/remotes/{other}");
        let resp = client.get(key.as_str(), None).await.unwrap();
        let record = RemoteConfigRecord::decode_checked(resp.kvs()[0].value()).unwrap();
        assert_eq!(record.endpoints, [url.replace("http://", "https://")]);
    }
    converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    converged(
        &mesh.get("apps").cluster,
        &mesh.get("infra").cluster,
        "apps",
    )
    .await;
    // get through the load balancer's address.
    let out = ok(&["get", "--context", "kube-infra", "mesh/v1/apps/cluster"]);
    assert!(out.contains("name: apps"), "{out}");

    // 3. Without read access to the CA Secret, everything but connect works, and connect
    // says why and writes nothing.
    infra_api.remove("/api/v1/namespaces/mesh/secrets/r1-ca");
    ok(&["status", "--context", "kube-infra"]);
    let before = connection_revisions(&mesh).await;
    let out = meshctl(&[
        "connect",
        "--context",
        "kube-infra",
        "--destination",
        "kube-apps",
        "--renew",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the CA Secret mesh/r1-ca is not readable"),
        "{err}"
    );
    assert_eq!(
        connection_revisions(&mesh).await,
        before,
        "a refused connect wrote"
    );

    // 4. A certificate that does not carry the annotated name is refused.
    install(
        &apps_api,
        mesh.get("apps"),
        "NodePort",
        "not-a-member.example",
    );
    let out = meshctl(&["status", "--context", "kube-apps"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate not valid for name") && err.contains("not-a-member.example"),
        "{err}"
    );

    // 5. A name that is neither a meshctl nor a kubeconfig context.
    let out = meshctl(&["status", "--context", "nowhere"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither meshctl's") && err.contains("nor the kubeconfig's"),
        "{err}"
    );
}

#[test]
fn pki_sync_secrets_makes_the_secrets_once_and_replaces_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::default();
    let kubeconfig_path = dir.path().join("kubeconfig");
    kubeconfig(&kubeconfig_path, &[("apps", &api.serve())]);
    let sync = |extra: &[&str]| {
        let mut args = vec![
            "pki",
            "sync-secrets",
            "--namespace",
            "mesh",
            "--cluster",
            "apps",
            "--ca-secret",
            "r1-ca",
            "--apiserver-secret",
            "r1-apiserver-tls",
            "--admin-secret",
            "r1-admin-tls",
            "--san",
            "*.r1-peers.mesh.svc",
            "--san",
            "r1-apiserver.mesh.svc",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .env("KUBECONFIG", &kubeconfig_path)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let secrets = "/api/v1/namespaces/mesh/secrets";
    let writes = || api.take_writes();

    let out = sync(&[]);
    assert!(out.contains("wrote Secret mesh/r1-ca (no CA yet)"), "{out}");
    assert_eq!(writes(), vec![format!("POST {secrets}"); 3]);
    let stored = |name: &str| api.get(&format!("{secrets}/{name}"));
    assert_eq!(stored("r1-apiserver-tls")["type"], "kubernetes.io/tls");
    assert_eq!(
        stored("r1-apiserver-tls")["metadata"]["annotations"]["raftmesh.io/sans"],
        "*.r1-peers.mesh.svc,r1-apiserver.mesh.svc"
    );

    // Again: nothing to do, nothing written.
    assert!(sync(&[]).contains("are current"));
    assert!(writes().is_empty());
    // Another name: the apiserver Secret alone is replaced, at the version read; the CA stays.
    let ca_before = stored("r1-ca");
    assert!(sync(&["--san", "mesh.example.com", "--dry-run"]).contains("would write"));
    assert!(writes().is_empty(), "a dry run writes nothing");
    let out = sync(&["--san", "mesh.example.com"]);
    assert!(out.contains("r1-apiserver-tls (names changed"), "{out}");
    assert_eq!(writes(), [format!("PUT {secrets}/r1-apiserver-tls")]);
    assert_eq!(
        stored("r1-apiserver-tls")["metadata"]["resourceVersion"],
        "2"
    );
    assert_eq!(stored("r1-ca"), ca_before);

    // The CA certificate (no key) into the agents' namespace, once.
    let out = sync(&[
        "--san",
        "mesh.example.com",
        "--export-ca",
        "mesh-agent/r1-ca",
    ]);
    assert!(
        out.contains("wrote ConfigMap mesh-agent/r1-ca (the CA certificate)"),
        "{out}"
    );
    let configmaps = "/api/v1/namespaces/mesh-agent/configmaps";
    assert_eq!(writes(), [format!("POST {configmaps}")]);
    let cm = api.get(&format!("{configmaps}/r1-ca"));
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt"]);
    let secret_ca = String::from_utf8(base64_decode(
        stored("r1-ca")["data"]["ca.crt"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(data["ca.crt"], secret_ca.as_str());
    assert!(
        sync(&[
            "--san",
            "mesh.example.com",
            "--export-ca",
            "mesh-agent/r1-ca"
        ])
        .contains("holds the CA certificate")
    );
    assert!(writes().is_empty());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "pki",
            "sync-secrets",
            "--namespace",
            "mesh",
            "--cluster",
            "apps",
        ])
        .args([
            "--ca-secret",
            "a",
            "--apiserver-secret",
            "b",
            "--admin-secret",
            "c",
        ])
        .args(["--san", "x", "--export-ca", "r1-ca"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected NAMESPACE/NAME"));
}

/// Standard base64 (what the API uses for Secret data).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Against a real cluster with the chart installed: `RAFTMESH_LIVE_CONTEXT` names its
/// kubeconfig context (and `RAFTMESH_NAMESPACE` the install's namespace if there are several).
/// `cargo test -p meshctl --test mesh live_ -- --ignored`.
#[test]
#[ignore = "needs a cluster"]
fn live_status_through_a_kubeconfig_context() {
    let context = std::env::var("RAFTMESH_LIVE_CONTEXT")
        .expect("RAFTMESH_LIVE_CONTEXT: the kubeconfig context of a cluster with the chart");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .env("RAFTMESH_CONFIG", dir.path().join("config"))
        .args(["status", "--context", &context, "-o", "json", "--wait"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = status["members"].as_array().unwrap();
    assert!(members.len() >= 3, "{status}");
    assert!(members.iter().all(|m| m["healthy"] == true), "{status}");
    assert_eq!(
        members.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{status}"
    );
}
