use std::path::Path;

use super::{AgentArgs, ApiServerArgs};

fn words(args: Vec<std::ffi::OsString>) -> String {
    args.iter()
        .map(|a| a.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_plaintext_member_founds_its_cluster() {
    let args = ApiServerArgs::new(
        "n1",
        Path::new("/d/store"),
        "http://127.0.0.1:2379",
        "http://127.0.0.1:2380",
        "t",
    )
    .also_listen("http://127.0.0.2:2379")
    .plaintext();
    assert_eq!(
        words(args.to_args()),
        "--name n1 --data-dir /d/store \
         --listen-client-urls http://127.0.0.1:2379,http://127.0.0.2:2379 \
         --advertise-client-urls http://127.0.0.1:2379 \
         --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
         --initial-cluster n1=http://127.0.0.1:2380 --initial-cluster-state new \
         --initial-cluster-token t --insecure-plaintext"
    );
}

#[test]
fn a_tls_member_uses_its_certificate_on_both_ports() {
    let args = ApiServerArgs::new(
        "n1",
        Path::new("/s"),
        "https://a:2379",
        "https://a:2380",
        "apps",
    )
    .tls(Path::new("/pki"))
    .args(["--cluster-name", "apps"]);
    let w = words(args.to_args());
    assert!(
        w.contains(
            "--initial-cluster-token apps \
             --cert-file /pki/apiserver-n1.crt --key-file /pki/apiserver-n1.key \
             --trusted-ca-file /pki/ca.crt --client-cert-auth \
             --peer-cert-file /pki/apiserver-n1.crt --peer-key-file /pki/apiserver-n1.key \
             --peer-trusted-ca-file /pki/ca.crt --peer-client-cert-auth --cluster-name apps"
        ),
        "{w}"
    );
}

#[test]
fn an_agent_with_its_node_certificate() {
    let args = AgentArgs::new("node-1", "apps", "https://a:2379")
        .tls(Path::new("/pki"))
        .cgroup_root(Path::new("/cg"))
        .bpffs(Path::new("/pins"))
        .state_dir(Path::new("/state"))
        .listen_metrics("127.0.0.1:9964")
        .args(["--wg-backend", "none"]);
    assert_eq!(
        words(args.to_args()),
        "--node node-1 --cluster apps --endpoints https://a:2379 \
         --cacert /pki/ca.crt --cert /pki/agent-node-1.crt --key /pki/agent-node-1.key \
         --cgroup-root /cg --bpffs /pins --state-dir /state --listen-metrics 127.0.0.1:9964 \
         --wg-backend none"
    );
    let plain = AgentArgs::new("n1", "apps", "http://127.0.0.2:2379").plaintext();
    assert_eq!(
        words(plain.to_args()),
        "--node n1 --cluster apps --endpoints http://127.0.0.2:2379 --insecure-plaintext"
    );
}
