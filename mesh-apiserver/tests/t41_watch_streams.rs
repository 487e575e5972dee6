//! Watch streams under client patterns our own code does not use: a client that closes its
//! send side, and a client that stops reading while its stream has many watchers to catch up.
//!
//! All but the catching-up test run against etcd with `RAFTMESH_TEST_SERVER=etcd`.

#[path = "support/util.rs"]
mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions, WatchResponseStream};
use testkit::localcluster::{Cluster, Spec};
use util::{connect, connect_stream, flavor, raftmesh_only};

/// Bound on a message the server owes (a liveness bound, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(20);

async fn next(stream: &mut WatchResponseStream) -> Result<etcd_client::WatchResponse> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .context("no watch message in time")??
        .context("the watch stream ended")
}

/// Defect 6 of issue 11: a client that closes its send side (a Rust `etcd-client` user
/// dropping the request half) still gets events, as from etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_watch_stream_keeps_delivering() -> Result<()> {
    let cluster = Cluster::start(flavor(), Spec::with_members(1)).await?;
    let url = &cluster.client_urls()[0];
    let mut watching = connect_stream(url).await?;
    let mut writer = connect(url).await?;
    let (sender, mut stream) = watching
        .watch("half/", Some(WatchOptions::new().with_prefix()))
        .await?
        .split();
    ensure!(next(&mut stream).await?.created(), "first message: created");
    drop(sender);

    for i in 0..3 {
        let rev = writer
            .put(format!("half/{i}"), "v", None)
            .await?
            .header()
            .context("header")?
            .revision();
        let resp = next(&mut stream).await?;
        let events = resp.events();
        ensure!(
            events.len() == 1 && events[0].kv().map(|kv| kv.mod_revision()) == Some(rev),
            "put {i} at {rev}: got {resp:?}"
        );
    }
    Ok(())
}

/// Watchers on one stream.
const WATCHERS: usize = 200;
/// Puts in the first txn, each seen by every watcher (so the stream cannot take them all).
const PUTS: usize = 100;

/// Defect 5 of issue 11: catching up many watchers does not hold the store across them. The
/// client stops reading after the first message, so the server stalls on sending; a write
/// acknowledged then must show up in the first message of the watchers served after it —
/// which can only happen if the store was released between watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_catching_up_release_the_store_between_them() -> Result<()> {
    raftmesh_only("how a stream is caught up is raftmesh's; nothing to check against etcd");
    let cluster = Cluster::start(flavor(), Spec::with_members(1)).await?;
    let url = &cluster.client_urls()[0];
    let mut watching = connect_stream(url).await?;
    // The writer has its own connection: the stalled stream fills the watch connection's
    // flow-control window.
    let mut writer = connect(url).await?;
    let prefix = WatchOptions::new().with_prefix();
    let (mut sender, mut stream) = watching.watch("w/", Some(prefix.clone())).await?.split();
    for _ in 1..WATCHERS {
        sender.watch("w/", Some(prefix.clone())).await?;
    }
    let mut first: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    while first.len() < WATCHERS {
        let resp = next(&mut stream).await?;
        ensure!(resp.created(), "expected creates only: {resp:?}");
        first.insert(resp.watch_id(), Vec::new());
    }

    let value = "x".repeat(1024);
    let puts: Vec<TxnOp> = (0..PUTS)
        .map(|i| TxnOp::put(format!("w/{i}"), value.as_str(), None::<PutOptions>))
        .collect();
    let txn = Txn::new()
        .when([Compare::version("w/none", CompareOp::Equal, 0)])
        .and_then(puts);
    let r1 = writer
        .txn(txn)
        .await?
        .header()
        .context("header")?
        .revision();

    // One message read: the server is now sending the first txn's events and stalls.
    let resp = next(&mut stream).await?;
    record(&mut first, &resp);
    let r2 = writer
        .put("w/late", "y", None)
        .await?
        .header()
        .context("header")?
        .revision();

    let mut seen: BTreeMap<i64, Vec<i64>> = first.clone();
    while seen.values().any(|revs| revs.last() != Some(&r2)) {
        let resp = next(&mut stream).await?;
        if first[&resp.watch_id()].is_empty() {
            record(&mut first, &resp);
        }
        record(&mut seen, &resp);
    }
    for (id, revs) in &seen {
        let expected: Vec<i64> = std::iter::repeat_n(r1, PUTS).chain([r2]).collect();
        ensure!(revs == &expected, "watcher {id} saw revisions {revs:?}");
    }
    let late = first.values().filter(|revs| revs.contains(&r2)).count();
    ensure!(
        late > 0,
        "every watcher's first message was read before the write at {r2} was applied: the store \
         was held across all {WATCHERS} watchers"
    );
    eprintln!("{late} of {WATCHERS} watchers got the later write in their first message");
    Ok(())
}

