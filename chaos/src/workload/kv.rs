//! A KV workload with a recorded history: clients doing puts, linearizable gets and CAS
//! transactions on a few keys of one cluster, and a watcher on their prefix.
//!
//! Every value written is unique (`<client>-<seq>`), so a value names its write. A request
//! that gets no answer within the timeout, or an error, is recorded as [`Output::Unknown`]:
//! a write may or may not have happened, which the checkers allow for.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use tokio_util::sync::CancellationToken;

use crate::history::{Event, Input, MaybeWrite, Op, Output, Write};
use crate::rng::Rng;
use crate::workload::Connect;

/// What the workload does.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Keys live under it.
    pub prefix: String,
    /// Keys (`<prefix>k0` …).
    pub keys: u32,
    /// Concurrent clients, each with its own connection.
    pub clients: u32,
    /// Seed of the clients' choices.
    pub seed: u64,
    /// A request without an answer after this is unknown.
    pub timeout: Duration,
    /// Pause between one client's requests.
    pub pause: Duration,
}

/// What the clients did and were told.
#[derive(Debug, Clone, Default)]
pub struct KvHistory {
    /// Every operation.
    pub ops: Vec<Op>,
    /// Acknowledged writes with their revisions.
    pub writes: Vec<Write>,
    /// Writes sent and never answered.
    pub maybe: Vec<MaybeWrite>,
    /// Clients that panicked (their history is lost, so the run cannot be judged).
    pub panicked: Vec<String>,
}

impl KvHistory {
    /// Operations answered (successes and refusals such as a failed CAS).
    pub fn answered(&self) -> usize {
        self.ops.iter().filter(|o| o.ret.is_some()).count()
    }

    /// Operations that got no answer.
    pub fn unanswered(&self) -> usize {
        self.ops.len() - self.answered()
    }
}

/// One process's order of calls and answers (see [`crate::history`]).
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

impl Clock {
    /// The next position.
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// Runs the clients until `stop`, then returns their history; call and answer positions come
/// from `clock`.
pub async fn run(
    config: KvConfig,
    connect: Connect,
    clock: Arc<Clock>,
    stop: CancellationToken,
) -> KvHistory {
    let mut tasks = Vec::new();
    for c in 0..config.clients {
        let (config, connect, stop, clock) =
            (config.clone(), connect.clone(), stop.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            client(c, &config, &connect, &stop, &clock).await
        }));
    }
    collect(tasks).await
}

/// The clients' histories together; a client that panicked is named in
/// [`KvHistory::panicked`], never dropped silently.
async fn collect(tasks: Vec<tokio::task::JoinHandle<KvHistory>>) -> KvHistory {
    let mut all = KvHistory::default();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(h) => {
                all.ops.extend(h.ops);
                all.writes.extend(h.writes);
                all.maybe.extend(h.maybe);
                all.panicked.extend(h.panicked);
            }
            Err(e) => all.panicked.push(format!("client {i}: {e}")),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_client_is_reported_not_dropped() {
        let fine = tokio::spawn(async { KvHistory::default() });
        let broken = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("a bug in the workload");
            }
            KvHistory::default()
        });
        let h = collect(vec![fine, broken]).await;
        assert_eq!(h.panicked.len(), 1, "{:?}", h.panicked);
        assert!(h.panicked[0].starts_with("client 1:"), "{:?}", h.panicked);
    }
}

