//! What the multi-cluster acceptance tests share: TLS clusters that publish small manifests,
//! each made a meshctl context in a private config file, meshctl runs, store snapshots,
//! status records and bounded waiting.

#![allow(
    dead_code,
    reason = "each test module uses a different subset of these helpers"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use etcd_client::{Client, GetOptions};
use mesh_api::records::NodeKeyRecord;
use mesh_api::remote::RemoteStatusRecord;
use mesh_api::{Key, Record, SCHEMA};
use tempfile::TempDir;
use testkit::localcluster::{Cluster, Flavor, Spec};

/// How often eventual conditions are checked.
pub const POLL: Duration = Duration::from_millis(100);
/// Bound on waits for the mesh to converge on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// `--disconnect-grace` of the test clusters.
pub const GRACE_SECS: u64 = 3;

/// The `mesh-apiserver` next to `meshctl`.
pub fn server() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_meshctl")).with_file_name("mesh-apiserver");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// Runs `f` until it returns `Ok`, every [`POLL`] ([`testkit::eventually_async`]).
///
/// # Panics
/// When `patience` runs out, with `what` and the last error.
pub async fn eventually<T>(what: &str, patience: Duration, f: impl AsyncFnMut() -> Result<T>) -> T {
    testkit::eventually_async(what, patience, POLL, f).await
}

/// A test's clusters and the meshctl config file that names them.
#[derive(Debug)]
pub struct Mesh {
    pub dir: TempDir,
    pub clusters: BTreeMap<String, TestCluster>,
}

/// One cluster of a test.
#[derive(Debug)]
pub struct TestCluster {
    pub name: String,
    pub id: u16,
    pub pki: PathBuf,
    pub manifests: PathBuf,
    pub cluster: Cluster,
}

/// How to start one cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec<'a> {
    /// Its context's name.
    pub context: &'a str,
    /// Its cluster name.
    pub name: &'a str,
    pub id: u16,
    /// Its pod CIDR (`--pod-cidr`); its nodes' pod CIDRs lie inside it.
    pub pod_cidr: &'a str,
    pub members: usize,
    /// More mesh-apiserver flags.
    pub extra: Vec<&'a str>,
}

impl<'a> ClusterSpec<'a> {
    /// Cluster `name` (context `name`), 3 members, pods in 10.`id`.0.0/16.
    pub fn new(name: &'a str, id: u16, pod_cidr: &'a str) -> Self {
        Self {
            context: name,
            name,
            id,
            pod_cidr,
            members: 3,
            extra: Vec::new(),
        }
    }
}

impl Mesh {
    pub fn new() -> Mesh {
        Mesh {
            dir: tempfile::tempdir().unwrap(),
            clusters: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("meshctl-config")
    }

    /// `meshctl ARGS` with this mesh's config file and no etcdctl variables.
    pub fn meshctl(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshctl"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                c.env_remove(k);
            }
        }
        c.env("RAFTMESH_CONFIG", self.config())
            .args(args)
            .output()
            .unwrap()
    }

    /// `meshctl ARGS`, which must succeed; its stdout.
    pub fn meshctl_ok(&self, args: &[&str]) -> String {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a TLS cluster publishing `manifests(spec)` and makes it a context.
    pub async fn start(&mut self, spec: ClusterSpec<'_>) -> &mut TestCluster {
        let pki = self.dir.path().join(format!("{}-pki", spec.context));
        let init = Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["pki", "init", "--cluster", spec.name, "--out"])
            .arg(&pki)
            .output()
            .unwrap();
        assert!(init.status.success(), "{init:?}");
        let manifests = self.dir.path().join(format!("{}-manifests", spec.context));
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("cluster.yaml"), cluster_manifests(spec.id)).unwrap();
        let mut s = Spec::with_members(spec.members);
        s.tls = Some(pki.clone());
        s.metrics = true;
        s.extra_args = vec![
            "--cluster-name".into(),
            spec.name.into(),
            "--cluster-id".into(),
            spec.id.to_string(),
            "--pod-cidr".into(),
            spec.pod_cidr.into(),
            "--manifests-dir".into(),
            manifests.display().to_string(),
            "--disconnect-grace".into(),
            format!("{GRACE_SECS}s"),
        ];
        s.extra_args
            .extend(spec.extra.iter().map(|a| (*a).to_owned()));
        let cluster = Cluster::start(Flavor::Raftmesh(server()), s).await.unwrap();
        let endpoints = cluster.client_urls().join(",");
        self.meshctl_ok(&[
            "config",
            "set-context",
            spec.context,
            "--endpoints",
            &endpoints,
            "--pki-dir",
            pki.to_str().unwrap(),
        ]);
        let tc = TestCluster {
            name: spec.name.to_owned(),
            id: spec.id,
            pki,
            manifests,
            cluster,
        };
        // Published: the cluster record exists.
        let mut client = tc.cluster.client().await.unwrap();
        let key = format!("mesh/v1/{}/cluster", spec.name);
        eventually("the cluster record is published", PATIENCE, async || {
            let r = client.get(key.as_str(), None).await?;
            anyhow::ensure!(!r.kvs().is_empty(), "no {key}");
            Ok(())
        })
        .await;
        self.clusters.insert(spec.context.to_owned(), tc);
        self.clusters.get_mut(spec.context).unwrap()
    }

    pub fn get(&self, context: &str) -> &TestCluster {
        &self.clusters[context]
    }

    pub fn get_mut(&mut self, context: &str) -> &mut TestCluster {
        self.clusters.get_mut(context).unwrap()
    }
}

