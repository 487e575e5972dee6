//! etcd's Watch service.
//!
//! Watchers pull: each watcher remembers the next revision it owes its client, and whenever
//! a write touches a range the stream watches (the [`crate::watch_hub`] wakes only those
//! streams), the stream reads the events of the revisions in between from the MVCC history. So events come in revision order, each exactly once, with no gap, all
//! events of one revision in one message; and a slow client only falls behind in the
//! history (until compaction passes it, when it is canceled with `compact_revision`, as
//! etcd does) instead of growing a queue in memory.
//!
//! A message's `header.revision` is the revision up to which that watcher has been sent
//! everything, never further, so a client may resume from it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{
    PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchServer, PbWatchService,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, requires_leader, status};
use crate::auth::Caller;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::per_identity::StreamGuard;
use crate::request::{Event, EventKind, KeyRange};

/// `WatchCreateRequest.FilterType.NOPUT`.
const FILTER_NOPUT: i32 = 0;
/// `WatchCreateRequest.FilterType.NODELETE`.
const FILTER_NODELETE: i32 = 1;
/// Why a create past `--max-watchers-per-stream` is canceled.
const TOO_MANY_WATCHERS: &str = "etcdserver: too many watchers on this stream";
/// Why a create past `--max-watchers-per-identity` is canceled.
const TOO_MANY_IDENTITY_WATCHERS: &str = "etcdserver: too many watchers for this identity";
/// Why a stream past `--max-watch-streams-per-identity` fails.
const TOO_MANY_STREAMS: &str = "etcdserver: too many watch streams for this identity";
/// Most events in one message (a revision is never split; a large one may exceed this).
const MAX_EVENTS_PER_MESSAGE: usize = 1000;
/// Most key and value bytes in one message, likewise: a far-behind watcher of large revisions
/// (a mirror's Txns carry up to 1 MiB each) must not get them in one message larger than its
/// client accepts (gRPC's default is 4 MiB; the agents were refused a 10 MB catch-up).
const MAX_BYTES_PER_MESSAGE: usize = 1 << 20;

/// The Watch service of one member.
#[derive(Debug, Clone)]
pub struct Watch {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    progress_interval: Duration,
}

