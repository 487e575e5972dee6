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
//! joins the next batch, so a batch grows with the load. An idle member sends a lone command
//! as itself, with no added latency. The commands of a batch are applied in order, each with
//! its own revision, exactly as if they had been proposed one by one in that order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

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

/// Handle to a batching task.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Command, Waiter)>,
}

impl Proposer {
    /// Starts a batching task that hands its batches to `sink`.
    pub fn spawn(sink: impl Sink) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(sink), rx));
        Self { tx }
    }

    /// Commits `cmd` and returns what applying it produced.
    pub async fn propose(&self, cmd: Command) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((cmd, tx)).map_err(|_| Error::Unhealthy)?;
        rx.await.map_err(|_| Error::Unhealthy)?
    }

    /// Commits `cmds` in their order (they may share batches with other commands) and
    /// returns one result per command.
    pub async fn propose_all(&self, cmds: Vec<Command>) -> Vec<Result<Reply, Error>> {
        let waiting: Vec<_> = cmds
            .into_iter()
            .map(|cmd| {
                let (tx, rx) = oneshot::channel();
                self.tx.send((cmd, tx)).map(|()| rx)
            })
            .collect();
        let mut results = Vec::with_capacity(waiting.len());
        for rx in waiting {
            results.push(match rx {
                Ok(rx) => rx.await.unwrap_or(Err(Error::Unhealthy)),
                Err(_) => Err(Error::Unhealthy),
            });
        }
        results
    }
}

async fn run<S: Sink>(sink: Arc<S>, mut rx: mpsc::UnboundedReceiver<(Command, Waiter)>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match rx.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // Wait for a slot before draining, so everything that arrives meanwhile joins.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut bytes = encoded_size(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            let size = encoded_size(&next.0);
            if bytes + size > MAX_BYTES {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        let sink = sink.clone();
        tokio::spawn(async move {
            let (cmds, waiters): (Vec<Command>, Vec<Waiter>) = batch.into_iter().unzip();
            let n = cmds.len();
            let mut results = sink.commit(cmds).await;
            if results.len() != n {
                tracing::error!(
                    commands = n,
                    results = results.len(),
                    "a batch was answered with the wrong number of results"
                );
                results = vec![Err(Error::Unhealthy); n];
            }
            for (waiter, result) in waiters.into_iter().zip(results) {
                let _ = waiter.send(result);
            }
            drop(slot);
        });
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
/// its deadline. A call that fails in transit fails every command with [`Error::Timeout`]: it
/// may have reached the leader's log, so it is never sent again.
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
        let req = if n == 1 {
            PeerRequest::Propose(cmds.pop().expect("one"))
        } else {
            PeerRequest::ProposeBatch(cmds)
        };
        match self.peers.forward(&urls, &req, self.timeout).await {
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
                tracing::debug!(leader, error = %e, "forwarding writes to the leader failed");
                vec![Err(Error::Timeout); n]
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
