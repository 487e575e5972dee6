//! Batched proposals: commands that arrive while earlier batches are in flight travel
//! together.
//!
//! On the leader ([`ToRaft`]), a batch goes into the log as one entry. openraft 0.9 makes each
//! `client_write` its own entry and its own log append, so proposing one entry per request
//! cost one `fdatasync` per request (measured under 256 concurrent clients: exactly as many
//! flushes as entries on the leader, and writes capped near 3,000/s).
//!
//! On a follower ([`ToLeader`]), a batch is forwarded to the leader as one peer call. One
//! call per write cost a gRPC request on both members for every write that landed on a
//! follower, two thirds of them with three members and clients spread evenly.
//!
//! At most [`MAX_IN_FLIGHT`] batches are out at once; whatever arrives meanwhile waits and
//! joins the next batch, so a batch grows with the load. A command that finds a slot free
//! goes alone, from its caller's task: a sequential writer's request is proposed by the task
//! that serves it, and openraft answers that task directly (a batching task between them cost
//! two task hand-offs per write, measured in `mesh-bench kv`'s sequential puts). The commands
//! of a batch are applied in order, each with its own revision, exactly as if they had been
//! proposed one by one in that order.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::network::Peers;
use crate::peer::{PeerRequest, PeerResponse};

use crate::raft_types::{Command, Member, NodeId, Outcome, Raft, Reply};

/// Batches out at once; more arriving commands wait and join the next batch.
pub const MAX_IN_FLIGHT: usize = 2;
/// Most commands in one batch.
const MAX_COMMANDS: usize = 1024;
/// A batch stops growing before its commands' encoded size passes this: a batch is one log
/// entry, and an entry travels to the followers within one AppendEntries that openraft 0.9
/// gives one heartbeat interval ([`crate::log_store::APPEND_BYTES`]). 4 MiB batches timed out
/// in that interval on a loaded 2-core machine while a mirror copied 255 remotes, and every
/// retry sent them again (`mesh-bench scale`).
const MAX_BYTES: u64 = crate::log_store::APPEND_BYTES as u64;

type Waiter = oneshot::Sender<Result<Reply, Error>>;

/// Where a batch goes: it answers every command, in order.
pub trait Sink: Send + Sync + 'static {
    /// Commits `cmds` and returns one result per command.
    fn commit(&self, cmds: Vec<Command>) -> impl Future<Output = Vec<Result<Reply, Error>>> + Send;
}

/// A [`Sink`] behind a pointer.
trait DynSink: Send + Sync + 'static {
    fn commit_boxed(&self, cmds: Vec<Command>) -> BoxFuture<'_, Vec<Result<Reply, Error>>>;
}

impl<S: Sink> DynSink for S {
    fn commit_boxed(&self, cmds: Vec<Command>) -> BoxFuture<'_, Vec<Result<Reply, Error>>> {
        Box::pin(self.commit(cmds))
    }
}

/// Batches commands for a [`Sink`]. Cheap to clone: clones share the batches.
///
/// A command that finds a free slot and nobody waiting is committed by its caller's own task
/// (an idle member adds no hand-off to a lone write); otherwise it waits, and the next slot
/// to free takes every waiting command as one batch, committed on a task of its own.
#[derive(Clone)]
pub struct Proposer {
    inner: Arc<Inner>,
}

struct Inner {
    sink: Box<dyn DynSink>,
    queue: Mutex<Queue>,
}

/// Batches out and commands waiting. Commands wait only while every slot is taken.
#[derive(Default)]
struct Queue {
    in_flight: usize,
    waiting: VecDeque<Waiting>,
}