impl Watch {
    /// Serves watches on `node`'s key space; watchers that asked for progress notifications
    /// get one every `progress_interval` while idle.
    pub fn new(
        node: Arc<Node>,
        metrics: Arc<Metrics>,
        progress_interval: Duration,
    ) -> PbWatchServer<Self> {
        PbWatchServer::new(Self {
            node,
            metrics,
            progress_interval,
        })
        .max_decoding_message_size(super::MAX_DECODE_BYTES)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbWatchService for Watch {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        if requires_leader(&req) && self.node.leader().is_none() {
            return Err(status(Error::NoLeader));
        }
        let caller = self.node.auth().caller(req.extensions());
        let limits = self.node.store_limits().per_identity;
        let guard = match self.node.auth().limited(&caller) {
            None => None,
            Some(identity) => match self
                .node
                .usage()
                .open_stream(&identity, limits.watch_streams)
            {
                Some(g) => Some(g),
                None => {
                    tracing::warn!(%identity, limit = limits.watch_streams, "watch stream refused: the identity holds --max-watch-streams-per-identity");
                    return Err(Status::resource_exhausted(TOO_MANY_STREAMS));
                }
            },
        };
        let requires_leader = requires_leader(&req);
        let (tx, rx) = mpsc::channel(64);
        let session = Session {
            requires_leader,
            caller,
            guard,
            registration: self.node.shared.hub.register(),
            node: self.node.clone(),
            metrics: self.metrics.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(session.run(req.into_inner(), self.progress_interval));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watcher of a stream.
#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    /// The next revision this watcher owes its client.
    next: i64,
    /// The revision when its range was registered with the hub: later revisions that
    /// concern it raise the stream's `last_relevant`.
    registered_at: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

/// One client stream and its watchers.
struct Session {
    /// The client asked for `hasleader` (clientv3's `WithRequireLeader`, etcdctl watch): the
    /// stream ends with `ErrNoLeader` once this member has lost its leader
    /// ([`super::leader_lost`]).
    requires_leader: bool,
    /// Who opened the stream; every watch it creates is checked against it.
    caller: Caller,
    /// What the stream holds of a limited identity's bounds (none for trusted callers).
    guard: Option<StreamGuard>,
    /// The ranges this stream watches, so that only writes to them wake it.
    registration: crate::watch_hub::Registration,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    /// Next id the server picks (ids are per stream, as in etcd).
    next_id: i64,
}

/// Why a session ended: the client went away, or the stream must close.
struct Closed;

impl Session {
    async fn run(mut self, mut requests: Streaming<PbWatchRequest>, progress_interval: Duration) {
        let interest = self.registration.interest.clone();
        let mut progress = tokio::time::interval(progress_interval);
        progress.reset();
        // A client that closes its send side still gets events, as from etcd, until it
        // cancels (it cannot any more) or goes away.
        let mut half_closed = false;
        let node = self.node.clone();
        let lost = super::leader_lost(&node, self.requires_leader);
        tokio::pin!(lost);
        loop {
            let step = tokio::select! {
                () = &mut lost => {
                    let _ = self.tx.send(Err(status(Error::NoLeader))).await;
                    Err(Closed)
                }
                req = requests.next(), if !half_closed => match req {
                    Some(Ok(req)) => self.handle(req).await,
                    None => {
                        half_closed = true;
                        Ok(())
                    }
                    // The stream broke: the client is gone.
                    Some(Err(_)) => Err(Closed),
                },
                () = interest.changed() => self.catch_up().await,
                _ = progress.tick() => self.notify_progress().await,
                () = self.tx.closed() => Err(Closed),
            };
            if step.is_err() {
                break;
            }
        }
        self.metrics.watchers_removed(self.watchers.len());
    }

    async fn send(&self, resp: PbWatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(resp)).await.map_err(|_| Closed)
    }

    fn response(&self, watch_id: i64, revision: i64) -> PbWatchResponse {
        PbWatchResponse {
            header: convert::header(self.node.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, req: PbWatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                let current = self.node.shared.read().mvcc.revision();
                let id = if c.watch_id != 0 {
                    c.watch_id
                } else {
                    while self.watchers.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    self.next_id
                };
                if let Err(e) = self.node.auth().read(&self.caller, &c.key, &c.range_end) {
                    // As etcd: a canceled create with the request's own id and the gRPC
                    // error's full text as the reason.
                    let mut resp = self.response(c.watch_id, current);
                    resp.created = true;
                    resp.canceled = true;
                    resp.cancel_reason = format!("rpc error: code = PermissionDenied desc = {e}");
                    return self.send(resp).await;
                }
                if self.watchers.len() >= self.node.store_limits().max_watchers_per_stream {
                    let mut resp = self.response(id, current);
                    resp.created = true;
                    resp.canceled = true;
                    resp.cancel_reason = TOO_MANY_WATCHERS.to_owned();
                    return self.send(resp).await;
                }
                let identity_limit = self.node.store_limits().per_identity.watchers;
                let duplicate = self.watchers.contains_key(&id) || c.key.is_empty();
                if !duplicate
                    && let Some(guard) = &mut self.guard
                    && !guard.add_watcher(identity_limit)
                {
                    let mut resp = self.response(id, current);
                    resp.created = true;
                    resp.canceled = true;
                    resp.cancel_reason = TOO_MANY_IDENTITY_WATCHERS.to_owned();
                    return self.send(resp).await;
                }
                if duplicate {
                    // etcd answers a duplicate id (or a create without a key) with a
                    // canceled create.
                    let mut resp = self.response(id, current);
                    resp.created = true;
                    resp.canceled = true;
                    resp.cancel_reason = if c.key.is_empty() {
                        Error::EmptyKey.to_string()
                    } else {
                        "etcdserver: duplicate watch id".to_owned()
                    };
                    return self.send(resp).await;
                }
                // Registered first, then the revision read: every later write to the range
                // is seen by the hub.
                let range = KeyRange::new(c.key, c.range_end);
                self.registration.interest.add(id, range.clone());
                let current = self.node.shared.read().mvcc.revision();
                let watcher = Watcher {
                    range,
                    next: if c.start_revision > 0 {
                        c.start_revision
                    } else {
                        current + 1
                    },
                    registered_at: current,
                    prev_kv: c.prev_kv,
                    no_put: c.filters.contains(&FILTER_NOPUT),
                    no_delete: c.filters.contains(&FILTER_NODELETE),
                    progress_notify: c.progress_notify,
                };
                self.watchers.insert(id, watcher);
                self.metrics.watchers_added(1);
                let mut resp = self.response(id, current);
                resp.created = true;
                self.send(resp).await?;
                self.catch_up().await
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.registration.interest.remove(c.watch_id);
                    if let Some(g) = &mut self.guard {
                        g.remove_watcher();
                    }
                    self.metrics.watchers_removed(1);
                    let current = self.node.shared.read().mvcc.revision();
                    let mut resp = self.response(c.watch_id, current);
                    resp.canceled = true;
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // Every watcher is brought up to date first, so the progress revision never
                // overtakes an event still owed.
                let synced_to = self.catch_up_to_current().await?;
                self.send(self.response(-1, synced_to)).await
            }
            None => Ok(()),
        }
    }

    async fn catch_up(&mut self) -> Result<(), Closed> {
        self.catch_up_to_current().await.map(|_| ())
    }

    /// Sends every watcher the events it is owed up to the current revision; returns the
    /// revision everything was sent up to.
    ///
    /// The store is read one watcher's step at a time (at most [`MAX_EVENTS_PER_MESSAGE`]
    /// revisions) and never while sending, so many far-behind watchers do not hold off the
    /// member's reads and writes; a watcher served later in a pass reads the revisions that
    /// landed meanwhile.
    async fn catch_up_to_current(&mut self) -> Result<i64, Closed> {
        loop {
            let target = self.node.shared.read().mvcc.revision();
            let behind: Vec<i64> = self
                .watchers
                .iter()
                .filter(|(_, w)| w.next <= target)
                .map(|(id, _)| *id)
                .collect();
            if behind.is_empty() {
                return Ok(target);
            }
            for id in behind {
                self.step(id).await?;
            }
        }
    }

    /// Sends watcher `id` its next message, or cancels it if compaction passed it.
    async fn step(&mut self, id: i64) -> Result<(), Closed> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        let (current, compacted, events, to) = {
            let data = self.node.shared.read();
            let current = data.mvcc.revision();
            let compacted = data.mvcc.compacted();
            if w.next > current {
                return Ok(());
            }
            // Read under the lock: no revision up to `current` since the watcher registered
            // and past `last_relevant` touched its range, so it is owed nothing.
            let last_relevant = self.registration.interest.last_relevant();
            if w.next > w.registered_at && w.next > last_relevant {
                // (A watcher asked to start in the future keeps its start.)
                w.next = w.next.max(current + 1);
                return Ok(());
            }
            if w.next < compacted {
                (current, Some(compacted), Vec::new(), current)
            } else {
                let to = revision_limit(w.next, current);
                let events = data
                    .mvcc
                    .events(&w.range, w.next, to, w.prev_kv)
                    .expect("watcher position checked against the compacted revision");
                let (events, to) = within_one_message(events, to);
                (current, None, events, to)
            }
        };
        if let Some(compacted) = compacted {
            self.watchers.remove(&id);
            self.registration.interest.remove(id);
            if let Some(g) = &mut self.guard {
                g.remove_watcher();
            }
            self.metrics.watchers_removed(1);
            let mut resp = self.response(id, current);
            resp.canceled = true;
            resp.compact_revision = compacted;
            resp.cancel_reason = Error::Compacted.to_string();
            return self.send(resp).await;
        }
        w.next = to + 1;
        let events: Vec<_> = events
            .into_iter()
            .filter(|e| match e.kind {
                EventKind::Put => !w.no_put,
                EventKind::Delete => !w.no_delete,
            })
            .map(convert::event)
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        self.metrics.events_sent(events.len());
        let mut resp = self.response(id, to);
        resp.events = events;
        self.send(resp).await
    }

    async fn notify_progress(&mut self) -> Result<(), Closed> {
        let synced_to = self.catch_up_to_current().await?;
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(self.response(id, synced_to)).await?;
        }
        Ok(())
    }
}

/// The first whole revisions of `events` (revisions up to `to`, in order) that fit in one
/// message — at most [`MAX_EVENTS_PER_MESSAGE`] events and [`MAX_BYTES_PER_MESSAGE`] bytes,
/// but always the first revision whole — and the last revision the message covers.
fn within_one_message(mut events: Vec<Event>, to: i64) -> (Vec<Event>, i64) {
    let size = |e: &Event| {
        e.kv.key.len() + e.kv.value.len() + e.prev_kv.as_ref().map_or(0, |p| p.value.len())
    };
    let (mut count, mut bytes, mut start) = (0usize, 0usize, 0usize);
    while start < events.len() {
        let revision = events[start].kv.mod_revision;
        let end = events[start..]
            .iter()
            .position(|e| e.kv.mod_revision != revision)
            .map_or(events.len(), |k| start + k);
        let n = end - start;
        let b: usize = events[start..end].iter().map(size).sum();
        if start > 0 && (count + n > MAX_EVENTS_PER_MESSAGE || bytes + b > MAX_BYTES_PER_MESSAGE) {
            // The next message starts at the first revision left out.
            events.truncate(start);
            return (events, revision - 1);
        }
        (count, bytes, start) = (count + n, bytes + b, end);
    }
    (events, to)
}

/// The last revision of a catch-up step starting at `from`: up to `current`, but bounded so a
/// far-behind watcher gets its history in messages of about [`MAX_EVENTS_PER_MESSAGE`].
fn revision_limit(from: i64, current: i64) -> i64 {
    let span = i64::try_from(MAX_EVENTS_PER_MESSAGE).unwrap_or(i64::MAX);
    current.min(from.saturating_add(span - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::KeyValue;

    fn event(revision: i64, bytes: usize) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: bytes::Bytes::from(format!("k{revision}")),
                mod_revision: revision,
                value: bytes::Bytes::from(vec![0u8; bytes]),
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    #[test]
    fn a_message_holds_whole_revisions_up_to_its_byte_and_event_bounds() {
        // Revisions 10..=29, two 200 KiB events each: five revisions fit in 1 MiB (with keys,
        // a sixth would not); the next message starts at the sixth.
        let events: Vec<Event> = (10..30)
            .flat_map(|r| [event(r, 100 << 10), event(r, 100 << 10)])
            .collect();
        let (first, to) = within_one_message(events, 40);
        assert_eq!(first.len(), 10);
        assert_eq!(first.last().unwrap().kv.mod_revision, 14);
        assert_eq!(to, 14);
        // Everything fits: the step's own limit stands.
        let (all, to) = within_one_message(vec![event(3, 10), event(7, 10)], 9);
        assert_eq!((all.len(), to), (2, 9));
        // One revision larger than the bound goes whole, alone.
        let big = vec![event(5, 3 << 20), event(6, 10)];
        let (one, to) = within_one_message(big, 6);
        assert_eq!((one.len(), to), (1, 5));
        // The event bound: 1,500 one-event revisions go 1,000 at a time.
        let many: Vec<Event> = (1..=1_500).map(|r| event(r, 1)).collect();
        let (first, to) = within_one_message(many, 1_500);
        assert_eq!((first.len(), to), (MAX_EVENTS_PER_MESSAGE, 1_000));
    }
}
