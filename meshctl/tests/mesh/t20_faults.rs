//! Faults between two connected clusters: leaders killed during churn, a remote compacted
//! while disconnected, a remote frozen. Churn writes node keys (records the publisher leaves
//! alone, as agents write them) with a value never written before, so a change applied twice
//! shows as the same value put twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use etcd_client::{Client, EventType, WatchOptions};
use mesh_api::remote::RemoteConfigRecord;
use prost::Message as _;
use tokio::task::JoinHandle;

use crate::support::{
    ClusterSpec, Mesh, PATIENCE, converged, eventually, metric_sum, node_key, revision, snapshot,
    status,
};

/// apps and infra, connected both ways and converged.
async fn connected_pair() -> Mesh {
    let mut mesh = Mesh::new();
    mesh.start(ClusterSpec::new("apps", 1, "10.1.0.0/16")).await;
    mesh.start(ClusterSpec::new("infra", 2, "10.2.0.0/16"))
        .await;
    mesh.meshctl_ok(&[
        "connect",
        "--context",
        "apps",
        "--destination",
        "infra",
        "--wait",
    ]);
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
    mesh
}

/// Writes node keys into infra until stopped: 20 nodes, each value new; every 7th write a
/// delete. Failed writes (a leader being killed) are simply not counted.
fn churn(client: Client, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut client = client;
        let mut acked = 0;
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let key = format!("mesh/v1/infra/nodekeys/node-{}", seq % 20);
            let write = async {
                if seq.is_multiple_of(7) {
                    client.delete(key.as_str(), None).await.map(|_| ())
                } else {
                    client
                        .put(key.as_str(), node_key(&format!("k-{seq}")), None)
                        .await
                        .map(|_| ())
                }
            };
            match tokio::time::timeout(Duration::from_secs(2), write).await {
                Ok(Ok(())) => acked += 1,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    })
}