/// Appends the mod revisions of `resp`'s events to its watcher's list.
fn record(seen: &mut BTreeMap<i64, Vec<i64>>, resp: &etcd_client::WatchResponse) {
    let revs = seen.entry(resp.watch_id()).or_default();
    revs.extend(
        resp.events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision())),
    );
}

/// Watchers on keys nobody writes stay quiet while other keys change and the history is
/// compacted past their start, then get the next write to their keys: a watcher that is owed
/// nothing is never canceled for compaction (as etcd's synced watchers), and one asked to
/// start at a future revision starts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_watchers_survive_compaction_and_future_starts_hold() -> Result<()> {
    let cluster = Cluster::start(flavor(), Spec::with_members(1)).await?;
    let url = &cluster.client_url(0);
    let mut watching = connect_stream(url).await?;
    let mut writer = connect(url).await?;
    let (mut sender, mut stream) = watching.watch("quiet/a", None).await?.split();
    ensure!(next(&mut stream).await?.created(), "created");
    let now = writer
        .put("busy/0", "v", None)
        .await?
        .header()
        .context("h")?
        .revision();
    // A second watcher asked to start 60 revisions ahead.
    let future = now + 60;
    sender
        .watch(
            "busy/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(future),
            ),
        )
        .await?;
    let created = next(&mut stream).await?;
    ensure!(created.created(), "created: {created:?}");
    let future_id = created.watch_id();
    for i in 1..100 {
        writer.put(format!("busy/{i}"), "v", None).await?;
    }
    let rev = writer
        .put("busy/last", "v", None)
        .await?
        .header()
        .context("h")?
        .revision();
    writer.compact(rev, None).await?;
    let quiet_rev = writer
        .put("quiet/a", "1", None)
        .await?
        .header()
        .context("h")?
        .revision();

    // The future watcher's events start at its start revision; the quiet one gets its put.
    let mut quiet_seen = None;
    let mut first_future = None;
    while quiet_seen.is_none() {
        let resp = next(&mut stream).await?;
        ensure!(!resp.canceled(), "a watcher was canceled: {resp:?}");
        for e in resp.events() {
            let kv = e.kv().context("kv")?;
            if resp.watch_id() == future_id {
                first_future.get_or_insert(kv.mod_revision());
            } else {
                quiet_seen = Some(kv.mod_revision());
            }
        }
    }
    ensure!(
        quiet_seen == Some(quiet_rev),
        "quiet watcher got {quiet_seen:?}"
    );
    ensure!(
        first_future == Some(future),
        "future watcher's first event at {first_future:?}, asked {future}"
    );
    Ok(())
}

/// A watcher far behind large revisions (a mirror writes Txns of up to 1 MiB) gets them in
/// messages a gRPC client with the default 4 MiB limit can read: whole revisions up to about
/// 1 MiB each. Before the bound, catching up covered 1,000 revisions in one message, and agents
/// watching a store that had just mirrored 255 clusters were refused a 10 MB one ("decoded
/// message length too large") again and again. etcd sends such a catch-up in one message too
/// (its clients accept 2 GiB), so this is raftmesh's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_behind_watcher_gets_large_revisions_in_readable_messages() -> Result<()> {
    raftmesh_only("the size of a catch-up message is raftmesh's bound");
    let cluster = Cluster::start(flavor(), Spec::with_members(1)).await?;
    let mut client = connect(&cluster.client_urls()[0]).await?;
    let value = "v".repeat(200 << 10);
    let mut first = 0;
    for r in 0..30 {
        let ops: Vec<TxnOp> = (0..2)
            .map(|k| TxnOp::put(format!("big/{r}/{k}"), value.as_str(), None::<PutOptions>))
            .collect();
        let rev = client
            .txn(Txn::new().and_then(ops))
            .await?
            .header()
            .context("header")?
            .revision();
        if r == 0 {
            first = rev;
        }
    }
    let options = WatchOptions::new().with_prefix().with_start_revision(first);
    let (_sender, mut stream) = client.watch("big/", Some(options)).await?.split();
    ensure!(
        next(&mut stream).await?.created(),
        "expected the create first"
    );
    let mut seen = 0;
    while seen < 60 {
        let resp = next(&mut stream).await?;
        let bytes: usize = resp
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.key().len() + kv.value().len())
            .sum();
        // Whole revisions of 400 KiB: at most two fit in 1 MiB.
        ensure!(
            bytes <= 1 << 20,
            "a message of {bytes} bytes ({} events)",
            resp.events().len()
        );
        seen += resp.events().len();
    }
    ensure!(seen == 60, "{seen} events");
    Ok(())
}
