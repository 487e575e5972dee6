//! The agent bootstrap end to end (unprivileged): a mesh-apiserver serving
//! --listen-bootstrap-urls and reviewing tokens through a Kubernetes API (here the test kit's fake
//! API answering TokenReviews as the API does), and the agent's side getting a certificate
//! for its node, which then writes that node's key and no other's.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use certs::identity::{Identity, Role};
use certs::pki::{CertificateAuthority, LeafSpec, Validity, write_pem};
use etcd_client::{Certificate, Client, ConnectOptions, TlsOptions};
use node_agent::bootstrap::{Bootstrap, Files, renew, renew_at, usable};
use serde_json::{Value, json};
use testkit::kube::FakeApi;
use testkit::localcluster::{Cluster, Flavor, Spec};

/// Answers TokenReviews: `good-token` is the agent of node-1, anything else is invalid.
/// Records the reviews it was asked for.
fn fake_api(reviews: Arc<Mutex<Vec<Value>>>) -> String {
    let api = FakeApi::default();
    api.on_create(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        move |review: Value| {
            reviews.lock().unwrap().push(review.clone());
            let status = if review["spec"]["token"] == "good-token" {
                json!({"authenticated": true, "audiences": ["raftmesh"],
                       "user": {"username": "system:serviceaccount:mesh:r1-agent",
                                "uid": "4d0a7b5e-9c1f-4e2a-8b3d-6f5e4c3b2a19",
                                "groups": ["system:serviceaccounts", "system:authenticated"],
                                "extra": {"authentication.kubernetes.io/node-name": ["node-1"],
                                          "authentication.kubernetes.io/pod-name": ["r1-agent-x7k2p"],
                                          "authentication.kubernetes.io/pod-uid": ["8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"]}}})
            } else {
                json!({"authenticated": false, "user": {},
                       "error": "[invalid bearer token, token lookup failed]"})
            };
            let mut done = review;
            done["status"] = status;
            done
        },
    );
    api.serve()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn agent_client(cluster: &Cluster, dir: &Path) -> Client {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .identity(etcd_client::Identity::from_pem(
            read("agent.crt"),
            read("agent.key"),
        ));
    Client::connect(
        [cluster.client_url(0)],
        Some(ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gets_a_certificate_for_the_node_its_token_proves() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    let ca = CertificateAuthority::generate("apps", Validity::days_from_now(30)).unwrap();
    write_pem(&pki.join("ca.crt"), ca.cert_pem()).unwrap();
    write_pem(&pki.join("ca.key"), &ca.key_pem()).unwrap();
    for (role, name, file) in [
        (Role::Apiserver, "n1", "apiserver-n1"),
        (Role::Admin, "admin", "admin-admin"),
    ] {
        let issued = ca
            .issue(&LeafSpec {
                identity: Identity::new("apps", role, name).unwrap(),
                sans: vec!["localhost".into(), "127.0.0.1".into()],
                validity: Validity::days_from_now(30),
            })
            .unwrap();
        write_pem(&pki.join(format!("{file}.crt")), &issued.cert_pem).unwrap();
        write_pem(&pki.join(format!("{file}.key")), &issued.key_pem).unwrap();
    }
    let reviews = Arc::new(Mutex::new(Vec::new()));
    let api = fake_api(reviews.clone());
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: k, cluster: {{server: \"{api}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let bin = Path::new(env!("CARGO_BIN_EXE_node-agent")).with_file_name("mesh-apiserver");
    let mut spec = Spec::with_members(1);
    spec.tls = Some(pki.clone());
    spec.extra_args = [
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--listen-bootstrap-urls",
        &format!("https://127.0.0.1:{port}"),
        "--bootstrap-ca-key-file",
        pki.join("ca.key").to_str().unwrap(),
        "--bootstrap-service-account",
        "mesh/r1-agent",
        "--agent-cert-validity",
        "3h",
    ]
    .map(String::from)
    .to_vec();
    let cluster = Cluster::start(Flavor::Raftmesh(bin), spec).await.unwrap();

    let agent = tmp.path().join("agent");
    std::fs::create_dir_all(&agent).unwrap();
    std::fs::copy(pki.join("ca.crt"), agent.join("ca.crt")).unwrap();
    let token_file = agent.join("token");
    let files = Files {
        ca: &agent.join("ca.crt"),
        cert: &agent.join("agent.crt"),
        key: &agent.join("agent.key"),
        cluster: "apps",
        node: "node-1",
    };
    assert!(
        renew_at(&files) <= SystemTime::now(),
        "no certificate yet: due now"
    );
    let bootstrap = Bootstrap {
        url: format!("https://localhost:{port}"),
        token_file: token_file.clone(),
    };

    // 1. An invalid token gets nothing, and says why.
    std::fs::write(&token_file, "stolen-token\n").unwrap();
    let err = format!("{:#}", renew(&bootstrap, &files).await.unwrap_err());
    assert!(
        err.contains("401") && err.contains("invalid bearer token"),
        "{err}"
    );
    assert!(!files.cert.exists() && !files.key.exists());
    assert!(!usable(&files));

    // 2. The agent's token: a certificate for node-1, renewed two thirds into its 3 hours.
    std::fs::write(&token_file, "good-token\n").unwrap();
    let next = renew(&bootstrap, &files).await.unwrap();
    let pem = std::fs::read_to_string(files.cert).unwrap();
    let (identity, _) = certs::pki::leaf_info(&pem).unwrap();
    assert_eq!(
        identity,
        Identity::new("apps", Role::Agent, "node-1").unwrap()
    );
    let in_ = next.duration_since(SystemTime::now()).unwrap();
    assert!(
        in_ > Duration::from_secs(100 * 60) && in_ <= Duration::from_secs(120 * 60),
        "{in_:?}"
    );
    assert_eq!(renew_at(&files), next);
    assert!(usable(&files));
    // The server asked for the bootstrap audience.
    let asked = reviews.lock().unwrap().clone();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1]["spec"]["audiences"], json!(["raftmesh"]));

    // 3. The certificate is node-1's: it writes node-1's key, not node-2's.
    let mut client = agent_client(&cluster, &agent).await;
    client
        .put("mesh/v1/apps/nodekeys/node-1", "k", None)
        .await
        .unwrap();
    let err = client
        .put("mesh/v1/apps/nodekeys/node-2", "k", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");

    // 4. The agent of another node cannot use this certificate as its own: renew_at says due.
    let other = Files {
        node: "node-2",
        ..files.clone()
    };
    assert!(renew_at(&other) <= SystemTime::now());
    assert!(!usable(&other));

    // 5. After the CA is replaced, the old certificate is neither usable nor left until due.
    let replaced = CertificateAuthority::generate("apps", Validity::days_from_now(30)).unwrap();
    std::fs::write(files.ca, replaced.cert_pem()).unwrap();
    assert!(!usable(&files));
    assert!(renew_at(&files) <= SystemTime::now());
}