/// A command waiting for a batch, with its encoded size (measured before the queue is locked)
/// and where its result goes.
struct Waiting {
    cmd: Command,
    bytes: u64,
    waiter: Waiter,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

/// A batch slot, given back (and the waiting commands sent on in it) when dropped, also when
/// its caller's call is cancelled.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.in_flight -= 1;
        self.0.launch(queue);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the waiting commands on as one batch if a slot is free.
    fn launch(self: &Arc<Self>, mut queue: MutexGuard<'_, Queue>) {
        if queue.waiting.is_empty() || queue.in_flight >= MAX_IN_FLIGHT {
            return;
        }
        let batch = take_batch(&mut queue.waiting);
        queue.in_flight += 1;
        drop(queue);
        let slot = Slot(self.clone());
        // Outside a runtime (it is shutting down) the waiters are dropped and fail.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let (cmds, waiters): (Vec<Command>, Vec<Waiter>) =
                batch.into_iter().map(|w| (w.cmd, w.waiter)).unzip();
            let results = commit(slot.0.sink.as_ref(), cmds).await;
            drop(slot);
            for (waiter, result) in waiters.into_iter().zip(results) {
                let _ = waiter.send(result);
            }
        });
    }
}

/// Commits `cmds` and returns exactly one result per command.
async fn commit(sink: &dyn DynSink, cmds: Vec<Command>) -> Vec<Result<Reply, Error>> {
    let n = cmds.len();
    let results = sink.commit_boxed(cmds).await;
    if results.len() != n {
        tracing::error!(
            commands = n,
            results = results.len(),
            "a batch was answered with the wrong number of results"
        );
        return vec![Err(Error::Unhealthy); n];
    }
    results
}

/// The first waiting commands, in order, up to [`MAX_COMMANDS`] and [`MAX_BYTES`] (at least
/// one).
fn take_batch(waiting: &mut VecDeque<Waiting>) -> Vec<Waiting> {
    let mut bytes = 0;
    let mut batch = Vec::new();
    while let Some(next) = waiting.front() {
        let full = batch.len() >= MAX_COMMANDS || bytes + next.bytes > MAX_BYTES;
        if !batch.is_empty() && full {
            break;
        }
        bytes += next.bytes;
        batch.push(waiting.pop_front().expect("looked at above"));
    }
    batch
}

impl Proposer {
    /// Batches commands for `sink`.
    pub fn new(sink: impl Sink) -> Self {
        Self {
            inner: Arc::new(Inner {
                sink: Box::new(sink),
                queue: Mutex::default(),
            }),
        }
    }

    /// Commits `cmd` and returns what applying it produced.
    pub async fn propose(&self, cmd: Command) -> Result<Reply, Error> {
        let bytes = encoded_size(&cmd);
        let waiting = {
            let mut queue = self.inner.lock();
            if queue.in_flight < MAX_IN_FLIGHT && queue.waiting.is_empty() {
                queue.in_flight += 1;
                Err(cmd)
            } else {
                let (waiter, rx) = oneshot::channel();
                queue.waiting.push_back(Waiting { cmd, bytes, waiter });
                Ok(rx)
            }
        };
        match waiting {
            Ok(rx) => rx.await.unwrap_or(Err(Error::Unhealthy)),
            Err(cmd) => {
                let slot = Slot(self.inner.clone());
                let result = commit(slot.0.sink.as_ref(), vec![cmd]).await.pop();
                result.expect("one result per command")
            }
        }
    }

    /// Commits `cmds` in their order (they may share batches with other commands) and
    /// returns one result per command.
    pub async fn propose_all(&self, cmds: Vec<Command>) -> Vec<Result<Reply, Error>> {
        let mut waiting = Vec::with_capacity(cmds.len());
        let mut queued = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (waiter, rx) = oneshot::channel();
            let bytes = encoded_size(&cmd);
            queued.push(Waiting { cmd, bytes, waiter });
            waiting.push(rx);
        }
        {
            let mut queue = self.inner.lock();
            queue.waiting.extend(queued);
            self.inner.launch(queue);
        }
        let mut results = Vec::with_capacity(waiting.len());
        for rx in waiting {
            results.push(rx.await.unwrap_or(Err(Error::Unhealthy)));
        }
        results
    }
}

fn encoded_size(cmd: &Command) -> u64 {
    bincode::serialized_size(cmd).unwrap_or(MAX_BYTES)
}

/// The leader's sink: a batch becomes one log entry.
pub struct ToRaft {
    /// This member's Raft.
    pub raft: Raft,
    /// How long a batch may take to commit.
    pub timeout: Duration,
}

