//! The agent's view of the store through its `agent` certificate (unprivileged: no datapath):
//! it may list and watch `mesh/v1/` and `mesh/status/remotes/`, and a certificate of another
//! cluster's CA gets nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::identity::{Identity, Role};
use certs::pki::{CertificateAuthority, LeafSpec, Validity, write_pem};
use mesh_api::records::{ClusterRecord, ServiceRecord};
use mesh_api::{Key, Record, SCHEMA};
use node_agent::config::Config;
use node_agent::source::{self, Watch};
use testkit::localcluster::{Cluster, Flavor, Spec};

fn issue(dir: &Path, ca: &CertificateAuthority, role: Role, name: &str, file: &str) {
    let issued = ca
        .issue(&LeafSpec {
            identity: Identity::new(ca.cluster(), role, name).unwrap(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            validity: Validity::days_from_now(30),
        })
        .unwrap();
    write_pem(&dir.join(format!("{file}.crt")), &issued.cert_pem).unwrap();
    write_pem(&dir.join(format!("{file}.key")), &issued.key_pem).unwrap();
}

fn config(endpoints: Vec<String>, dir: &Path, file: &str) -> Config {
    Config {
        node: "node-1".into(),
        cluster: "apps".into(),
        endpoints,
        tls: Some((
            dir.join("ca.crt"),
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        )),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        bpffs: PathBuf::from("/sys/fs/bpf/raftmesh/node-1"),
        state_dir: dir.join("agent"),
        listen_metrics: "127.0.0.1:0".parse().unwrap(),
        dns: None,
        remote_stale_after: Duration::from_secs(30),
        remote_limits: node_agent::desired::Limits::default(),
        enforce_unknown_pods: true,
        pod_interface_prefixes: vec![],
        discover_pod_interfaces: true,
        attach: node_agent::datapath::AttachMode::Tcx,
        wg: None,
        bootstrap: None,
    }
}

fn service(cluster: &str, name: &str) -> (String, Vec<u8>) {
    let key = Key::Service {
        cluster: cluster.into(),
        namespace: "demo".into(),
        name: name.into(),
    };
    let record = Record::Service(ServiceRecord {
        schema: SCHEMA,
        namespace: "demo".into(),
        name: name.into(),
        cluster_ips: vec!["10.96.0.10".into()],
        global: true,
        shared: true,
        ..Default::default()
    });
    (key.to_string(), record.encode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_lists_and_watches_the_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let apps = CertificateAuthority::generate("apps", Validity::days_from_now(30)).unwrap();
    write_pem(&dir.join("ca.crt"), apps.cert_pem()).unwrap();
    issue(&dir, &apps, Role::Apiserver, "n1", "apiserver-n1");
    issue(&dir, &apps, Role::Admin, "admin", "admin-admin");
    issue(&dir, &apps, Role::Agent, "node-1", "agent-node-1");
    let other = CertificateAuthority::generate("apps", Validity::days_from_now(30)).unwrap();
    issue(&dir, &other, Role::Agent, "node-1", "stranger-node-1");

    let bin = Path::new(env!("CARGO_BIN_EXE_node-agent")).with_file_name("mesh-apiserver");
    let mut spec = Spec::with_members(1);
    spec.tls = Some(dir.clone());
    let cluster = Cluster::start(Flavor::from_env(bin), spec).await.unwrap();
    let mut admin = cluster.client().await.unwrap();
    let cluster_record = Record::Cluster(ClusterRecord {
        schema: SCHEMA,
        name: "infra".into(),
        id: 2,
        ..Default::default()
    });
    admin
        .put("mesh/v1/infra/cluster", cluster_record.encode(), None)
        .await
        .unwrap();
    let (k, v) = service("apps", "echo");
    admin.put(k, v, None).await.unwrap();
    // Not the agent's to read: remote connections hold private keys.
    admin
        .put("mesh/config/remotes/infra", "secret", None)
        .await
        .unwrap();

    let agent = config(cluster.client_urls(), &dir, "agent-node-1");
    let (mut client, _) = source::connect(&agent, 0).await.unwrap();
    let (state, revision) = source::list(&mut client).await.unwrap();
    assert_eq!(state.clusters["infra"].id, Some(2));
    assert!(state.clusters["apps"].services.contains_key("demo/echo"));
    assert!(revision > 0);

    let mut watch = Watch::start(&mut client, source::PREFIXES[0], revision)
        .await
        .unwrap();
    let (k, v) = service("apps", "other");
    admin.put(k.clone(), v, None).await.unwrap();
    let changes = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let c = watch.next().await.unwrap();
            if !c.is_empty() {
                return c;
            }
        }
    })
    .await
    .expect("the watch delivers the change");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key, k);
    // A new key: created at the change's own revision, which the store's copy confirms.
    let stored = admin.get(k.clone(), None).await.unwrap();
    assert_eq!(changes[0].created, stored.kvs()[0].create_revision());
    assert!(changes[0].created > revision);
    assert!(watch.revision > revision);

    // Another CA's agent certificate: the TLS handshake or the first request fails.
    let stranger = config(cluster.client_urls(), &dir, "stranger-node-1");
    let refused = match source::connect(&stranger, 0).await {
        Err(_) => true,
        Ok((mut c, _)) => source::list(&mut c).await.is_err(),
    };
    assert!(refused, "a certificate of another CA must get nothing");

    // A member that is gone (nothing listens) is passed over for the next one, and the agent
    // learns which member it reached.
    let mut with_dead = agent.clone();
    with_dead
        .endpoints
        .insert(0, "https://127.0.0.1:9".to_owned());
    let (mut c, at) = source::connect(&with_dead, 0).await.unwrap();
    assert!(at >= 1, "connected to the dead endpoint {at}");
    assert!(source::list(&mut c).await.is_ok());
    // Only dead members: an error naming each.
    with_dead.endpoints = vec!["https://127.0.0.1:9".to_owned()];
    let err = source::connect(&with_dead, 0)
        .await
        .err()
        .expect("no member");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}
