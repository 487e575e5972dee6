//! Watch delivery across a leader change: a watcher on a follower sees every write exactly once,
//! in revision order, with no gap, while the leader is killed and restarted under load.
//!
//! Runs against etcd with `RAFTMESH_TEST_SERVER=etcd`.

#[path = "support/util.rs"]
mod util;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{EventType, WatchOptions, WatchStream};
use testkit::localcluster::{Cluster, Spec};
use tokio::sync::watch;
use tokio::time::Instant;
use util::{Writers, connect, connect_stream, current_revision, flavor};

/// Puts acknowledged in total (a few more may land).
const WRITES: usize = 10_000;
/// Acknowledged puts before the leader is killed.
const KILL_AT: usize = 3_000;
/// Acknowledged puts before the killed leader is restarted.
const RESTART_AT: usize = 6_000;
/// Concurrent writers: enough to batch, few enough for two cores.
const WRITERS: usize = 16;
/// Bound on each writing phase.
const PATIENCE: Duration = Duration::from_secs(120);
/// Bound on the watcher delivering the last write once writing is over.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(30);

/// What the watcher saw.
#[derive(Debug)]
struct Seen {
    /// Key → mod revision of its one event.
    events: HashMap<String, i64>,
    /// Revision of the last event.
    last: i64,
    /// Replies whose header revision was ahead of an event delivered in a later reply.
    header_ahead: Vec<String>,
}

/// Reads the watch until it has delivered revision `until` (0 = not known yet), checking that
/// events come one revision after another from `start`, each a first PUT of a fresh key.
async fn collect(
    mut stream: WatchStream,
    start: i64,
    mut until: watch::Receiver<i64>,
    progress: Arc<AtomicI64>,
) -> Result<Seen> {
    let mut seen = Seen {
        events: HashMap::new(),
        last: start - 1,
        header_ahead: Vec::new(),
    };
    // The highest header revision of any earlier reply: a client resumes from it, so no event
    // at or below it may come later.
    let mut header_max = 0;
    loop {
        let target = *until.borrow_and_update();
        if target > 0 && seen.last >= target {
            return Ok(seen);
        }
        // `message` is cancel-safe: a reply is either returned or stays buffered.
        let reply = tokio::select! {
            reply = stream.message() => reply?.context("watch stream ended")?,
            changed = until.changed() => {
                changed.context("the test stopped waiting")?;
                continue;
            }
        };
        ensure!(
            !reply.canceled(),
            "watch canceled at revision {}: {:?} (compact revision {})",
            seen.last,
            reply.cancel_reason(),
            reply.compact_revision()
        );
        let header = reply
            .header()
            .context("watch reply without header")?
            .revision();
        for event in reply.events() {
            let kv = event.kv().context("event without kv")?;
            let key = kv.key_str()?.to_owned();
            let revision = kv.mod_revision();
            ensure!(
                revision == seen.last + 1,
                "event for {key} at revision {revision} after revision {}",
                seen.last
            );
            ensure!(
                event.event_type() == EventType::Put
                    && kv.create_revision() == revision
                    && kv.version() == 1
                    && key.starts_with("w/"),
                "unexpected event at revision {revision}: {event:?}"
            );
            if revision <= header_max {
                seen.header_ahead.push(format!(
                    "event at revision {revision} delivered after a reply with header revision \
                     {header_max}"
                ));
            }
            if let Some(first) = seen.events.insert(key.clone(), revision) {
                bail!("{key} delivered twice, at revisions {first} and {revision}");
            }
            seen.last = revision;
        }
        progress.store(seen.last, Ordering::SeqCst);
        header_max = header_max.max(header);
    }
}

/// A watch on a prefix, held on a follower while the leader is killed, later restarted, and
/// 10,000 puts land through every member: the watcher gets an event for every revision from its
/// start to the end, in order and exactly once, each acknowledged put with its acknowledged
/// revision, and no reply's header revision runs ahead of events not yet delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watch_survives_leader_kill_in_order_exactly_once() {
    let mut cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .expect("cluster starts");
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let mut reader = connect(&cluster.client_url(follower)).await.unwrap();
    let start = current_revision(&mut reader).await.unwrap() + 1;

    let mut watcher = connect_stream(&cluster.client_url(follower)).await.unwrap();
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut stream = watcher.watch("w/", Some(options)).await.unwrap();
    let created = stream.message().await.unwrap().expect("created reply");
    assert!(created.created() && !created.canceled(), "{created:?}");
    assert!(created.events().is_empty());
    let (until, until_rx) = watch::channel(0);
    let progress = Arc::new(AtomicI64::new(0));
    let collector = tokio::spawn(collect(stream, start, until_rx, progress.clone()));

    let started = Instant::now();
    let writers = Writers::start(&cluster.client_urls(), WRITERS, "w/", Some(WRITES));
    writers
        .wait_for("acks before the kill", PATIENCE, |n| n >= KILL_AT)
        .await;
    cluster.kill(leader);
    writers
        .wait_for("acks before the restart", PATIENCE, |n| n >= RESTART_AT)
        .await;
    cluster.restart(leader).await.unwrap();
    writers
        .wait_for("all acks", PATIENCE, |n| n >= WRITES)
        .await;
    let failed = writers.failed();
    let acks = writers.finish().await;
    let end = current_revision(&mut reader).await.unwrap();
    eprintln!(
        "{} puts acknowledged, {failed} failed, revisions {start}..={end}, in {:?}",
        acks.len(),
        started.elapsed()
    );
    until.send(end).unwrap();

    let seen = tokio::time::timeout(CATCH_UP_PATIENCE, collector)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the watcher delivered revisions {start}..={} of {start}..={end} in {CATCH_UP_PATIENCE:?}",
                progress.load(Ordering::SeqCst)
            )
        })
        .expect("collector panicked")
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("watcher delivered {} events", seen.events.len());
    assert_eq!(seen.last, end);
    assert_eq!(seen.events.len() as i64, end - start + 1);
    let mut wrong = Vec::new();
    for ack in &acks {
        if seen.events.get(&ack.key) != Some(&ack.revision) {
            wrong.push(format!(
                "{} acknowledged at {}, watched at {:?}",
                ack.key,
                ack.revision,
                seen.events.get(&ack.key)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} acknowledged puts not delivered at their revision, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        seen.header_ahead.is_empty(),
        "{} events came after a reply whose header revision covered them, e.g. {:?}",
        seen.header_ahead.len(),
        &seen.header_ahead[..seen.header_ahead.len().min(5)]
    );
}