impl std::fmt::Debug for ToRaft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToRaft").finish_non_exhaustive()
    }
}

impl Sink for ToRaft {
    async fn commit(&self, mut cmds: Vec<Command>) -> Vec<Result<Reply, Error>> {
        let n = cmds.len();
        if n == 1 {
            return vec![self.write(cmds.pop().expect("one")).await];
        }
        match self.write(Command::Batch(cmds)).await {
            Ok(Reply {
                result: Ok(Outcome::Batch(replies)),
                ..
            }) => replies.into_iter().map(Ok).collect(),
            Ok(other) => {
                tracing::error!(?other, "a batch was applied with an unexpected outcome");
                vec![Err(Error::Unhealthy); n]
            }
            Err(e) => vec![Err(e); n],
        }
    }
}

impl ToRaft {
    async fn write(&self, cmd: Command) -> Result<Reply, Error> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(cmd)).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => Err(write_error(e)),
        }
    }
}

/// A follower's sink: a batch is forwarded to the leader as one peer call.
///
/// When this member has no leader, or leads itself, or cannot connect to the leader, every
/// command fails with [`Error::NoLeader`] or [`Error::NotLeader`] and the caller retries until
/// its deadline. A call that fails in transit may have reached the leader's log: a numbered
/// command ([`Command::Once`]) then fails with [`Error::NotLeader`] too, and its caller sends it
/// again to whichever member leads next (the state machine applies it once); any other fails
/// with [`Error::Timeout`] and is never sent again.
pub struct ToLeader {
    /// This member's Raft, for the current leader and its address.
    pub raft: Raft,
    /// Channels to the other members.
    pub peers: Peers,
    /// How long a forwarded batch may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for ToLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToLeader").finish_non_exhaustive()
    }
}

impl Sink for ToLeader {
    async fn commit(&self, mut cmds: Vec<Command>) -> Vec<Result<Reply, Error>> {
        let n = cmds.len();
        let (me, current) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.id, m.current_leader)
        };
        let leader = current.filter(|l| *l != me);
        let Some((leader, urls)) =
            leader.and_then(|l| peer_urls(&self.raft, l).map(|urls| (l, urls)))
        else {
            let none = if current == Some(me) {
                Error::NotLeader
            } else {
                Error::NoLeader
            };
            return vec![Err(none); n];
        };
        let numbered: Vec<bool> = cmds
            .iter()
            .map(|c| matches!(c, Command::Once { .. }))
            .collect();
        let req = if n == 1 {
            PeerRequest::Propose(cmds.pop().expect("one"))
        } else {
            PeerRequest::ProposeBatch(cmds)
        };
        // On a kept-open call, a failure cannot tell a write the leader never read from one it
        // took; numbered writes are sent again after such a failure and applied once, others
        // go as unary calls, whose connect failures are known unsent.
        let answer = if numbered.iter().all(|once| *once) {
            self.peers.forward(&urls, &req, self.timeout).await
        } else {
            self.peers.call(&urls, &req, self.timeout).await
        };
        match answer {
            Ok(Ok(PeerResponse::Reply(reply))) if n == 1 => vec![Ok(reply)],
            Ok(Ok(PeerResponse::Replies(results))) if results.len() == n => results,
            Ok(Ok(other)) => {
                tracing::error!(?other, "the leader answered a forwarded batch unexpectedly");
                vec![Err(Error::Unhealthy); n]
            }
            // Refused whole before anything was appended (e.g. it no longer leads).
            Ok(Err(e)) => vec![Err(e); n],
            // The leader is gone (killed, restarting): the writes wait for the next one.
            Err(e) if e.never_sent() => {
                tracing::debug!(leader, error = %e, "cannot reach the leader; waiting for one");
                vec![Err(Error::NoLeader); n]
            }
            Err(e) => {
                tracing::info!(
                    leader,
                    error = %e,
                    writes = n,
                    "forwarding writes to the leader failed in transit; the numbered ones are \
                     sent again once a leader answers, the others fail as timed out"
                );
                numbered
                    .into_iter()
                    .map(|once| {
                        Err(if once {
                            Error::NotLeader
                        } else {
                            Error::Timeout
                        })
                    })
                    .collect()
            }
        }
    }
}

