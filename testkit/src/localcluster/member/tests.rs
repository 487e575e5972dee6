use std::path::PathBuf;

use super::{Bootstrap, ClusterState, MemberConfig, MemberPorts, initial_cluster};
use crate::localcluster::{Flavor, Spec};

fn member(metrics: Option<u16>) -> MemberConfig {
    MemberConfig {
        name: "n2".into(),
        ports: MemberPorts {
            client: 4001,
            peer: 5001,
            metrics,
        },
        tls: None,
        data_dir: PathBuf::from("/tmp/c/n2.data"),
    }
}

fn args(member: &MemberConfig, state: ClusterState, spec: &Spec) -> Vec<String> {
    let boot = Bootstrap {
        initial_cluster: "n1=http://127.0.0.1:5000,n2=http://127.0.0.1:5001",
        state,
        token: "tok",
    };
    member
        .args(boot, spec, &Flavor::Etcd("/usr/bin/etcd".into()))
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
}

const STANDARD: [&str; 18] = [
    "--name",
    "n2",
    "--data-dir",
    "/tmp/c/n2.data",
    "--listen-client-urls",
    "http://127.0.0.1:4001",
    "--advertise-client-urls",
    "http://127.0.0.1:4001",
    "--listen-peer-urls",
    "http://127.0.0.1:5001",
    "--initial-advertise-peer-urls",
    "http://127.0.0.1:5001",
    "--initial-cluster",
    "n1=http://127.0.0.1:5000,n2=http://127.0.0.1:5001",
    "--initial-cluster-state",
    "new",
    "--initial-cluster-token",
    "tok",
];

#[test]
fn standard_flags() {
    assert_eq!(
        args(&member(None), ClusterState::New, &Spec::default()),
        STANDARD
    );
}

#[test]
fn existing_state() {
    let got = args(&member(None), ClusterState::Existing, &Spec::default());
    assert_eq!(got[15], "existing");
}

#[test]
fn optional_flags_follow_the_standard_ones_in_order() {
    let spec = Spec {
        members: 3,
        snapshot_count: Some(100),
        extra_args: vec!["--auto-compaction-retention".into(), "1".into()],
        metrics: true,
        tls: None,
    };
    let got = args(&member(Some(6001)), ClusterState::New, &spec);
    assert_eq!(got[..18], STANDARD);
    assert_eq!(
        got[18..],
        [
            "--snapshot-count",
            "100",
            "--listen-metrics-urls",
            "http://127.0.0.1:6001",
            "--auto-compaction-retention",
            "1",
        ]
    );
}

#[test]
fn urls() {
    let m = member(Some(6001));
    assert_eq!(m.client_url(), "http://127.0.0.1:4001");
    assert_eq!(m.peer_url(), "http://127.0.0.1:5001");
    assert_eq!(m.metrics_url().as_deref(), Some("http://127.0.0.1:6001"));
    assert_eq!(member(None).metrics_url(), None);
}

#[test]
fn initial_cluster_joins_name_url_pairs() {
    assert_eq!(
        initial_cluster([("n1", "http://127.0.0.1:1"), ("n2", "http://127.0.0.1:2")]),
        "n1=http://127.0.0.1:1,n2=http://127.0.0.1:2"
    );
    assert_eq!(initial_cluster([]), "");
}

#[test]
fn picked_ports_are_distinct() {
    let p = MemberPorts::pick(true).unwrap();
    let metrics = p.metrics.unwrap();
    assert!(p.client != p.peer && p.peer != metrics && p.client != metrics);
    assert_eq!(MemberPorts::pick(false).unwrap().metrics, None);
}

#[test]
fn raftmesh_without_tls_is_asked_for_plaintext_explicitly() {
    let m = member(None);
    let boot = Bootstrap {
        initial_cluster: "n2=http://127.0.0.1:5001",
        state: ClusterState::New,
        token: "t",
    };
    let got = m.args(
        boot,
        &Spec::default(),
        &Flavor::Raftmesh("/bin/mesh-apiserver".into()),
    );
    assert_eq!(got.last().unwrap(), "--insecure-plaintext");
    let etcd = m.args(
        boot,
        &Spec::default(),
        &Flavor::Etcd("/usr/bin/etcd".into()),
    );
    assert!(!etcd.iter().any(|a| a == "--insecure-plaintext"));
}

#[test]
fn tls_members_serve_https_with_their_apiserver_certificate() {
    let mut m = member(None);
    m.tls = Some(PathBuf::from("/pki"));
    assert_eq!(m.client_url(), "https://127.0.0.1:4001");
    assert_eq!(m.peer_url(), "https://127.0.0.1:5001");
    let boot = Bootstrap {
        initial_cluster: "n2=https://127.0.0.1:5001",
        state: ClusterState::New,
        token: "t",
    };
    let got = m.args(
        boot,
        &Spec::default(),
        &Flavor::Raftmesh("/bin/mesh-apiserver".into()),
    );
    let tail: Vec<_> = got[18..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut want = Vec::new();
    for prefix in ["--", "--peer-"] {
        want.extend([
            format!("{prefix}cert-file"),
            "/pki/apiserver-n2.crt".to_owned(),
            format!("{prefix}key-file"),
            "/pki/apiserver-n2.key".to_owned(),
            format!("{prefix}trusted-ca-file"),
            "/pki/ca.crt".to_owned(),
            format!("{prefix}client-cert-auth"),
        ]);
    }
    assert_eq!(tail, want);
}