async fn client(
    id: u32,
    config: &KvConfig,
    connect: &Connect,
    stop: &CancellationToken,
    clock: &Clock,
) -> KvHistory {
    let mut rng = Rng::new(config.seed ^ (u64::from(id) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut h = KvHistory::default();
    let mut conn: Option<Client> = None;
    let mut member = id as usize;
    // The last value this client read of each key: what its CAS expects.
    let mut seen: Vec<Option<String>> = vec![None; config.keys as usize];
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        let Some(c) = conn.as_mut() else {
            match tokio::time::timeout(config.timeout, connect.client(member)).await {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    member += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        let k = rng.below(u64::from(config.keys)) as usize;
        let key = format!("{}k{k}", config.prefix);
        seq += 1;
        let value = format!("{id}-{seq}");
        let input = match rng.below(10) {
            0..4 => Input::Put(value),
            4..8 => Input::Get,
            _ => Input::Cas {
                expect: seen[k].clone(),
                new: value,
            },
        };
        let call = clock.tick();
        let answer = tokio::time::timeout(config.timeout, request(c, &key, &input)).await;
        let (output, revision) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(_)) | Err(_) => {
                // The member may be gone: try the next one.
                conn = None;
                member += 1;
                (Output::Unknown, 0)
            }
        };
        let ret = (output != Output::Unknown).then(|| clock.tick());
        match (&input, &output) {
            (Input::Get, Output::Value(v)) => seen[k].clone_from(v),
            (Input::Put(v), Output::Done) | (Input::Cas { new: v, .. }, Output::Swapped(true)) => {
                seen[k] = Some(v.clone());
                h.writes.push(Write {
                    key: key.clone(),
                    value: Some(v.clone()),
                    revision,
                });
            }
            (Input::Put(v) | Input::Cas { new: v, .. }, Output::Unknown) => {
                h.maybe.push(MaybeWrite {
                    key: key.clone(),
                    value: Some(v.clone()),
                });
            }
            _ => {}
        }
        h.ops.push(Op {
            client: id,
            key,
            input,
            output,
            call,
            ret,
        });
        if !config.pause.is_zero() {
            tokio::time::sleep(config.pause).await;
        }
    }
    h
}

/// Sends one request: its output and, for a write, the revision it was given.
async fn request(
    c: &mut Client,
    key: &str,
    input: &Input,
) -> Result<(Output, i64), etcd_client::Error> {
    Ok(match input {
        Input::Put(v) => {
            let r = c.put(key, v.as_str(), None).await?;
            (Output::Done, r.header().map_or(0, |h| h.revision()))
        }
        Input::Delete => {
            let r = c.delete(key, None).await?;
            (Output::Done, r.header().map_or(0, |h| h.revision()))
        }
        Input::Get => {
            let r = c.get(key, None).await?;
            let v = r
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
            (Output::Value(v), 0)
        }
        Input::Cas { expect, new } => {
            let compare = match expect {
                Some(v) => Compare::value(key, CompareOp::Equal, v.as_str()),
                None => Compare::version(key, CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, new.as_str(), None)]);
            let r = c.txn(txn).await?;
            (
                Output::Swapped(r.succeeded()),
                r.header().map_or(0, |h| h.revision()),
            )
        }
    })
}

/// A watcher's record: the events it got, from where it started.
#[derive(Debug, Clone, Default)]
pub struct WatchRecord {
    /// The revision it started from.
    pub start: i64,
    /// The events, in the order received (across reconnects).
    pub events: Vec<Event>,
    /// How often it had to reconnect.
    pub reconnects: u32,
}

/// Watches `prefix` from revision `start` until `stop`, first on member `member`, resuming
/// on the next member after the last event it got whenever the stream breaks; `reached` is
/// the highest revision received so far.
pub async fn watch(
    connect: Connect,
    prefix: String,
    start: i64,
    mut member: usize,
    stop: CancellationToken,
    reached: Arc<AtomicI64>,
) -> WatchRecord {
    let mut rec = WatchRecord {
        start,
        ..WatchRecord::default()
    };
    let mut next = start;
    while !stop.is_cancelled() {
        let once = async {
            let mut c = connect.client(member).await?;
            let options = WatchOptions::new().with_prefix().with_start_revision(next);
            let mut stream = c.watch(prefix.as_str(), Some(options)).await?;
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    break;
                }
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    next = next.max(kv.mod_revision() + 1);
                    reached.fetch_max(kv.mod_revision(), Ordering::Relaxed);
                    rec.events.push(Event {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: (e.event_type() == EventType::Put)
                            .then(|| String::from_utf8_lossy(kv.value()).into_owned()),
                        revision: kv.mod_revision(),
                    });
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = once => {}
        }
        rec.reconnects += 1;
        member += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rec
}

/// The revision of `prefix`'s latest state, and its keys' values and revisions.
pub async fn read_all(
    c: &mut Client,
    prefix: &str,
) -> Result<(i64, Vec<(String, String, i64)>), etcd_client::Error> {
    let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect();
    Ok((r.header().map_or(0, |h| h.revision()), kvs))
}
