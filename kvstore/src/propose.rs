//! Batched proposals on the leader: commands that arrive while earlier batches are being
//! replicated go into the log together, as one entry.
//!
//! openraft 0.9 makes each `client_write` its own entry and its own log append, so proposing
//! one entry per request cost one `fdatasync` per request (measured under 256 concurrent
//! clients: exactly as many flushes as entries on the leader, and writes capped near 3,000/s). Here at most [`MAX_IN_FLIGHT`] batches are in Raft at once; whatever
//! arrives meanwhile waits and is proposed as one [`Command::Batch`], so the batch grows with
//! the load and one flush and one replication round carry many requests. An idle cluster
//! proposes a lone command as itself, with no added latency.
//!
//! Commands of a batch are applied in order, each with its own revision, exactly as if they
//! had been proposed one by one in that order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::Error;
use crate::raft_types::{Command, Outcome, Raft, Reply};

/// Batches in Raft at once; more arriving commands wait and join the next batch.
pub const MAX_IN_FLIGHT: usize = 2;
/// Most commands in one batch.
const MAX_COMMANDS: usize = 1024;
/// A batch stops growing once its commands' encoded size passes this.
const MAX_BYTES: u64 = 4 * 1024 * 1024;

type Waiter = oneshot::Sender<Result<Reply, Error>>;

/// Handle to the batching task.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Command, Waiter)>,
}

impl Proposer {
    /// Starts the batching task for `raft`; each batch gets `timeout` to commit.
    pub fn spawn(raft: Raft, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, timeout));
        Self { tx }
    }

    /// Replicates `cmd` (on the leader) and returns what applying it produced.
    pub async fn propose(&self, cmd: Command) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((cmd, tx)).map_err(|_| Error::Unhealthy)?;
        rx.await.map_err(|_| Error::Unhealthy)?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Command, Waiter)>, timeout: Duration) {
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
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch, timeout).await;
            drop(slot);
        });
    }
}

/// Proposes the batch as one entry and answers every waiter.
async fn commit(raft: &Raft, mut batch: Vec<(Command, Waiter)>, timeout: Duration) {
    if batch.len() == 1 {
        let (cmd, waiter) = batch.pop().expect("one");
        let _ = waiter.send(write(raft, cmd, timeout).await);
        return;
    }
    let (cmds, waiters): (Vec<Command>, Vec<Waiter>) = batch.into_iter().unzip();
    match write(raft, Command::Batch(cmds), timeout).await {
        Ok(Reply {
            result: Ok(Outcome::Batch(replies)),
            ..
        }) if replies.len() == waiters.len() => {
            for (waiter, reply) in waiters.into_iter().zip(replies) {
                let _ = waiter.send(Ok(reply));
            }
        }
        Ok(other) => {
            tracing::error!(?other, "a batch was applied with an unexpected outcome");
            for waiter in waiters {
                let _ = waiter.send(Err(Error::Unhealthy));
            }
        }
        Err(e) => {
            for waiter in waiters {
                let _ = waiter.send(Err(e.clone()));
            }
        }
    }
}

async fn write(raft: &Raft, cmd: Command, timeout: Duration) -> Result<Reply, Error> {
    match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
        Err(_) => Err(Error::Timeout),
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(e)) => Err(crate::node::write_error(e)),
    }
}

fn encoded_size(cmd: &Command) -> u64 {
    bincode::serialized_size(cmd).unwrap_or(MAX_BYTES)
}
