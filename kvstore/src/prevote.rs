//! Pre-vote (Ongaro's thesis, §9.6; etcd's `--pre-vote`, on by default since 3.5): a member
//! stands for election only once a majority of the voters agree they have not heard from a
//! leader either, and that its log is at least as complete as theirs.
//!
//! Without it, a member cut off from its peers (a partitioned node, a long GC pause) times out
//! again and again, each time raising its term; when it can reach them again, the healthy
//! leader sees that higher term in the member's answers to its AppendEntries and steps down —
//! one needless election, with writes stalled for its length, every time a member rejoins.
//! openraft 0.9 has no pre-vote, so its own election timer is off (`enable_elect: false`) and
//! [`drive`] replaces it:
//!
//! - every member notes when it last heard from a leader ([`Contact::heard`]: an
//!   AppendEntries, heartbeats included, that openraft accepted);
//! - a voter that has not heard from one for a random time in [`e`, 2`e`) (`e` is
//!   `--election-timeout`) asks every other voter for a pre-vote ([`PreVote`]) and, with a
//!   majority counting itself, starts the real election (`Trigger::elect`);
//! - a member grants a pre-vote ([`grant`]) only if it is not the leader, has not heard from a
//!   leader for `e` itself, the candidate's next term is above its own and the candidate's last
//!   log id is at least its own — what its real vote would need, without changing its vote.
//!
//! A pre-vote changes no state, so it cannot elect two leaders: the real election that
//! follows is openraft's, with its own checks (its leader lease, the log comparison, the
//! persisted vote). A leader moving its leadership (`Campaign`) skips the pre-vote, as etcd's
//! `MsgTimeoutNow` does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::raft_types::NodeId;

/// A log id of this store's Raft.
pub type LogId = openraft::LogId<NodeId>;

/// A pre-vote request: the term the candidate would stand in and its last log id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVote {
    /// The candidate's current term plus one.
    pub term: u64,
    /// The candidate's last log id.
    pub last_log_id: Option<LogId>,
}

/// When this member last heard from a leader.
#[derive(Debug)]
pub struct Contact(Mutex<Instant>);

impl Default for Contact {
    /// As if just heard: a member that starts waits a full election timeout before it
    /// grants or asks for a pre-vote, as a member that just heard from a leader would.
    fn default() -> Self {
        Contact(Mutex::new(Instant::now()))
    }
}

impl Contact {
    /// A leader was heard from now.
    pub fn heard(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// How long since a leader was heard from.
    pub fn silence(&self) -> Duration {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }
}

/// When each peer last acknowledged this member as its leader (answered an AppendEntries,
/// heartbeats included, without a higher vote). A leader that has not heard from a majority
/// within an election timeout may have been replaced by one the others elected, so it reports
/// no leader ([`Node::leader`]) — what etcd's CheckQuorum, on by default, does by stepping down.
/// Without it, a leader cut off from its peers while clients still reach it answered status
/// calls as the leader, and a client picking "a member that knows a leader" stuck to it.
#[derive(Debug, Clone, Default)]
pub struct Acks(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Acks {
    /// `peer` acknowledged this member's leadership now.
    pub fn acked(&self, peer: NodeId) {
        let mut acks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        acks.insert(peer, Instant::now());
    }

    /// When a majority of `voters` (this member, `own`, counting itself) last acknowledged it.
    pub fn quorum_at(&self, own: NodeId, voters: &[NodeId]) -> Option<Instant> {
        let acks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        quorum_at(own, voters, &acks, Instant::now())
    }
}

/// The latest time by which a majority of `voters` had acknowledged `own`: `own` counts as of
/// `now`, the others as of their last acknowledgement in `acks`; `None` if no majority ever did.
pub fn quorum_at(
    own: NodeId,
    voters: &[NodeId],
    acks: &HashMap<NodeId, Instant>,
    now: Instant,
) -> Option<Instant> {
    let mut times: Vec<Instant> = voters
        .iter()
        .filter_map(|v| {
            if *v == own {
                Some(now)
            } else {
                acks.get(v).copied()
            }
        })
        .collect();
    let majority = voters.len() / 2 + 1;
    times.sort_unstable_by(|a, b| b.cmp(a));
    times.get(majority - 1).copied()
}

/// What a member's state says about a pre-vote: whether to grant `req`, given its role, its
/// silence (time since it heard from a leader), its election timeout, its current term and
/// its last log id.
pub fn grant(
    req: &PreVote,
    leading: bool,
    silence: Duration,
    election_timeout: Duration,
    term: u64,
    last_log_id: Option<&LogId>,
) -> bool {
    !leading
        && silence >= election_timeout
        && req.term > term
        && req.last_log_id.as_ref() >= last_log_id
}

/// A random election timeout in [`e`, 2`e`), from the clock's low bits and the member id (no
/// generator needed: members only need different draws).
fn randomized(e: Duration, id: NodeId, round: u64) -> Duration {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = seed ^ id.rotate_left(17) ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64's finalizer: every bit of the input moves the output.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let millis = e.as_millis().max(1) as u64;
    e + Duration::from_millis(x % millis)
}

/// Runs this member's elections until `stop` resolves: see the module docs.
pub async fn drive(node: Arc<Node>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let e = node.election_timeout();
    let tick = (e / 10).max(Duration::from_millis(10));
    let mut round = 0u64;
    let mut timeout = randomized(e, node.id, round);
    // A failed pre-vote is not tried again before another full timeout.
    let mut not_before = Instant::now();
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(tick) => {}
        }
        let (leading, term) = {
            let m = node.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.vote.leader_id().term)
        };
        let voter = node.voters().contains(&node.id);
        if leading || !voter || node.contact.silence() < timeout || Instant::now() < not_before {
            continue;
        }
        let Ok(last_log_id) = node.last_log_id().await else {
            continue;
        };
        round += 1;
        let req = PreVote {
            term: term + 1,
            last_log_id,
        };
        let (granted, voters) = ask(&node, req).await;
        if granted * 2 > voters {
            tracing::info!(
                term = req.term,
                granted,
                voters,
                silence = ?node.contact.silence(),
                "pre-vote won: standing for election"
            );
            if let Err(e) = node.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start the election");
            }
        } else {
            tracing::debug!(
                term = req.term,
                granted,
                voters,
                "pre-vote lost: a leader is alive or the others cannot be reached"
            );
        }
        timeout = randomized(e, node.id, round);
        not_before = Instant::now() + timeout;
    }
}

