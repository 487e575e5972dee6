//! A KV workload with a recorded history: clients doing puts (some bound to a lease the
//! workload keeps alive), deletes, linearizable gets and CAS transactions on a few keys of one
//! cluster, and a watcher on their prefix.
//!
//! Every value written is unique (`<client>-<seq>`), so a value names its write. A request
//! that gets no answer within the timeout, or an error, is recorded as [`Output::Unknown`]:
//! a write may or may not have happened, which the checkers allow for. A connection attempt
//! that fails is recorded too ([`KvHistory::connect_failures`]): a client that cannot reach its
//! cluster has not been served, even though it sent nothing.
//!
//! The lease lives longer than any fault ([`LEASE_TTL`]) and is kept alive every second from
//! any member, so a store that keeps its leases as etcd does never expires it during a run;
//! if it does, its keys vanish without a write the history knows, which the lost-writes and
//! watch checkers report, and [`KvHistory::lease_lost`] says why.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio_util::sync::CancellationToken;

use crate::history::{Event, Input, MaybeWrite, Op, Output, Write};
use crate::rng::Rng;
use crate::workload::{Connect, WorkloadError};

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

/// The TTL of the workload's lease: longer than any fault a scenario makes while keep-alives
/// can reach a majority (a leader change restarts every lease's TTL, as in etcd).
pub const LEASE_TTL: i64 = 30;

/// What the clients did and were told.
#[derive(Debug, Clone, Default)]
pub struct KvHistory {
    /// Every operation.
    pub ops: Vec<Op>,
    /// Acknowledged writes with their revisions.
    pub writes: Vec<Write>,
    /// Writes sent and never answered.
    pub maybe: Vec<MaybeWrite>,
    /// Clock positions of connection attempts that failed (refused, timed out, TLS).
    pub connect_failures: Vec<u64>,
    /// Acknowledged puts bound to the lease.
    pub leased_writes: u64,
    /// Keep-alives the lease got answered.
    pub lease_renewals: u64,
    /// Why the lease was lost, if the store expired it while it was kept alive.
    pub lease_lost: Option<String>,
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

    /// Operations called inside one of `windows` (clock positions, exclusive) that were
    /// answered, and connection attempts that failed there.
    pub fn served_during(&self, windows: &[(u64, u64)]) -> (usize, usize) {
        let inside = |at: u64| windows.iter().any(|(a, b)| at > *a && at < *b);
        let answered = self
            .ops
            .iter()
            .filter(|o| o.ret.is_some() && inside(o.call))
            .count();
        let refused = self
            .connect_failures
            .iter()
            .filter(|at| inside(**at))
            .count();
        (answered, refused)
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
    let lease = Arc::new(AtomicI64::new(0));
    let keeper = tokio::spawn(keep_lease(connect.clone(), lease.clone(), stop.clone()));
    let mut tasks = Vec::new();
    for c in 0..config.clients {
        let (config, connect, stop, clock, lease) = (
            config.clone(),
            connect.clone(),
            stop.clone(),
            clock.clone(),
            lease.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client(c, &config, &connect, &stop, &clock, &lease).await
        }));
    }
    let mut all = collect(tasks).await;
    match keeper.await {
        Ok((renewals, lost)) => {
            all.lease_renewals = renewals;
            all.lease_lost = lost;
        }
        Err(e) => all.panicked.push(format!("lease keeper: {e}")),
    }
    all
}

