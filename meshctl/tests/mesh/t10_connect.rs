//! Connecting three clusters: exact mirrors, idempotence, refused conflicts, changes flowing,
//! hostile records, what a remote certificate may read, and disconnecting.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::ensure;
use etcd_client::GetOptions;
use mesh_api::Key;
use mesh_api::remote::RemoteConfigRecord;

use crate::support::{
    ClusterSpec, GRACE_SECS, Mesh, PATIENCE, converged, eventually, metric_sum, snapshot, status,
};

/// Every connection record in every cluster, with its mod revision.
async fn connection_records(mesh: &Mesh) -> BTreeMap<(String, String), i64> {
    let mut out = BTreeMap::new();
    for (ctx, tc) in &mesh.clusters {
        let mut c = tc.cluster.client().await.unwrap();
        let resp = c
            .get(
                "mesh/config/remotes/",
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        for kv in resp.kvs() {
            out.insert(
                (ctx.clone(), String::from_utf8_lossy(kv.key()).into_owned()),
                kv.mod_revision(),
            );
        }
    }
    out
}

/// The clusters whose records a store holds (the `<c>` of its `mesh/v1/<c>/` keys).
async fn clusters_in(mesh: &Mesh, ctx: &str) -> Vec<String> {
    let mut c = mesh.get(ctx).cluster.client().await.unwrap();
    let resp = c
        .get(
            "mesh/v1/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let mut names: Vec<String> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            k.parse::<Key>().ok().map(|k| k.cluster().to_owned())
        })
        .collect();
    names.dedup();
    names
}

