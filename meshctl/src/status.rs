//! `meshctl status`: a cluster's members and, for every remote it mirrors, whether the mirror
//! is connected, how fresh its copy is, and whether this cluster's nodes reach its nodes (the
//! agents' reachability records, `mesh/status/reach/<cluster>/<node>`).

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use etcd_client::{Client, GetOptions};
use mesh_api::keys::{CONFIG_REMOTES, Key, STATUS_CURRENT, STATUS_REACH, STATUS_REMOTES};
use mesh_api::reach::ReachRecord;
use mesh_api::remote::{RemoteConfigRecord, RemoteStatusRecord, lease_freshness};
use serde_json::{Value, json};

use crate::Failure;
use crate::output::{Output, print, render};
use mesh_client::contexts::ClusterContext;
use mesh_client::contexts::ConfigFile;

/// Bound on one request.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Remote certificates expiring sooner than this are warned about.
const CERT_WARNING_DAYS: i64 = 30;

/// Show a cluster's members (leader, revision, health) and its remote clusters (connected,
/// freshness age, remote revision, keys mirrored, last error, and whether this cluster's nodes
/// reach the remote's nodes: REACHABILITY, from the agents' probes; `-` when no agent probes).
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The cluster's context (default: the current context).
    #[arg(long)]
    context: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Wait until every member is healthy and every remote connected and current; exit 1 if
    /// that does not happen within --timeout.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// Runs `meshctl status`.
