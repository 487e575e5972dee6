//! A member's background loops: publishing its own attributes, switching write sessions on,
//! expiring leases while it leads, and compacting history by revision (auto-compaction).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Node, PRESSURE_WINDOW, history_pressure};
use crate::lessor;
use crate::peer::{PeerRequest, PeerResponse};
use crate::raft_types::{Command, NodeId};
use crate::session::CAPABILITY;
use crate::state_machine::Published;

/// How long a member may take to say what it can do.
const CAPABILITIES_TIMEOUT: Duration = Duration::from_secs(1);

impl Node {
    /// Publishes this member's name and client URLs until the state machine has them.
    pub async fn publish_until_done(&self, mut shutdown: watch::Receiver<bool>) {
        let want = Published {
            name: self.settings.name.clone(),
            client_urls: self.settings.client_urls.clone(),
        };
        loop {
            if self.shared.read().published.get(&self.id) == Some(&want) {
                tracing::info!(name = %want.name, "member attributes published");
                return;
            }
            let cmd = Command::PublishMember {
                id: self.id,
                name: want.name.clone(),
                client_urls: want.client_urls.clone(),
            };
            if let Err(e) = self.propose(cmd).await {
                tracing::debug!(error = %e, "publishing member attributes; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// While write sessions are off and this member leads, asks every other member what its
    /// version can do, and switches sessions on ([`Command::EnableWriteSessions`]) once every
    /// member can read a numbered write ([`crate::session`]). Ends when they are on.
    pub async fn enable_write_sessions(&self, mut shutdown: watch::Receiver<bool>) {
        let mut wait = Duration::ZERO;
        let mut reported: Vec<NodeId> = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if self.shared.sessions_enabled() {
                tracing::info!("write sessions are on");
                return;
            }
            wait = Duration::from_millis(200);
            if self.leading_term().is_none() {
                continue;
            }
            let missing = self.members_without_sessions().await;
            if !missing.is_empty() {
                if missing != reported {
                    tracing::info!(
                        members = ?missing.iter().map(|m| format!("{m:x}")).collect::<Vec<_>>(),
                        "write sessions stay off until these members run a version that has them"
                    );
                    reported = missing;
                }
                wait = Duration::from_secs(1);
                continue;
            }
            if let Err(e) = self.proposer.propose(Command::EnableWriteSessions).await {
                tracing::debug!(error = %e, "switching write sessions on; will retry");
            }
        }
    }

    /// The other members that did not answer that they have write sessions.
    async fn members_without_sessions(&self) -> Vec<NodeId> {
        let members: Vec<(NodeId, Vec<String>)> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| (*id, m.peer_urls.clone()))
            .collect();
        let asks = members.into_iter().map(|(id, urls)| async move {
            let answer = self
                .peers()
                .call(&urls, &PeerRequest::Capabilities, CAPABILITIES_TIMEOUT)
                .await;
            match answer {
                Ok(Ok(PeerResponse::Capabilities(c))) if c.iter().any(|c| c == CAPABILITY) => None,
                _ => Some(id),
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// While this member leads, revokes leases whose deadline passed.
    pub async fn expire_leases(&self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(lessor::CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Some(term) = self.leading_term() else {
                self.lessor.step_down();
                continue;
            };
            let expired = self.lessor.expired(term, &self.shared);
            if expired.is_empty() {
                continue;
            }
            // A leader cut off from its peers still believes it leads, and its clock runs out
            // on leases whose keep-alives its peers' new leader receives. So the expiry is
            // acted on only once a quorum confirms this member still leads in `term` (etcd's
            // ensureLeadership before revoking, etcd-io/etcd#15247), and the revoke is
            // proposed by this member's own leader-side proposer, never forwarded: a revoke
            // decided in a term this member has lost must not be carried to the next leader
            // (the forwarding retry of `propose` did exactly that when the isolated member
            // rejoined; found by the chaos `lease` checker under isolate-member).
            if self.reads.read_index().await.is_err() || self.leading_term() != Some(term) {
                continue;
            }
            for id in expired {
                tracing::info!(lease = id, "lease expired; revoking");
                if let Err(e) = self.proposer.propose(Command::LeaseRevoke { id }).await {
                    tracing::warn!(lease = id, error = %e, "revoking expired lease");
                }
            }
        }
    }

    /// While this member leads, compacts the history so that `retention` revisions are kept,
    /// or only those of the last [`PRESSURE_WINDOW`] while the store holds more than half its
    /// quota ([`history_pressure`]).
    pub async fn compact_by_revision(
        &self,
        retention: i64,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // The pressure is looked at every second (a read of two counters); the retention
        // every `every`.
        let mut tick = tokio::time::interval(every.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_regular = Instant::now();
        // The revision at each tick of the last window.
        let mut samples: std::collections::VecDeque<(Instant, i64)> = Default::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let (rev, compacted, bytes) = {
                let d = self.shared.read();
                (d.mvcc.revision(), d.mvcc.compacted(), d.mvcc.bytes())
            };
            let now = Instant::now();
            samples.push_back((now, rev));
            // The newest sample at least a window old stays at the front.
            while samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= PRESSURE_WINDOW)
            {
                samples.pop_front();
            }
            if self.leading_term().is_none() {
                continue;
            }
            let quota = self.settings.store_limits.quota_bytes;
            let pressure = history_pressure(bytes, quota);
            let regular = last_regular.elapsed() >= every;
            if !pressure && !regular {
                continue;
            }
            if regular {
                last_regular = now;
            }
            let mut target = rev - retention;
            if pressure
                && let Some(&(at, window_start)) = samples.front()
                && now.duration_since(at) >= PRESSURE_WINDOW
            {
                target = target.max(window_start);
            }
            if target <= compacted.max(1) {
                continue;
            }
            if pressure {
                tracing::warn!(
                    revision = target,
                    bytes,
                    quota,
                    "the store holds more than half its quota: compacting to what the last {PRESSURE_WINDOW:?} wrote"
                );
            } else {
                tracing::info!(revision = target, "auto-compaction");
            }
            if let Err(e) = self.propose(Command::Compact { revision: target }).await {
                tracing::warn!(revision = target, error = %e, "auto-compaction failed");
            }
        }
    }
}