/// Grants the workload's lease (its id goes to `lease`) and keeps it alive every second until
/// `stop`, moving to the next member whenever one fails: the keep-alives answered, and why the
/// lease was lost if the store expired it.
async fn keep_lease(
    connect: Connect,
    lease: Arc<AtomicI64>,
    stop: CancellationToken,
) -> (u64, Option<String>) {
    let mut renewals = 0;
    let mut member = 0;
    let mut last_renewed = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        let once = async {
            let mut c = connect.client(member).await?;
            if lease.load(Ordering::SeqCst) == 0 {
                let id = c.lease_grant(LEASE_TTL, None).await?.id();
                lease.store(id, Ordering::SeqCst);
                last_renewed = tokio::time::Instant::now();
            }
            let id = lease.load(Ordering::SeqCst);
            let (mut keeper, mut answers) = c.lease_keep_alive(id).await?;
            loop {
                keeper.keep_alive().await?;
                let answer = tokio::time::timeout(Duration::from_secs(2), answers.message())
                    .await
                    .map_err(|_| "no keep-alive answer")??
                    .ok_or("keep-alives ended")?;
                if answer.ttl() <= 0 {
                    return Ok(Some(format!(
                        "lease {id:x} expired {:.1}s after its last renewal",
                        last_renewed.elapsed().as_secs_f64()
                    )));
                }
                renewals += 1;
                last_renewed = tokio::time::Instant::now();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let lost: Result<Option<String>, WorkloadError> = tokio::select! {
            _ = stop.cancelled() => break,
            r = once => r,
        };
        if let Ok(Some(why)) = lost {
            // The clients stop binding puts to it; what it held is gone.
            lease.store(0, Ordering::SeqCst);
            return (renewals, Some(why));
        }
        member += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (renewals, None)
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
                all.connect_failures.extend(h.connect_failures);
                all.leased_writes += h.leased_writes;
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
    lease: &AtomicI64,
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
                    h.connect_failures.push(clock.tick());
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
        let pick = rng.below(20);
        let input = match pick {
            0..8 => Input::Put(value),
            8..15 => Input::Get,
            15..17 => Input::Delete,
            _ => Input::Cas {
                expect: seen[k].clone(),
                new: value,
            },
        };
        // Every other put is bound to the lease, once there is one.
        let leased = match lease.load(Ordering::SeqCst) {
            id if id != 0 && matches!(input, Input::Put(_)) && pick.is_multiple_of(2) => Some(id),
            _ => None,
        };
        let call = clock.tick();
        let answer = tokio::time::timeout(config.timeout, request(c, &key, &input, leased)).await;
        let (output, wrote_at) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(_)) | Err(_) => {
                // The member may be gone: try the next one.
                conn = None;
                member += 1;
                (Output::Unknown, None)
            }
        };
        let ret = (output != Output::Unknown).then(|| clock.tick());
        // What a write would leave in the key (`None`: a delete).
        let written = match &input {
            Input::Put(v) | Input::Cas { new: v, .. } => Some(Some(v.clone())),
            Input::Delete => Some(None),
            Input::Get => None,
        };
        match (written, &output, wrote_at) {
            (None, Output::Value(v), _) => seen[k].clone_from(v),
            (Some(value), Output::Unknown, _) => h.maybe.push(MaybeWrite {
                key: key.clone(),
                value,
            }),
            (Some(value), _, Some(revision)) => {
                seen[k].clone_from(&value);
                h.leased_writes += u64::from(leased.is_some());
                h.writes.push(Write {
                    key: key.clone(),
                    value,
                    revision,
                });
            }
            // A delete that found nothing: the key is absent, as this client now knows.
            (Some(None), Output::Done, None) => seen[k] = None,
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

/// Sends one request (a put bound to `lease` if given): its output and, if it changed the
/// store, the revision it was given (a delete of an absent key changes nothing).
async fn request(
    c: &mut Client,
    key: &str,
    input: &Input,
    lease: Option<i64>,
) -> Result<(Output, Option<i64>), etcd_client::Error> {
    let revision = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
    Ok(match input {
        Input::Put(v) => {
            let options = lease.map(|id| PutOptions::new().with_lease(id));
            let r = c.put(key, v.as_str(), options).await?;
            (Output::Done, Some(revision(r.header())))
        }
        Input::Delete => {
            let r = c.delete(key, None).await?;
            let wrote = (r.deleted() > 0).then(|| revision(r.header()));
            (Output::Done, wrote)
        }
        Input::Get => {
            let r = c.get(key, None).await?;
            let v = r
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
            (Output::Value(v), None)
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
            let wrote = r.succeeded().then(|| revision(r.header()));
            (Output::Swapped(r.succeeded()), wrote)
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
            Ok::<(), WorkloadError>(())
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
