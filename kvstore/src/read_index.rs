//! Batched ReadIndex on the leader: one leadership confirmation serves every read that was
//! waiting when it started.
//!
//! A read may only ride on a confirmation that started after the read arrived (otherwise a
//! leader deposed in between could answer it), so reads that arrive while a round is in
//! flight wait for the next round. Under load this makes one heartbeat round serve
//! hundreds of reads, as etcd's batched ReadIndex does.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::raft_types::Raft;

type Waiter = oneshot::Sender<Result<u64, Error>>;

/// Handle to the batching task.
#[derive(Debug, Clone)]
pub struct ReadIndex {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReadIndex {
    /// Starts the batching task for `raft`.
    pub fn spawn(raft: Raft, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, timeout));
        Self { tx }
    }

    /// Confirms this member leads and returns the log index a read must wait for.
    pub async fn read_index(&self) -> Result<u64, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| Error::Unhealthy)?;
        rx.await.map_err(|_| Error::Unhealthy)?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Waiter>, timeout: Duration) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, usize::MAX).await > 0 {
        let result = match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
            Err(_) => Err(Error::Timeout),
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(Error::NotLeader)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(Error::Timeout)
            }
            Ok(Err(RaftError::Fatal(_))) => Err(Error::Unhealthy),
        };
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}