pub fn run(args: StatusArgs) -> Result<(), Failure> {
    let (_, file) = ConfigFile::load().map_err(Failure::BadInput)?;
    let ctx = file
        .resolve(args.context.as_deref())
        .map_err(Failure::BadInput)?;
    let runtime = crate::runtime()?;
    let status = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
        loop {
            // Bounded as a whole too: members are asked one after another.
            let attempt = tokio::time::timeout(TIMEOUT * 4, status(&ctx))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "no status within {}s",
                        (TIMEOUT * 4).as_secs()
                    ))
                });
            let done = match &attempt {
                Ok(s) => !args.wait || settled(s),
                Err(_) => !args.wait,
            };
            if done {
                return attempt;
            }
            if tokio::time::Instant::now() >= deadline {
                let why = match &attempt {
                    Ok(s) => unsettled(s),
                    Err(e) => format!("{e:#}"),
                };
                return Err(anyhow::anyhow!(
                    "not settled after {}s: {why}",
                    args.timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let status = status.map_err(Failure::Other)?;
    print(args.output, &status, || table(&status)).map_err(Failure::Other)
}

/// Every member healthy, every remote connected and current.
fn settled(s: &Value) -> bool {
    unsettled(s).is_empty()
}

/// What is not settled yet, for the timeout message; empty when settled.
fn unsettled(s: &Value) -> String {
    let mut out = Vec::new();
    for m in s["members"].as_array().into_iter().flatten() {
        if m["healthy"] != true {
            out.push(format!(
                "member {} unhealthy",
                m["name"].as_str().unwrap_or("?")
            ));
        }
    }
    for r in s["remotes"].as_array().into_iter().flatten() {
        if r["connected"] != true || r["listing"] == true || r["configured"] != true {
            out.push(format!(
                "remote {} not connected ({})",
                r["cluster"].as_str().unwrap_or("?"),
                r["error"].as_str().unwrap_or("")
            ));
        }
    }
    out.join("; ")
}

/// The status as JSON (the table is made from it).
async fn status(ctx: &ClusterContext) -> anyhow::Result<Value> {
    let mut client = ctx.any_client(TIMEOUT).await?;
    let list = client.member_list().await.context("listing members")?;
    // Members of a kubeconfig context have cluster-internal URLs: their health is their
    // pods' readiness (/healthz), the leader as the member behind the Service sees it.
    let kube = match &ctx.kube {
        Some(install) => {
            let pods = mesh_client::contexts::kube::member_pods(&ctx.name, install).await?;
            let leader = client.status().await.context("status")?.leader();
            Some((mesh_client::contexts::kube::member_health(&pods), leader))
        }
        None => None,
    };
    let mut members = Vec::new();
    for m in list.members() {
        let url = m.client_urls().first().cloned().unwrap_or_default();
        let mut row = json!({
            "name": m.name(),
            "id": format!("{:x}", m.id()),
            "clientURLs": m.client_urls(),
            "healthy": false,
        });
        if let Some((health, leader)) = &kube {
            match health.get(m.name()) {
                Some(Ok(())) => row["healthy"] = json!(true),
                Some(Err(why)) => row["error"] = json!(why),
                None => row["error"] = json!("no pod of this name"),
            }
            row["leader"] = json!(*leader == m.id());
            members.push(row);
            continue;
        }
        match member_status(ctx, &url).await {
            Ok(s) => {
                row["healthy"] = json!(s.leader() != 0);
                if s.leader() == 0 {
                    row["error"] = json!("knows no leader");
                }
                row["leader"] = json!(s.leader() == m.id());
                row["revision"] = json!(s.header().map_or(0, |h| h.revision()));
                row["raftIndex"] = json!(s.raft_index());
                row["raftTerm"] = json!(s.raft_term());
                row["dbSize"] = json!(s.db_size());
            }
            Err(e) => row["error"] = json!(format!("{e:#}")),
        }
        members.push(row);
    }
    let mut remotes = remotes(&mut client).await?;
    let agents = reachability(&mut client, ctx.cluster().ok().as_deref(), &mut remotes).await?;
    let conflicts = match ctx.cluster() {
        Ok(own) => key_conflicts(&mut client, &own).await?,
        Err(_) => Vec::new(),
    };
    Ok(json!({
        "context": ctx.name,
        "cluster": ctx.cluster().ok(),
        "members": members,
        "remotes": remotes,
        "reachabilityReports": agents,
        "keyConflicts": conflicts,
    }))
}

async fn member_status(
    ctx: &ClusterContext,
    url: &str,
) -> anyhow::Result<etcd_client::StatusResponse> {
    if url.is_empty() {
        anyhow::bail!("no client URL published yet");
    }
    // The whole exchange is bounded: a stopped (SIGSTOP) member accepts TCP connections in
    // the kernel but never finishes the TLS handshake, which the client's own timeouts do not
    // cover.
    tokio::time::timeout(TIMEOUT, async {
        let mut c = ctx.member_client(url, TIMEOUT).await?;
        Ok(c.status().await?)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {}s", TIMEOUT.as_secs()))?
}

/// Every configured remote and every remote with a status (a removed one still has its
/// status until the disconnect grace is over).
async fn remotes(client: &mut Client) -> anyhow::Result<Vec<Value>> {
    let now = now_ms();
    let mut out: std::collections::BTreeMap<String, Value> = Default::default();
    let configs = client
        .get(CONFIG_REMOTES, Some(GetOptions::new().with_prefix()))
        .await
        .context("reading mesh/config/remotes/")?;
    for kv in configs.kvs() {
        let Ok(Key::RemoteConfig { cluster }) = String::from_utf8_lossy(kv.key()).parse::<Key>()
        else {
            continue;
        };
        let mut row = json!({ "cluster": cluster, "configured": true, "connected": false });
        match RemoteConfigRecord::decode_checked(kv.value()) {
            Ok(c) => {
                row["endpoints"] = json!(c.endpoints);
                if let Ok((_, not_after)) = certs::pki::leaf_info(&c.cert_pem) {
                    let ms = not_after
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let days = (ms - now) / 86_400_000;
                    row["certExpiresInDays"] = json!(days);
                    if days < CERT_WARNING_DAYS {
                        row["warning"] = json!(format!(
                            "the remote certificate expires in {days} days: meshctl connect --renew"
                        ));
                    }
                }
            }
            Err(e) => row["error"] = json!(format!("unreadable connection record: {e}")),
        }
        out.insert(cluster, row);
    }
    let statuses = client
        .get(STATUS_REMOTES, Some(GetOptions::new().with_prefix()))
        .await
        .context("reading mesh/status/remotes/")?;
    for kv in statuses.kvs() {
        let Ok(Key::RemoteStatus { cluster }) = String::from_utf8_lossy(kv.key()).parse::<Key>()
        else {
            continue;
        };
        let row = out
            .entry(cluster.clone())
            .or_insert_with(|| json!({ "cluster": cluster, "configured": false }));
        match RemoteStatusRecord::decode_checked(kv.value()) {
            Ok(s) => {
                let fields = s.to_json(now);
                for (k, v) in fields.as_object().into_iter().flatten() {
                    if k == "schema" || (k == "error" && v == "" && row.get("error").is_some()) {
                        continue;
                    }
                    row[k] = v.clone();
                }
            }
            Err(e) => row["error"] = json!(format!("unreadable status: {e}")),
        }
    }
    // While the mirror is current with a remote, the freshness comes from the lease it renews
    // on every answer (to the second); otherwise the record's, written at the disconnect.
    let current = client
        .get(STATUS_CURRENT, Some(GetOptions::new().with_prefix()))
        .await
        .context("reading mesh/status/current/")?;
    for kv in current.kvs() {
        let Ok(Key::RemoteCurrent { cluster }) = String::from_utf8_lossy(kv.key()).parse::<Key>()
        else {
            continue;
        };
        let (Some(row), lease) = (out.get_mut(&cluster), kv.lease()) else {
            continue;
        };
        if lease == 0 || row["connected"] != true {
            continue;
        }
        // The lease may run out between the two reads: then the record's figure stands.
        if let Ok(ttl) = client.lease_time_to_live(lease, None).await
            && let Some(age) = lease_freshness(ttl.granted_ttl(), ttl.ttl())
        {
            row["freshnessAgeSeconds"] = json!(age);
            row["freshnessFrom"] = json!("lease");
        }
    }
    Ok(out.into_values().collect())
}

/// Adds to every remote row what this cluster's agents find (`reachability`): how many report,
/// how many reach none of its probed nodes, which of its nodes they find unreachable and by
/// how many. Returns the number of agents reporting.
async fn reachability(
    client: &mut Client,
    own: Option<&str>,
    remotes: &mut [Value],
) -> anyhow::Result<usize> {
    let prefix = match own {
        Some(c) => format!("{STATUS_REACH}{c}/"),
        None => STATUS_REACH.to_owned(),
    };
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("reading {prefix}"))?;
    let reports: Vec<ReachRecord> = resp
        .kvs()
        .iter()
        .filter_map(|kv| ReachRecord::decode_checked(kv.value()).ok())
        .collect();
    for row in remotes.iter_mut() {
        let cluster = row["cluster"].as_str().unwrap_or_default().to_owned();
        row["reachability"] = reach_summary(&reports, &cluster);
    }
    Ok(reports.len())
}

/// What the `reports` of this cluster's agents say about remote `cluster`.
fn reach_summary(reports: &[ReachRecord], cluster: &str) -> Value {
    let mut whole = 0;
    let mut partly = 0;
    let mut unknown = 0;
    let mut nodes: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut unnamed = 0;
    for r in reports {
        match r.cluster(cluster) {
            Some(c) if c.whole() => whole += 1,
            Some(c) => {
                partly += 1;
                if c.nodes.is_empty() {
                    unnamed += 1;
                }
                for n in &c.nodes {
                    *nodes.entry(n.as_str()).or_default() += 1;
                }
            }
            // Left out of a full record: this agent's view of it is unknown.
            None if r.omitted_clusters > 0 => unknown += 1,
            None => {}
        }
    }
    json!({
        "agents": reports.len(),
        "unreachableFrom": whole,
        "partlyUnreachableFrom": partly,
        "unreachableNodes": nodes,
        "unnamedFrom": unnamed,
        "unknownFrom": unknown,
    })
}

/// The REACHABILITY cell: `ok (n nodes)`, or who finds what unreachable.
fn reach_cell(r: &Value) -> String {
    let n = r["agents"].as_u64().unwrap_or(0);
    if n == 0 {
        return "-".to_owned();
    }
    let count = |k: &str| r[k].as_u64().unwrap_or(0);
    let mut parts = Vec::new();
    if count("unreachableFrom") > 0 {
        parts.push(format!(
            "unreachable from {}/{n} nodes",
            count("unreachableFrom")
        ));
    }
    for (node, from) in r["unreachableNodes"].as_object().into_iter().flatten() {
        parts.push(format!("{node} unreachable from {from}/{n}"));
    }
    if count("unnamedFrom") > 0 {
        parts.push(format!(
            "several nodes unreachable from {}/{n}",
            count("unnamedFrom")
        ));
    }
    if count("unknownFrom") > 0 {
        parts.push(format!("not reported by {}/{n}", count("unknownFrom")));
    }
    if parts.is_empty() {
        format!("ok ({n} node{})", if n == 1 { "" } else { "s" })
    } else {
        parts.join("; ")
    }
}

/// WireGuard public keys published by more than one node, in this cluster's store: who holds
/// each (as the agents decide: [`mesh_api::records::nodekey_claim_rank`]) and whom the
/// agents refuse. A copied state directory, or a remote or stolen agent certificate copying
/// a node's key to take it off the peer lists.
async fn key_conflicts(client: &mut Client, own: &str) -> anyhow::Result<Vec<Value>> {
    use mesh_api::Record;
    let resp = client
        .get(mesh_api::keys::ROOT, Some(GetOptions::new().with_prefix()))
        .await
        .context("reading mesh/v1/")?;
    let mut by_key: std::collections::BTreeMap<String, Vec<(String, String, i64)>> =
        Default::default();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        if !key.contains("/nodekeys/") {
            continue;
        }
        if let Ok((Key::NodeKey { cluster, node }, Record::NodeKey(r))) =
            Record::decode_at(&key, kv.value())
        {
            by_key
                .entry(r.public_key)
                .or_default()
                .push((cluster, node, kv.create_revision()));
        }
    }
    let mut out = Vec::new();
    for (public_key, mut claims) in by_key {
        if claims.len() < 2 {
            continue;
        }
        claims.sort_by(|a, b| {
            mesh_api::records::nodekey_claim_rank(own, &a.0, &a.1, a.2)
                .cmp(&mesh_api::records::nodekey_claim_rank(own, &b.0, &b.1, b.2))
        });
        let name = |c: &(String, String, i64)| format!("{}/{}", c.0, c.1);
        out.push(json!({
            "publicKey": public_key,
            "holder": name(&claims[0]),
            "refused": claims[1..].iter().map(name).collect::<Vec<_>>(),
        }));
    }
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn table(s: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut rows = vec![vec![
        "MEMBER".to_owned(),
        "ID".to_owned(),
        "ENDPOINT".to_owned(),
        "LEADER".to_owned(),
        "REVISION".to_owned(),
        "HEALTH".to_owned(),
    ]];
    for m in s["members"].as_array().into_iter().flatten() {
        rows.push(vec![
            text(&m["name"]),
            text(&m["id"]),
            m["clientURLs"][0].as_str().unwrap_or("-").to_owned(),
            if m["leader"] == true { "*" } else { "" }.to_owned(),
            text(&m["revision"]),
            if m["healthy"] == true {
                "ok".to_owned()
            } else {
                format!("unhealthy: {}", text(&m["error"]))
            },
        ]);
    }
    let members = render(&rows);
    let remotes = s["remotes"].as_array().cloned().unwrap_or_default();
    if remotes.is_empty() {
        return format!(
            "{members}\nno remote clusters (meshctl connect)\n{}",
            conflicts_table(s)
        );
    }
    let mut rows = vec![
        [
            "REMOTE",
            "CONNECTED",
            "FRESHNESS",
            "REMOTE-REVISION",
            "KEYS",
            "CERT-DAYS",
            "REACHABILITY",
            "ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &remotes {
        let connected = match (r["configured"] == true, r["connected"] == true) {
            (false, _) => "removed".to_owned(),
            (true, true) if r["listing"] == true => "listing".to_owned(),
            (true, true) => "yes".to_owned(),
            (true, false) => "no".to_owned(),
        };
        // From the current lease: a bound in whole seconds.
        let age = match (
            r["freshnessAgeSeconds"].as_f64(),
            r["freshnessFrom"] == "lease",
        ) {
            (None, _) => "never".to_owned(),
            (Some(a), true) => format!("≤{a:.0}s"),
            (Some(a), false) => format!("{a:.1}s"),
        };
        let mut error = text(&r["error"]);
        if let Some(w) = r["warning"].as_str() {
            error = if error == "-" || error.is_empty() {
                w.to_owned()
            } else {
                format!("{error}; {w}")
            };
        }
        rows.push(vec![
            text(&r["cluster"]),
            connected,
            age,
            text(&r["remoteRevision"]),
            text(&r["keys"]),
            text(&r["certExpiresInDays"]),
            reach_cell(&r["reachability"]),
            if error.is_empty() {
                "-".to_owned()
            } else {
                error
            },
        ]);
    }
    format!("{members}\n{}{}", render(&rows), conflicts_table(s))
}

/// The key conflicts, when there are any.
fn conflicts_table(s: &Value) -> String {
    let conflicts = s["keyConflicts"].as_array().cloned().unwrap_or_default();
    if conflicts.is_empty() {
        return String::new();
    }
    let mut rows = vec![
        ["WIREGUARD-KEY", "HELD-BY", "REFUSED"]
            .map(String::from)
            .to_vec(),
    ];
    for c in &conflicts {
        let refused: Vec<&str> = c["refused"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        rows.push(vec![
            c["publicKey"].as_str().unwrap_or("-").to_owned(),
            c["holder"].as_str().unwrap_or("-").to_owned(),
            refused.join(", "),
        ]);
    }
    format!(
        "\nnodes publishing another node's WireGuard key (refused by the agents):\n{}",
        render(&rows)
    )
}

#[cfg(test)]
mod tests;