/// Connects `from` to a one-member cluster made to conflict, and checks the refusal.
async fn refused(mesh: &mut Mesh, from: &str, rogue: ClusterSpec<'_>, reason: &str) {
    let context = rogue.context;
    mesh.start(rogue).await;
    let before = connection_records(mesh).await;
    let out = mesh.meshctl(&["connect", "--context", from, "--destination", context]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(reason), "expected {reason:?} in: {stderr}");
    assert_eq!(
        connection_records(mesh).await,
        before,
        "a refused connect wrote"
    );
    mesh.clusters.remove(context);
    mesh.meshctl_ok(&["config", "delete-context", context]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_mirror_each_other_exactly() {
    let mut mesh = Mesh::new();
    mesh.start(ClusterSpec::new("apps", 1, "10.1.0.0/16")).await;
    mesh.start(ClusterSpec::new("infra", 2, "10.2.0.0/16"))
        .await;
    mesh.start(ClusterSpec::new("edge", 3, "10.3.0.0/16")).await;

    // 1. One command connects apps with infra and edge, both directions.
    let out = mesh.meshctl_ok(&[
        "connect",
        "--context",
        "apps",
        "--destination",
        "infra,edge",
        "--wait",
    ]);
    assert!(
        out.starts_with("connected apps ⇄ infra, apps ⇄ edge"),
        "{out}"
    );
    for (origin, mirror) in [
        ("infra", "apps"),
        ("edge", "apps"),
        ("apps", "infra"),
        ("apps", "edge"),
    ] {
        converged(&mesh.get(origin).cluster, &mesh.get(mirror).cluster, origin).await;
    }
    assert_eq!(clusters_in(&mesh, "infra").await, ["apps", "infra"]);
    // --all adds infra ⇄ edge; now every store holds exactly the three clusters' records.
    let out = mesh.meshctl_ok(&["connect", "--all", "--wait"]);
    assert!(out.contains("edge ⇄ infra"), "{out}");
    for origin in ["apps", "infra", "edge"] {
        for mirror in ["apps", "infra", "edge"] {
            if origin != mirror {
                converged(&mesh.get(origin).cluster, &mesh.get(mirror).cluster, origin).await;
            }
        }
        assert_eq!(clusters_in(&mesh, origin).await, ["apps", "edge", "infra"]);
    }

    // 2. Connecting again changes nothing.
    let before = connection_records(&mesh).await;
    assert_eq!(before.len(), 6);
    let out = mesh.meshctl_ok(&["connect", "--all"]);
    assert!(out.starts_with("already connected"), "{out}");
    let out = mesh.meshctl_ok(&["connect", "--context", "infra", "--destination", "apps"]);
    assert!(out.starts_with("already connected"), "{out}");
    assert_eq!(connection_records(&mesh).await, before);
    // --renew issues new certificates (new connection records), and the mirrors go on.
    let out = mesh.meshctl_ok(&[
        "connect",
        "--context",
        "edge",
        "--destination",
        "infra",
        "--renew",
        "--wait",
    ]);
    assert!(
        out.starts_with("connected edge ⇄ infra (2 connection record(s) written"),
        "{out}"
    );
    let renewed = connection_records(&mesh).await;
    for key in [
        ("edge".to_owned(), "mesh/config/remotes/infra".to_owned()),
        ("infra".to_owned(), "mesh/config/remotes/edge".to_owned()),
    ] {
        assert!(renewed[&key] > before[&key], "{key:?} not rewritten");
    }
    // Conflicts are refused before anything is written.
    let mut apps_again = ClusterSpec::new("apps", 9, "10.9.0.0/16");
    apps_again.context = "apps-again";
    apps_again.members = 1;
    refused(
        &mut mesh,
        "apps",
        apps_again.clone(),
        "are both cluster apps",
    )
    .await;
    apps_again.context = "apps-twin";
    refused(
        &mut mesh,
        "infra",
        apps_again,
        "already knows another cluster named apps",
    )
    .await;
    let mut dup = ClusterSpec::new("dup", 2, "10.8.0.0/16");
    dup.members = 1;
    refused(&mut mesh, "edge", dup, "both have id 2").await;
    let mut wide = ClusterSpec::new("wide", 7, "10.0.0.0/8");
    wide.members = 1;
    refused(
        &mut mesh,
        "apps",
        wide,
        "CIDRs overlap: pod CIDR 10.0.0.0/8 of wide and pod CIDR 10.1.0.0/16 of apps",
    )
    .await;
    // A service range over apps' pods, and pods in the link-local range.
    let mut svc = ClusterSpec::new("svc", 7, "10.7.0.0/16");
    svc.members = 1;
    svc.extra = vec!["--service-cidr", "10.1.0.0/20"];
    refused(
        &mut mesh,
        "apps",
        svc,
        "CIDRs overlap: service CIDR 10.1.0.0/20 of svc and pod CIDR 10.1.0.0/16 of apps",
    )
    .await;
    let mut local = ClusterSpec::new("local", 7, "169.254.0.0/16");
    local.members = 1;
    refused(
        &mut mesh,
        "apps",
        local,
        "pod CIDR 169.254.0.0/16 of local overlaps the link-local range",
    )
    .await;

    // 3. Changes in one cluster's manifests reach the others: a Service added, one changed,
    // a Pod deleted.
    let infra_yaml = mesh.get("infra").manifests.join("cluster.yaml");
    let text = std::fs::read_to_string(&infra_yaml).unwrap();
    let text = text
        .replace(
            "mesh.raftmesh.io/global: \"true\"",
            "mesh.raftmesh.io/global: \"true\", mesh.raftmesh.io/affinity: local",
        )
        .replace(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {name: client,",
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: client,",
        );
    std::fs::write(&infra_yaml, text).unwrap();
    std::fs::write(
        mesh.get("infra").manifests.join("cart.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {selector: {app: cart}, clusterIP: 10.96.10.30, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let mut infra = mesh.get("infra").cluster.client().await.unwrap();
    eventually("infra publishes the changes", PATIENCE, async || {
        let s = snapshot(&mut infra, "mesh/v1/infra/").await?;
        ensure!(
            s.contains_key("mesh/v1/infra/services/shop/cart"),
            "no cart"
        );
        ensure!(
            !s.contains_key("mesh/v1/infra/ipcache/10.2.1.20"),
            "client still there"
        );
        Ok(())
    })
    .await;
    for mirror in ["apps", "edge"] {
        let got = converged(
            &mesh.get("infra").cluster,
            &mesh.get(mirror).cluster,
            "infra",
        )
        .await;
        assert!(got.contains_key("mesh/v1/infra/services/shop/cart"));
        assert!(!got.contains_key("mesh/v1/infra/ipcache/10.2.1.20"));
    }

    // 7. Records a remote must not make others store: an identity of apps' id, a value that
    // does not decode, a key outside the layout. Infra holds them; its mirrors do not.
    let bad = [
        "mesh/v1/infra/identities/65792",
        "mesh/v1/infra/nodekeys/node-1",
        "mesh/v1/infra/bogus/x",
    ];
    let identity = mesh_api::Record::Identity(mesh_api::records::IdentityRecord {
        schema: mesh_api::SCHEMA,
        labels: vec!["app=evil".into()],
    })
    .encode();
    infra.put(bad[0], identity, None).await.unwrap();
    infra.put(bad[1], "not a record", None).await.unwrap();
    infra.put(bad[2], "x", None).await.unwrap();
    for mirror in ["apps", "edge"] {
        let mut m = mesh.get(mirror).cluster.client().await.unwrap();
        eventually(
            "the mirrors equal infra without its bad records",
            PATIENCE,
            async || {
                let mut want = snapshot(&mut infra, "mesh/v1/infra/").await?;
                for k in bad {
                    ensure!(want.remove(k).is_some(), "infra lost {k}");
                }
                let got = snapshot(&mut m, "mesh/v1/infra/").await?;
                ensure!(
                    got == want,
                    "{} keys here, {} wanted",
                    got.len(),
                    want.len()
                );
                Ok(())
            },
        )
        .await;
        // The status counts them with its next write (at most 5 s: rejections are not news).
        let mirror_cluster = &mesh.get(mirror).cluster;
        eventually(
            "the status counts the rejected records",
            PATIENCE,
            async || {
                let (s, _) = status(mirror_cluster, "infra").await?;
                ensure!(s.rejected == 3, "{s:?}");
                Ok(())
            },
        )
        .await;
        let counted = metric_sum(
            &mesh.get(mirror).cluster,
            "raftmesh_remote_rejected_records_total{cluster=\"infra\",reason=\"foreign-identity\"}",
        )
        .await
        .unwrap();
        assert_eq!(counted, 1.0, "{mirror}");
    }

    // 9. The remote certificate apps holds for infra reads infra's own records and nothing
    // else of infra's: not its mirrors of other clusters, not its configuration or status.
    let mut apps = mesh.get("apps").cluster.client().await.unwrap();
    let resp = apps.get("mesh/config/remotes/infra", None).await.unwrap();
    let config = RemoteConfigRecord::decode_checked(resp.kvs()[0].value()).unwrap();
    let files = mesh.dir.path().join("apps-reads-infra");
    std::fs::create_dir_all(&files).unwrap();
    for (name, pem) in [
        ("ca.crt", &config.ca_pem),
        ("remote.crt", &config.cert_pem),
        ("remote.key", &config.key_pem),
    ] {
        std::fs::write(files.join(name), pem).unwrap();
    }
    let etcdctl = |args: &[&str]| {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}",
                mesh.get("infra").cluster.client_urls().join(",")
            ))
            .arg(format!("--cacert={}", files.join("ca.crt").display()))
            .arg(format!("--cert={}", files.join("remote.crt").display()))
            .arg(format!("--key={}", files.join("remote.key").display()))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = etcdctl(&["get", "mesh/v1/infra/", "--prefix", "--keys-only"]);
    assert!(ok && out.contains("mesh/v1/infra/cluster"), "{out}");
    for args in [
        &["get", "mesh/v1/apps/", "--prefix"][..],
        &["get", "mesh/v1/edge/cluster"],
        &["get", "mesh/config/remotes/", "--prefix"],
        &["get", "mesh/status/", "--prefix"],
        &["put", "mesh/v1/infra/services/shop/cart", "x"],
    ] {
        let (ok, out) = etcdctl(args);
        assert!(!ok && out.contains("permission denied"), "{args:?}: {out}");
    }

    // meshctl status and services read the same from a person's side.
    let st: serde_json::Value =
        serde_json::from_str(&mesh.meshctl_ok(&["status", "--context", "apps", "-o", "json"]))
            .unwrap();
    let remotes = st["remotes"].as_array().unwrap();
    assert_eq!(remotes.len(), 2, "{st}");
    assert!(remotes.iter().all(|r| r["connected"] == true), "{st}");
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
    let services: serde_json::Value =
        serde_json::from_str(&mesh.meshctl_ok(&["services", "--context", "apps", "-o", "json"]))
            .unwrap();
    let echo = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "demo/echo")
        .unwrap_or_else(|| panic!("{services}"));
    let per_cluster: Vec<(String, u64)> = echo["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap().to_owned(),
                c["ready"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        per_cluster,
        [
            ("apps".to_owned(), 2),
            ("edge".to_owned(), 2),
            ("infra".to_owned(), 2)
        ]
    );

    // 8. Disconnecting removes both connection records at once, and after the grace the
    // mirrored records; other connections stay.
    let out = mesh.meshctl_ok(&["disconnect", "--context", "apps", "--destination", "edge"]);
    assert!(
        out.starts_with("disconnected (2 connection record(s) removed)"),
        "{out}"
    );
    let records = connection_records(&mesh).await;
    assert!(!records.contains_key(&("apps".into(), "mesh/config/remotes/edge".into())));
    assert!(!records.contains_key(&("edge".into(), "mesh/config/remotes/apps".into())));
    assert_eq!(records.len(), 4);
    // Kept during the grace, gone after it: whenever the records are seen gone, the status
    // seen before said when the connection was removed, and the grace has passed since.
    let sides = [("apps", "edge"), ("edge", "apps")];
    let mut removed_at = [0i64; 2];
    let mut gone_at = [0i64; 2];
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    eventually(
        "the disconnected remotes' records are deleted",
        PATIENCE,
        async || {
            for (i, (here, gone)) in sides.iter().enumerate() {
                if gone_at[i] > 0 {
                    continue;
                }
                let tc = &mesh.get(here).cluster;
                if let Ok((s, _)) = status(tc, gone).await {
                    removed_at[i] = s.removed_at_ms;
                }
                let mut c = tc.client().await?;
                if snapshot(&mut c, &format!("mesh/v1/{gone}/"))
                    .await?
                    .is_empty()
                {
                    gone_at[i] = now_ms();
                }
            }
            ensure!(gone_at.iter().all(|t| *t > 0), "records left");
            Ok(())
        },
    )
    .await;
    for (i, (here, gone)) in sides.iter().enumerate() {
        assert!(
            removed_at[i] > 0,
            "{here}: the status never said the connection was removed"
        );
        assert!(
            gone_at[i] >= removed_at[i] + GRACE_SECS as i64 * 1000,
            "{here}: {gone}'s records went before the grace was over"
        );
        let mut c = mesh.get(here).cluster.client().await.unwrap();
        let st = snapshot(&mut c, &format!("mesh/status/remotes/{gone}"))
            .await
            .unwrap();
        assert!(st.is_empty(), "{here}: the status of {gone} is left");
    }
    // The other connections are untouched.
    assert_eq!(clusters_in(&mesh, "apps").await, ["apps", "infra"]);
    let (s, _) = status(&mesh.get("apps").cluster, "infra").await.unwrap();
    assert!(s.connected, "{s:?}");
}