/// Asks every other voter for a pre-vote, in parallel, each within one election timeout;
/// returns (grants counting this member's own, voters) as soon as a majority granted or every
/// voter answered — a voter that cannot be reached (the one cut off, often the old leader)
/// must not hold the election back by its timeout.
async fn ask(node: &Node, req: PreVote) -> (usize, usize) {
    use futures::StreamExt as _;
    let voters = node.voters();
    let timeout = node.election_timeout();
    let mut asks: futures::stream::FuturesUnordered<_> = voters
        .iter()
        .filter(|v| **v != node.id)
        .map(|v| {
            let urls = node.peer_urls(*v);
            async move {
                let Some(urls) = urls else { return false };
                matches!(
                    node.peers()
                        .call(&urls, &PeerRequest::PreVote(req), timeout)
                        .await,
                    Ok(Ok(PeerResponse::PreVote(true)))
                )
            }
        })
        .collect();
    let mut granted = 1;
    while granted * 2 <= voters.len() {
        match asks.next().await {
            Some(true) => granted += 1,
            Some(false) => {}
            None => break,
        }
    }
    (granted, voters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_leader_counts_a_majority_with_itself() {
        let now = Instant::now();
        let ago = |ms| now - Duration::from_millis(ms);
        let acks: HashMap<NodeId, Instant> = [(2, ago(100)), (3, ago(5_000))].into();
        // Three voters: itself and the more recent of the other two.
        assert_eq!(quorum_at(1, &[1, 2, 3], &acks, now), Some(ago(100)));
        // Five voters: itself and both others it heard from; the fourth and fifth never.
        assert_eq!(quorum_at(1, &[1, 2, 3, 4, 5], &acks, now), Some(ago(5_000)));
        assert_eq!(quorum_at(1, &[1, 2, 3, 4, 5, 6, 7], &acks, now), None);
        // Alone it is its own majority.
        assert_eq!(quorum_at(1, &[1], &HashMap::new(), now), Some(now));
        // Nobody answered yet.
        assert_eq!(quorum_at(1, &[1, 2, 3], &HashMap::new(), now), None);
    }

    #[test]
    fn a_pre_vote_is_granted_only_to_a_complete_log_when_no_leader_is_heard() {
        let e = Duration::from_secs(1);
        let req = PreVote {
            term: 6,
            last_log_id: log(5, 100),
        };
        let silent = Duration::from_millis(1_500);
        assert!(grant(&req, false, silent, e, 5, log(5, 100).as_ref()));
        assert!(grant(&req, false, silent, e, 5, log(4, 200).as_ref()));
        // A leader, or a member that heard from one within the election timeout: no.
        assert!(!grant(&req, true, silent, e, 5, log(5, 100).as_ref()));
        assert!(!grant(
            &req,
            false,
            Duration::from_millis(999),
            e,
            5,
            log(5, 100).as_ref()
        ));
        // A candidate behind: an older last term, or a shorter log in the same term.
        assert!(!grant(&req, false, silent, e, 5, log(6, 1).as_ref()));
        assert!(!grant(&req, false, silent, e, 5, log(5, 101).as_ref()));
        // A term not above this member's.
        assert!(!grant(&req, false, silent, e, 6, log(5, 100).as_ref()));
        // An empty log is behind everything but another empty log.
        let fresh = PreVote {
            term: 1,
            last_log_id: None,
        };
        assert!(grant(&fresh, false, silent, e, 0, None));
        assert!(!grant(&fresh, false, silent, e, 0, log(1, 1).as_ref()));
    }

    #[test]
    fn election_timeouts_are_spread_over_one_to_two_timeouts() {
        let e = Duration::from_millis(1_000);
        let draws: Vec<Duration> = (0..200).map(|r| randomized(e, 7, r)).collect();
        assert!(draws.iter().all(|d| *d >= e && *d < 2 * e), "{draws:?}");
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "{} distinct", distinct.len());
    }
}