/// Two nodes (pod CIDRs 10.`id`.1.0/24 and 10.`id`.2.0/24), a global service `demo/echo`
/// with a pod on each node, and a `client` pod.
pub fn cluster_manifests(id: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata: {{name: node-1}}
spec: {{podCIDR: 10.{id}.1.0/24}}
status: {{addresses: [{{type: InternalIP, address: 192.168.{id}.1}}]}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-2}}
spec: {{podCIDR: 10.{id}.2.0/24}}
status: {{addresses: [{{type: InternalIP, address: 192.168.{id}.2}}]}}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
  annotations: {{mesh.raftmesh.io/global: "true"}}
spec: {{selector: {{app: echo}}, clusterIP: 10.96.0.10, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-abc, namespace: demo, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:
- {{addresses: [10.{id}.1.10], conditions: {{ready: true}}, nodeName: node-1}}
- {{addresses: [10.{id}.2.10], conditions: {{ready: true}}, nodeName: node-2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: demo, labels: {{app: echo}}}}
spec: {{nodeName: node-1}}
status: {{phase: Running, hostIP: 192.168.{id}.1, podIP: 10.{id}.1.10}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-2, namespace: demo, labels: {{app: echo}}}}
spec: {{nodeName: node-2}}
status: {{phase: Running, hostIP: 192.168.{id}.2, podIP: 10.{id}.2.10}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: demo, labels: {{app: client}}}}
spec: {{nodeName: node-1}}
status: {{phase: Running, hostIP: 192.168.{id}.1, podIP: 10.{id}.1.20}}
"#
    )
}

/// Every key under `prefix` with its value (a linearizable read).
pub async fn snapshot(client: &mut Client, prefix: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect())
}

/// Waits until `mirror`'s copy of `cluster`'s prefix equals `origin`'s own, key by key and
/// byte by byte; returns the keys.
pub async fn converged(
    origin: &Cluster,
    mirror: &Cluster,
    cluster: &str,
) -> BTreeMap<String, Vec<u8>> {
    let prefix = format!("mesh/v1/{cluster}/");
    let mut a = origin.client().await.unwrap();
    let mut b = mirror.client().await.unwrap();
    eventually(
        &format!("the mirror of {cluster} equals {cluster}'s records"),
        PATIENCE,
        async || {
            let want = snapshot(&mut a, &prefix).await?;
            let got = snapshot(&mut b, &prefix).await?;
            if want != got {
                let missing: Vec<&String> = want
                    .keys()
                    .filter(|k| got.get(*k) != want.get(*k))
                    .take(3)
                    .collect();
                let extra: Vec<&String> = got
                    .keys()
                    .filter(|k| !want.contains_key(*k))
                    .take(3)
                    .collect();
                bail!(
                    "{} keys there, {} here; differing: {missing:?}, extra: {extra:?}",
                    want.len(),
                    got.len()
                );
            }
            Ok(want)
        },
    )
    .await
}

/// The status of `remote`'s mirror in `cluster` and its mod revision.
pub async fn status(cluster: &Cluster, remote: &str) -> Result<(RemoteStatusRecord, i64)> {
    let mut c = cluster.client().await?;
    let key = Key::RemoteStatus {
        cluster: remote.to_owned(),
    }
    .to_string();
    let resp = c.get(key.as_str(), None).await?;
    let kv = resp.kvs().first().with_context(|| format!("no {key}"))?;
    Ok((
        RemoteStatusRecord::decode_checked(kv.value())?,
        kv.mod_revision(),
    ))
}

/// The store's current revision.
pub async fn revision(client: &mut Client) -> i64 {
    client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// A node key record whose public key is `key`.
pub fn node_key(key: &str) -> Vec<u8> {
    Record::NodeKey(NodeKeyRecord {
        schema: SCHEMA,
        public_key: key.to_owned(),
        listen_port: 51871,
        boot_id: "boot".to_owned(),
        probe_port: 0,
    })
    .encode()
}

/// The sum of `series` over every member's `/metrics`; an error when no member exports it.
pub async fn metric_sum(cluster: &Cluster, series: &str) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sum = 0.0;
    let mut found = false;
    for i in 0..cluster.len() {
        if !cluster.is_serving(i) {
            continue;
        }
        let url = cluster.metrics_url(i).context("no metrics URL")?;
        let addr = url.trim_start_matches("http://").to_owned();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
        tcp.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        tcp.read_to_string(&mut body).await?;
        if let Some(v) = body
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        {
            sum += v.trim().parse::<f64>().unwrap_or(f64::NAN);
            found = true;
        }
    }
    // A series no member exports (renamed, or the members are down) is an error, never 0.
    anyhow::ensure!(found, "no member exports {series}");
    Ok(sum)
}
