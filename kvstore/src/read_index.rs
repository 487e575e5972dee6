//! Batched ReadIndex on the leader: one leadership confirmation serves every read that was
//! waiting when it started.
//!
//! A read may only ride on a confirmation that started after the read arrived (otherwise a
//! leader deposed in between could answer it), so reads that arrive while a round is in
//! flight wait for the next round. Under load this makes one heartbeat round serve
//! hundreds of reads, as etcd's batched ReadIndex does.

use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::raft_types::Raft;

type Waiter = oneshot::Sender<Result<u64, Error>>;

/// Pause between confirmation rounds that missed a quorum.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

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
        let result = confirm(&raft, timeout).await;
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

/// One leadership confirmation, retried while `timeout` allows: openraft gives each
/// confirming heartbeat only one heartbeat interval, so on a loaded machine a round can miss
/// its quorum while this member still leads. Each retry is a new round that starts after
/// every waiting read arrived, so it still proves leadership for all of them.
async fn confirm(raft: &Raft, timeout: Duration) -> Result<u64, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let round = tokio::time::timeout(left, raft.get_read_log_id()).await;
        match round {
            Err(_) => return Err(Error::Timeout),
            Ok(Ok((read_log_id, _))) => return Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                return Err(Error::NotLeader);
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                if Instant::now() + RETRY_PAUSE >= deadline {
                    return Err(Error::Timeout);
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(Err(RaftError::Fatal(_))) => return Err(Error::Unhealthy),
        }
    }
}
