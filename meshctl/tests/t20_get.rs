//! `meshctl get` against a 3-member TLS cluster made with `meshctl pki init`: records are
//! printed decoded, other values are explained, and a missing key is an error.
//!
//! Needs `mesh-apiserver` built next to `meshctl` (a workspace build does that).

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_api::records::{IdentityRecord, NodeKeyRecord};
use mesh_api::{Key, Record, SCHEMA};
use testkit::localcluster::{Cluster, Flavor, Spec};

fn meshctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            c.env_remove(k);
        }
    }
    c
}

fn server() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_meshctl")).with_file_name("mesh-apiserver");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace (cargo build --workspace)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_records_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    let init = meshctl()
        .args(["pki", "init", "--cluster", "apps", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let mut spec = Spec::with_members(3);
    spec.tls = Some(pki.clone());
    let cluster = Cluster::start(Flavor::Raftmesh(server()), spec)
        .await
        .unwrap();

    let identity = Key::Identity {
        cluster: "apps".into(),
        id: 0x0001_0100,
    };
    let record = Record::Identity(IdentityRecord {
        schema: SCHEMA,
        labels: vec![
            "app=web".into(),
            "io.kubernetes.pod.namespace=default".into(),
        ],
    });
    let nodekey = Key::NodeKey {
        cluster: "apps".into(),
        node: "node-1".into(),
    };
    let key_record = Record::NodeKey(NodeKeyRecord {
        schema: SCHEMA,
        public_key: "pub".into(),
        listen_port: 51820,
        boot_id: "b1".into(),
        probe_port: 0,
    });
    let mut client = cluster.client().await.unwrap();
    client
        .put(identity.to_string(), record.encode(), None)
        .await
        .unwrap();
    client
        .put(nodekey.to_string(), key_record.encode(), None)
        .await
        .unwrap();
    client
        .put(
            "mesh/v1/apps/services/default/broken",
            "not protobuf \u{ff}",
            None,
        )
        .await
        .unwrap();

    let get = |args: &[&str]| {
        meshctl()
            .arg("get")
            .args(args)
            .arg(format!("--endpoints={}", cluster.client_url(0)))
            .arg("--cacert")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("admin-admin.crt"))
            .arg("--key-file")
            .arg(pki.join("admin-admin.key"))
            .output()
            .unwrap()
    };
    let out = get(&["mesh/v1/apps/", "--prefix", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "mesh/v1/apps/identities/65792",
            "mesh/v1/apps/nodekeys/node-1",
            "mesh/v1/apps/services/default/broken"
        ]
    );
    assert_eq!(
        listed[0]["record"]["labels"][1],
        "io.kubernetes.pod.namespace=default"
    );
    assert_eq!(listed[1]["record"]["listenPort"], 51820);
    assert!(
        listed[2]["error"]
            .as_str()
            .unwrap()
            .contains("services record"),
        "{}",
        listed[2]
    );

    let yaml = get(&[&nodekey.to_string()]);
    assert!(yaml.status.success(), "{yaml:?}");
    let text = String::from_utf8(yaml.stdout).unwrap();
    assert!(
        text.contains("publicKey: pub") && text.contains("key: mesh/v1/apps/nodekeys/node-1"),
        "{text}"
    );

    let missing = get(&["mesh/v1/apps/nodes/nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no key mesh/v1/apps/nodes/nope"),
        "{missing:?}"
    );

    // Half the TLS flags is bad input, refused before connecting.
    let half = meshctl()
        .args(["get", "x", "--cacert"])
        .arg(pki.join("ca.crt"))
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(64), "{half:?}");
}