/// Peer URLs of member `id`, from the membership `raft` applied.
pub(crate) fn peer_urls(raft: &Raft, id: NodeId) -> Option<Vec<String>> {
    let m = raft.metrics();
    let m = m.borrow();
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.peer_urls.clone())
}

pub(crate) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Error::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => {
            tracing::warn!(error = %err, "membership change refused");
            Error::MembershipRejected
        }
        RaftError::Fatal(f) => {
            tracing::error!(error = %f, "raft stopped");
            Error::Unhealthy
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    /// A sink that records each batch's size and holds a batch until `release` has a permit
    /// for it, or for ever if it has a command for member 0.
    #[derive(Clone)]
    struct Held {
        batches: Arc<StdMutex<Vec<usize>>>,
        release: Arc<tokio::sync::Semaphore>,
    }

    impl Default for Held {
        fn default() -> Self {
            Self {
                batches: Arc::default(),
                release: Arc::new(tokio::sync::Semaphore::new(0)),
            }
        }
    }

    impl Sink for Held {
        async fn commit(&self, cmds: Vec<Command>) -> Vec<Result<Reply, Error>> {
            self.batches.lock().unwrap().push(cmds.len());
            if cmds.contains(&alarm(0)) {
                std::future::pending::<()>().await;
            }
            self.release.acquire().await.unwrap().forget();
            cmds.iter().map(|_| Err(Error::Timeout)).collect()
        }
    }

    fn alarm(member: NodeId) -> Command {
        Command::Alarm {
            activate: true,
            member,
            alarm: 1,
        }
    }

    /// Waits for `f`, failing the test instead of hanging if it never comes.
    async fn soon<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("never came")
    }

    async fn until(mut done: impl FnMut() -> bool) {
        soon(async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    /// Commands that arrive while every slot is out wait, and the first slot to free takes
    /// them all as one batch.
    #[tokio::test]
    async fn commands_arriving_while_every_slot_is_out_travel_as_one_batch() {
        let sink = Held::default();
        let proposer = Proposer::new(sink.clone());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..MAX_IN_FLIGHT {
            let p = proposer.clone();
            calls.spawn(async move { p.propose(alarm(1)).await });
        }
        until(|| sink.batches.lock().unwrap().len() == MAX_IN_FLIGHT).await;
        for _ in 0..5 {
            let p = proposer.clone();
            calls.spawn(async move { p.propose(alarm(1)).await });
        }
        until(|| proposer.inner.lock().waiting.len() == 5).await;
        sink.release.add_permits(MAX_IN_FLIGHT + 1);
        let mut answered = 0;
        while let Some(result) = soon(calls.join_next()).await {
            assert!(matches!(result.unwrap(), Err(Error::Timeout)));
            answered += 1;
        }
        assert_eq!(answered, MAX_IN_FLIGHT + 5);
        let batches = sink.batches.lock().unwrap().clone();
        assert_eq!(
            batches,
            [1, 1, 5],
            "two lone commands, then the five that waited"
        );
    }

    /// A caller that gives up (its request cancelled) gives its slot back: the commands
    /// waiting behind it go on.
    #[tokio::test]
    async fn a_cancelled_caller_gives_its_slot_back() {
        let sink = Held::default();
        let proposer = Proposer::new(sink.clone());
        let holders: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| {
                let p = proposer.clone();
                tokio::spawn(async move { p.propose(alarm(0)).await })
            })
            .collect();
        until(|| sink.batches.lock().unwrap().len() == MAX_IN_FLIGHT).await;
        let waiting = {
            let p = proposer.clone();
            tokio::spawn(async move { p.propose(alarm(1)).await })
        };
        until(|| !proposer.inner.lock().waiting.is_empty()).await;
        holders[0].abort();
        sink.release.add_permits(1);
        assert!(matches!(soon(waiting).await.unwrap(), Err(Error::Timeout)));
    }
}