/// Every event of `prefix` in the cluster at `urls`, from `from` until stopped, across broken
/// streams (members are killed): (type, key, value).
fn record_events(
    client: Client,
    prefix: String,
    from: i64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<(bool, String, Vec<u8>)>> {
    tokio::spawn(async move {
        let mut client = client;
        let mut events = Vec::new();
        let mut next = from;
        while !stop.load(Ordering::Relaxed) {
            let options = WatchOptions::new().with_prefix().with_start_revision(next);
            let Ok(Ok(mut stream)) = tokio::time::timeout(
                Duration::from_secs(2),
                client.watch(prefix.as_str(), Some(options)),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let msg = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
                let Ok(msg) = msg else { continue };
                let Ok(Some(resp)) = msg else { break };
                assert!(!resp.canceled(), "watch canceled: {}", resp.cancel_reason());
                for e in resp.events() {
                    let kv = e.kv().expect("events carry their key");
                    next = kv.mod_revision() + 1;
                    events.push((
                        e.event_type() == EventType::Put,
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    ));
                }
            }
        }
        events
    })
}

/// kill -9 of member `i` of `ctx`; it stays down until its cluster has a leader among the
/// others and, for infra, until apps' mirror has reconnected (or never left) elsewhere; then
/// it is restarted.
async fn outage(mesh: &mut Mesh, ctx: &str, i: usize) {
    mesh.get_mut(ctx).cluster.kill(i);
    let cluster = &mesh.get(ctx).cluster;
    eventually("another member leads", PATIENCE, async || {
        let leader = cluster.leader().await?;
        ensure!(leader != i, "member {i} still leads");
        Ok(())
    })
    .await;
    if ctx == "infra" {
        let dead = cluster.client_url(i);
        eventually(
            "the mirror reads from a live member",
            PATIENCE,
            async || {
                let (s, _) = status(&mesh.get("apps").cluster, "infra").await?;
                ensure!(s.connected && !s.endpoint.starts_with(&dead), "{s:?}");
                Ok(())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.get_mut(ctx).cluster.restart(i).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_killed_during_churn_lose_and_repeat_nothing() {
    let mut mesh = connected_pair().await;
    let apps_rev = revision(&mut mesh.get("apps").cluster.client().await.unwrap()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watch = record_events(
        mesh.get("apps").cluster.client().await.unwrap(),
        "mesh/v1/infra/".to_owned(),
        apps_rev + 1,
        stop.clone(),
    );
    let writer_stop = Arc::new(AtomicBool::new(false));
    let writer = churn(
        mesh.get("infra").cluster.client().await.unwrap(),
        writer_stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The remote's leader dies and comes back, then the remote member the mirror reads from,
    // then the local leader (where the mirror runs). Each stays down until the rest of its
    // cluster has moved on: a new leader, or the mirror reading from another member.
    let infra_leader = mesh.get("infra").cluster.leader().await.unwrap();
    outage(&mut mesh, "infra", infra_leader).await;
    let (s, _) = status(&mesh.get("apps").cluster, "infra").await.unwrap();
    let infra = &mesh.get("infra").cluster;
    let reading = (0..infra.len())
        .find(|i| s.endpoint.starts_with(&infra.client_url(*i)))
        .unwrap_or_else(|| panic!("the mirror reads from {}", s.endpoint));
    outage(&mut mesh, "infra", reading).await;
    let apps_leader = mesh.get("apps").cluster.leader().await.unwrap();
    outage(&mut mesh, "apps", apps_leader).await;
    writer_stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked > 50, "only {acked} writes acknowledged");

    // Nothing lost: the mirror equals the remote.
    let final_state = converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let events = watch.await.unwrap();
    // Nothing twice: every value put was new.
    let mut seen = BTreeSet::new();
    for (put, key, value) in &events {
        if *put {
            assert!(
                seen.insert((key.clone(), value.clone())),
                "{key} was put twice with the same value in the mirror"
            );
        }
    }
    let puts = events.iter().filter(|e| e.0).count();
    assert!(puts > 20, "the mirror saw only {puts} puts");
    // The events replay to the final state.
    let mut replay: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (put, key, value) in events {
        if put {
            replay.insert(key, value);
        } else {
            replay.remove(&key);
        }
    }
    let nodekeys = |m: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        m.iter()
            .filter(|(k, _)| k.starts_with("mesh/v1/infra/nodekeys/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(nodekeys(&replay), nodekeys(&final_state));
    // A delta every time: no re-list.
    let (s, _) = status(&mesh.get("apps").cluster, "infra").await.unwrap();
    assert_eq!(s.resyncs, 0, "{s:?}");
    assert!(s.connected, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_compacted_while_disconnected_costs_one_resync_of_the_differences() {
    let mesh = connected_pair().await;
    let mut infra = mesh.get("infra").cluster.client().await.unwrap();
    for i in 0..10 {
        infra
            .put(
                format!("mesh/v1/infra/nodekeys/n{i}"),
                node_key(&format!("a{i}")),
                None,
            )
            .await
            .unwrap();
    }
    converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;

    // Disconnect apps' mirror by pointing its connection at a port nobody serves.
    let mut apps = mesh.get("apps").cluster.client().await.unwrap();
    let key = "mesh/config/remotes/infra";
    let original = apps.get(key, None).await.unwrap().kvs()[0].value().to_vec();
    let mut broken = RemoteConfigRecord::decode_checked(&original).unwrap();
    broken.endpoints = vec!["https://127.0.0.1:9".to_owned()];
    apps.put(key, broken.encode_to_vec(), None).await.unwrap();
    eventually("apps reports infra disconnected", PATIENCE, async || {
        let (s, _) = status(&mesh.get("apps").cluster, "infra").await?;
        ensure!(!s.connected && s.error.contains("127.0.0.1:9"), "{s:?}");
        Ok(())
    })
    .await;

    // Meanwhile infra changes 3, deletes 2 and adds 5 keys, and compacts its history.
    for i in 0..3 {
        infra
            .put(
                format!("mesh/v1/infra/nodekeys/n{i}"),
                node_key(&format!("b{i}")),
                None,
            )
            .await
            .unwrap();
    }
    for i in 3..5 {
        infra
            .delete(format!("mesh/v1/infra/nodekeys/n{i}"), None)
            .await
            .unwrap();
    }
    for i in 10..15 {
        infra
            .put(
                format!("mesh/v1/infra/nodekeys/n{i}"),
                node_key(&format!("c{i}")),
                None,
            )
            .await
            .unwrap();
    }
    let now = revision(&mut infra).await;
    infra.compact(now, None).await.unwrap();

    // Back, by host name this time (resolved from the hosts file).
    let mut restored = RemoteConfigRecord::decode_checked(&original).unwrap();
    for e in &mut restored.endpoints {
        *e = e.replace("127.0.0.1", "localhost");
    }
    apps.put(key, restored.encode_to_vec(), None).await.unwrap();
    let got = converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    assert!(
        !got.contains_key("mesh/v1/infra/nodekeys/n3"),
        "a deletion was not applied"
    );
    let (s, _) = status(&mesh.get("apps").cluster, "infra").await.unwrap();
    assert_eq!(s.resyncs, 1, "{s:?}");
    assert!(s.endpoint.starts_with("https://localhost:"), "{s:?}");
    let writes = metric_sum(
        &mesh.get("apps").cluster,
        "raftmesh_remote_resync_writes_total{cluster=\"infra\"}",
    )
    .await
    .unwrap();
    assert_eq!(
        writes, 10.0,
        "the resync wrote more than the 10 differences"
    );
}

/// `mesh/status/current/infra` at apps and its lease, as etcdctl shows them: the lease id
/// (hex) and `(granted TTL, remaining TTL)`, or `None` without the key.
fn current_lease(apps: &testkit::localcluster::Cluster) -> Option<(String, i64, i64)> {
    let out = apps
        .etcdctl()
        .args(["get", "mesh/status/current/infra", "-w", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let lease = v["kvs"].as_array()?.first()?["lease"].as_i64()?;
    let hex = format!("{lease:x}");
    let out = apps
        .etcdctl()
        .args(["lease", "timetolive", &hex, "-w", "json"])
        .output()
        .unwrap();
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((hex, t["granted-ttl"].as_i64()?, t["ttl"].as_i64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_remote_is_served_stale_with_a_growing_age_and_caught_up_by_a_delta() {
    let mut mesh = connected_pair().await;
    let before = converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    // Healthy and at rest: the freshness comes from the lease behind mesh/status/current/infra,
    // renewed on every answer from infra (etcdctl sees it), and the status record is not
    // rewritten for the freshness alone — only when the position moves.
    let apps = &mesh.get("apps").cluster;
    let (lease, granted, _) =
        eventually("apps holds infra's current lease", PATIENCE, async || {
            current_lease(apps).context("no current key")
        })
        .await;
    assert_eq!(granted, mesh_api::remote::CURRENT_TTL_SECONDS);
    let (at_rest, rev) = status(apps, "infra").await.unwrap();
    // Past the lease's TTL and the record's old 5 s rewrite period: still held (renewed).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (held, _, remaining) = current_lease(apps).expect("the current key lapsed at rest");
    assert_eq!(held, lease, "a new lease was taken at rest");
    assert!(remaining > 0, "remaining TTL {remaining}");
    let (later, later_rev) = status(apps, "infra").await.unwrap();
    assert!(
        later_rev == rev || later.remote_revision != at_rest.remote_revision,
        "the status was rewritten at rest with no new position: {at_rest:?} then {later:?}"
    );
    let json = mesh.meshctl_ok(&["status", "--context", "apps", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = json["remotes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cluster"] == "infra")
        .unwrap()
        .clone();
    assert_eq!(row["freshnessFrom"], "lease", "{row}");
    assert!(
        row["freshnessAgeSeconds"].as_f64().unwrap() < granted as f64,
        "{row}"
    );
    let infra = &mut mesh.get_mut("infra").cluster;
    for i in 0..infra.len() {
        infra.pause(i);
    }

    let apps = &mesh.get("apps").cluster;
    let first = eventually("apps reports infra disconnected", PATIENCE, async || {
        let (s, _) = status(apps, "infra").await?;
        ensure!(!s.connected, "still connected");
        let age = metric_sum(apps, "raftmesh_remote_freshness_seconds{cluster=\"infra\"}").await?;
        let connected = metric_sum(apps, "raftmesh_remote_connected{cluster=\"infra\"}").await?;
        ensure!(connected == 0.0, "connected metric {connected}");
        Ok((s, age))
    })
    .await;
    // Not current any more: the key is gone (revoked at the disconnect), and meshctl status
    // takes the age from the record.
    assert_eq!(current_lease(apps), None);
    // Local writes go on, and the mirrored records are still served.
    let mut client = apps.client().await.unwrap();
    for i in 0..20 {
        tokio::time::timeout(
            Duration::from_secs(5),
            client.put(
                format!("mesh/v1/apps/nodekeys/local-{i}"),
                node_key("x"),
                None,
            ),
        )
        .await
        .expect("a local write waited for the frozen remote")
        .unwrap();
    }
    let served = snapshot(&mut client, "mesh/v1/infra/").await.unwrap();
    assert_eq!(served, before);
    // The age grows (the time it was last current stays).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (later, _) = status(apps, "infra").await.unwrap();
    assert_eq!(later.current_at_ms, first.0.current_at_ms);
    let age = metric_sum(apps, "raftmesh_remote_freshness_seconds{cluster=\"infra\"}")
        .await
        .unwrap();
    assert!(age >= first.1 + 1.5, "freshness age {} then {age}", first.1);
    // `meshctl status --wait` gives up and says why.
    let out = mesh.meshctl(&["status", "--context", "apps", "--wait", "--timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("remote infra not connected"), "{stderr}");

    let infra = &mut mesh.get_mut("infra").cluster;
    for i in 0..infra.len() {
        infra.resume(i);
    }
    let mut infra_client = mesh.get("infra").cluster.client().await.unwrap();
    eventually("infra writes again", PATIENCE, async || {
        infra_client
            .put("mesh/v1/infra/nodekeys/after", node_key("thawed"), None)
            .await
            .context("put")?;
        Ok(())
    })
    .await;
    let got = converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    assert!(got.contains_key("mesh/v1/infra/nodekeys/after"));
    let (s, _) = status(&mesh.get("apps").cluster, "infra").await.unwrap();
    assert!(s.connected && s.resyncs == 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_prefix_on_a_busy_remote_keeps_up_with_its_compaction() {
    let mut mesh = connected_pair().await;
    // Infra is busy outside its exported prefix, then compacts; the mirror's position moved
    // with the progress answers, so a restarted mirror resumes without a re-list.
    let mut infra = mesh.get("infra").cluster.client().await.unwrap();
    for i in 0..200 {
        infra
            .put(format!("busy/{}", i % 10), format!("{i}"), None)
            .await
            .unwrap();
    }
    let busy = revision(&mut infra).await;
    let apps = &mesh.get("apps").cluster;
    eventually(
        "the mirror's stored position passes the busy writes",
        PATIENCE,
        async || {
            let (s, _) = status(apps, "infra").await?;
            ensure!(
                s.remote_revision >= busy,
                "at {} of {busy}",
                s.remote_revision
            );
            Ok(())
        },
    )
    .await;
    infra.compact(busy, None).await.unwrap();
    // Every member of apps restarts: the mirror starts from the stored position.
    let apps = &mut mesh.get_mut("apps").cluster;
    let all: Vec<usize> = (0..apps.len()).collect();
    apps.restart_together(&all).await.unwrap();
    infra
        .put("mesh/v1/infra/nodekeys/late", node_key("late"), None)
        .await
        .unwrap();
    let got = converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    assert!(got.contains_key("mesh/v1/infra/nodekeys/late"));
    let (s, _) = status(&mesh.get("apps").cluster, "infra").await.unwrap();
    assert_eq!(s.resyncs, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_over_budget_is_not_mirrored_and_says_so() {
    let mut mesh = Mesh::new();
    let mut apps = ClusterSpec::new("apps", 1, "10.1.0.0/16");
    apps.members = 1;
    apps.extra = vec!["--remote-max-keys", "10"];
    mesh.start(apps).await;
    let mut infra = ClusterSpec::new("infra", 2, "10.2.0.0/16");
    infra.members = 1;
    mesh.start(infra).await;
    mesh.meshctl_ok(&["connect", "--context", "apps", "--destination", "infra"]);
    let apps = &mesh.get("apps").cluster;
    let s = eventually("apps reports infra over budget", PATIENCE, async || {
        let (s, _) = status(apps, "infra").await?;
        ensure!(s.over_budget, "{s:?}");
        Ok(s)
    })
    .await;
    assert!(!s.connected && s.error.contains("limits 10 keys"), "{s:?}");
    let mut c = apps.client().await.unwrap();
    assert!(snapshot(&mut c, "mesh/v1/infra/").await.unwrap().is_empty());
    // The other direction is within budget.
    converged(
        &mesh.get("apps").cluster,
        &mesh.get("infra").cluster,
        "apps",
    )
    .await;
}

/// Finding 1 of the trust review: a remote rewriting its records faster than this cluster
/// allows one remote is paused and reported, its writes here stay within the allowance, and
/// it resumes where it was, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_rewriting_too_fast_is_paused_and_resumes() {
    let mut mesh = Mesh::new();
    let mut apps = ClusterSpec::new("apps", 1, "10.1.0.0/16");
    apps.members = 1;
    // A burst of 1 MiB, then 200 KiB a second.
    apps.extra = vec![
        "--remote-max-mib",
        "1",
        "--remote-write-mib-per-minute",
        "12",
    ];
    mesh.start(apps).await;
    let mut infra = ClusterSpec::new("infra", 2, "10.2.0.0/16");
    infra.members = 1;
    mesh.start(infra).await;
    mesh.meshctl_ok(&[
        "connect",
        "--context",
        "apps",
        "--destination",
        "infra",
        "--wait",
    ]);
    let apps = &mesh.get("apps").cluster;
    let before = metric_sum(apps, "raftmesh_mvcc_bytes").await.unwrap();
    assert!(before > 0.0, "the store reports its bytes");
    // 3 MiB of rewrites of one identity record, 48 KiB each (under the 64 KiB an identity
    // may have), as fast as infra takes them.
    let mut infra_client = mesh.get("infra").cluster.client().await.unwrap();
    let key = "mesh/v1/infra/identities/131372";
    let started = tokio::time::Instant::now();
    let mut last = Vec::new();
    for i in 0..64 {
        last = mesh_api::Record::Identity(mesh_api::records::IdentityRecord {
            schema: mesh_api::SCHEMA,
            labels: vec![format!("app={i}-{}", "x".repeat(48 << 10))],
        })
        .encode();
        infra_client.put(key, last.clone(), None).await.unwrap();
    }
    let s = eventually("apps pauses infra", PATIENCE, async || {
        let (s, _) = status(apps, "infra").await?;
        ensure!(s.over_budget, "{s:?}");
        Ok(s)
    })
    .await;
    assert!(s.error.contains("12 MiB a minute"), "{s:?}");
    assert!(
        metric_sum(apps, "raftmesh_remote_paused_total{cluster=\"infra\"}")
            .await
            .unwrap()
            >= 1.0
    );
    // What infra's churn grew here is at most the burst and the rate since it started.
    let grown = metric_sum(apps, "raftmesh_mvcc_bytes").await.unwrap() - before;
    let allowed = f64::from(1 << 20) + started.elapsed().as_secs_f64() * (12 << 20) as f64 / 60.0;
    assert!(grown <= allowed, "grew {grown} bytes, allowed {allowed}");
    // Then it resumes where it was: the last value arrives, nothing is lost.
    let got = converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    assert_eq!(got.get(key), Some(&last));
    eventually("apps reports infra connected again", PATIENCE, async || {
        let (s, _) = status(apps, "infra").await?;
        ensure!(s.connected && !s.over_budget, "{s:?}");
        Ok(())
    })
    .await;
}

/// Finding 5 of the trust review: a remote copies one of this cluster's WireGuard keys. The
/// agents keep it with this cluster's node; `meshctl status` shows who holds it and whom the
/// agents refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_wireguard_key_is_reported_with_its_holder() {
    let mesh = connected_pair().await;
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let mut apps = mesh.get("apps").cluster.client().await.unwrap();
    let mut infra = mesh.get("infra").cluster.client().await.unwrap();
    infra
        .put("mesh/v1/infra/nodekeys/copycat", node_key(key), None)
        .await
        .unwrap();
    converged(
        &mesh.get("infra").cluster,
        &mesh.get("apps").cluster,
        "infra",
    )
    .await;
    // In apps' store infra's copy is the older record; apps' own node holds the key all the
    // same.
    apps.put("mesh/v1/apps/nodekeys/apps-1", node_key(key), None)
        .await
        .unwrap();
    let out = mesh.meshctl_ok(&["status", "--context", "apps", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["keyConflicts"],
        serde_json::json!([{"publicKey": key, "holder": "apps/apps-1", "refused": ["infra/copycat"]}]),
        "{v}"
    );
    let table = mesh.meshctl_ok(&["status", "--context", "apps"]);
    assert!(
        table.contains("HELD-BY") && table.contains("infra/copycat"),
        "{table}"
    );
}
