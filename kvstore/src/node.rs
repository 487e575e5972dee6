//! A running member: its Raft instance and state, and the operations the etcd services need
//! that involve the leader (writes, linearizable reads, leases, membership).
//!
//! Any member accepts any request. What needs the leader runs locally when this member leads
//! and is otherwise forwarded over the peer port. A forwarded write is never retried after it
//! may have reached a leader's log (that could apply it twice); it is retried only when the
//! leader refused it before appending (it was not leader any more).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, ServerState};
use tokio::sync::watch;

use crate::auth::Authorizer;
use crate::error::Error;
use crate::lessor::Lessor;
use crate::log_store::LogStore;
use crate::membership::member_id;
use crate::network::Peers;
use crate::peer::{LeaseTtl, PeerRequest, PeerResponse};
use crate::propose::{Proposer, ToLeader, ToRaft, write_error};
use crate::raft_types::{Command, Member, NodeId, Raft, Reply};
use crate::read_index::ReadIndex;
use crate::session::WriteSession;
use crate::state_machine::Shared;

mod tasks;

/// etcd's response header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Stable id of the cluster.
    pub cluster_id: u64,
    /// This member.
    pub member_id: u64,
    /// Store revision the response reflects.
    pub revision: i64,
    /// Raft term this member is in.
    pub raft_term: u64,
}

/// A member as etcd's MemberList shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub id: NodeId,
    /// Its name; empty until it started and published it.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs; empty until it started and published them.
    pub client_urls: Vec<String>,
    /// A learner does not vote.
    pub is_learner: bool,
}

/// Settings of a running member that the operations need.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// `--name`.
    pub name: String,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
    /// `--initial-cluster-token`, salts the ids of added members.
    pub cluster_token: String,
    /// How long a request may wait for the leader.
    pub request_timeout: Duration,
    /// Shortest lease TTL granted, in seconds (etcd: 1.5 election timeouts, rounded up), so
    /// a lease cannot expire during a leader election.
    pub min_lease_ttl: i64,
    /// The storage quota and the bounds on leases and watchers.
    pub store_limits: crate::limits::StoreLimits,
    /// What each caller may do.
    pub auth: Authorizer,
}

/// A running member.
pub struct Node {
    /// This member's id.
    pub id: NodeId,
    /// Its Raft instance.
    pub raft: Raft,
    /// The applied state.
    pub shared: Arc<Shared>,
    /// The log, for sizes and flush counters.
    pub log: LogStore,
    /// Channels to the other members.
    peers: Peers,
    /// Lease deadlines while this member leads.
    lessor: Lessor,
    /// Leader-side ReadIndex batching.
    reads: ReadIndex,
    /// Batches writes into the log while this member leads.
    proposer: Proposer,
    /// Batches writes forwarded to the leader while this member follows.
    forwarder: Proposer,
    /// Numbers this member's writes once the cluster has write sessions on.
    session: WriteSession,
    /// The term this member leads in and since when, as it saw the change.
    leading_since: Arc<std::sync::Mutex<Option<(u64, Instant)>>>,
    /// Watch streams and watchers held per limited identity.
    usage: Arc<crate::per_identity::Usage>,
    /// When this member last heard from a leader (for pre-vote).
    pub contact: crate::prevote::Contact,
    settings: NodeSettings,
}

/// How long a lease request waits for this member's applies before it says so in the log (a
/// leader applies what it committed within microseconds; a new leader may take longer).
const CATCH_UP_QUIETLY: Duration = Duration::from_millis(100);

/// What auto-compaction keeps while the store holds more than half its quota: the revisions
/// of this last while.
pub const PRESSURE_WINDOW: Duration = Duration::from_secs(2);

/// Whether `bytes` (keys and values with their history) are past half of `quota`: sustained
/// churn, each write a new version, is then compacted at once instead of being kept for the
/// whole retention, so it meets the quota (and NOSPACE, which stops every writer) only if the
/// live data itself does. Watchers further behind than what is kept are canceled with
/// `compact_revision` and list again, as with etcd.
pub fn history_pressure(bytes: u64, quota: u64) -> bool {
    bytes > quota / 2
}

/// Keeps `since` at the term this member leads in and when it began to, `None` while it
/// follows. Watches openraft's server metrics, which change only with the role, leader, vote
/// or membership: the full `metrics()` are sent at every turn of Raft's loop, several times
/// per write, and each would wake this task.
async fn track_leadership(
    mut metrics: watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, Member>>,
    since: Arc<std::sync::Mutex<Option<(u64, Instant)>>>,
) {
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader, m.vote.leader_id().term)
        };
        {
            let mut since = since.lock().unwrap_or_else(|e| e.into_inner());
            match (*since, leading) {
                (Some((t, _)), true) if t == term => {}
                (_, true) => *since = Some((term, Instant::now())),
                (_, false) => *since = None,
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl Node {
    /// What each caller may do; the services check every request against it.
    pub fn auth(&self) -> &Authorizer {
        &self.settings.auth
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &format_args!("{:x}", self.id))
            .field("name", &self.settings.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Wraps a started Raft instance.
    pub fn new(
        id: NodeId,
        raft: Raft,
        shared: Arc<Shared>,
        log: LogStore,
        peers: Peers,
        session: WriteSession,
        settings: NodeSettings,
    ) -> Self {
        let reads = ReadIndex::spawn(raft.clone(), settings.request_timeout);
        let proposer = Proposer::new(ToRaft {
            raft: raft.clone(),
            timeout: settings.request_timeout,
        });
        let forwarder = Proposer::new(ToLeader {
            raft: raft.clone(),
            peers: peers.clone(),
            timeout: settings.request_timeout,
        });
        let leading_since = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(track_leadership(
            raft.server_metrics(),
            leading_since.clone(),
        ));
        Self {
            id,
            raft,
            shared,
            log,
            peers,
            lessor: Lessor::default(),
            reads,
            proposer,
            forwarder,
            session,
            leading_since,
            usage: Arc::default(),
            contact: crate::prevote::Contact::default(),
            settings,
        }
    }

    /// The header of a response that reflects `revision`.
    pub fn header(&self, revision: i64) -> Header {
        let m = self.raft.metrics();
        let m = m.borrow();
        Header {
            cluster_id: self.shared.read().cluster_id,
            member_id: self.id,
            revision,
            raft_term: m.current_term,
        }
    }

    /// The header with the current revision.
    pub fn current_header(&self) -> Header {
        let rev = self.shared.read().mvcc.revision();
        self.header(rev)
    }

    /// The storage quota and the bounds on leases and watchers.
    pub fn store_limits(&self) -> &crate::limits::StoreLimits {
        &self.settings.store_limits
    }

    /// Watch streams and watchers held per limited identity.
    pub fn usage(&self) -> &Arc<crate::per_identity::Usage> {
        &self.usage
    }

    /// Admits a write that would store `cost` more bytes ([`crate::mvcc::Mvcc::bytes`]), as
    /// etcd's quota does: refused with [`Error::NoSpace`] while the NOSPACE alarm is raised,
    /// and when it would pass the quota, which raises the alarm for the whole cluster.
    pub async fn admit(&self, cost: u64) -> Result<(), Error> {
        let (used, raised) = self.shared.usage();
        if raised {
            return Err(Error::NoSpace);
        }
        let quota = self.settings.store_limits.quota_bytes;
        if used.saturating_add(cost) > quota {
            tracing::warn!(used, cost, quota, "storage quota used up: raising NOSPACE");
            self.propose(Command::Alarm {
                activate: true,
                member: self.id,
                alarm: crate::state_machine::ALARM_NOSPACE,
            })
            .await?;
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// etcd's MoveLeader, on the leader: has `target` (a voter whose log is complete) stand
    /// for election and waits until it leads. openraft 0.9 has no leadership transfer; the
    /// target's higher term makes this member step down, and the target's complete log wins
    /// it the votes. Retried while the request timeout allows if another member won.
    ///
    /// openraft refuses votes while a leader's lease holds: a follower's is renewed by every
    /// heartbeat, a leader's own lasts one maximal election timeout from when it began to lead.
    /// So the target is asked only once this member has led that long: then this member's
    /// vote and the target's are a majority of three (in larger clusters the rest follow once
    /// their leases run out after this member stepped down).
    pub async fn move_leader(&self, target: NodeId) -> Result<(), Error> {
        let deadline = Instant::now() + self.settings.request_timeout * 2;
        if self.leading_term().is_none() {
            return Err(Error::NotLeader);
        }
        let voter = self.voters().contains(&target);
        if target == self.id || !voter {
            return Err(Error::BadLeaderTransferee);
        }
        let urls = self.peer_urls(target).ok_or(Error::BadLeaderTransferee)?;
        let mut metrics = self.raft.metrics();
        loop {
            // The target must hold every entry, or the others refuse it their votes.
            self.wait_out_own_lease(deadline).await;
            let last = self.raft.metrics().borrow().last_log_index;
            let caught_up = self
                .raft
                .metrics()
                .borrow()
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned())
                .flatten()
                .map(|l| l.index)
                >= last;
            if (caught_up || self.leading_term().is_none())
                && let Err(e) = self
                    .peers
                    .call(&urls, &PeerRequest::Campaign, self.settings.request_timeout)
                    .await
            {
                tracing::warn!(target, error = %e, "asking the transferee to campaign failed");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(self.settings.request_timeout / 5);
            let _ = tokio::time::timeout(wait, async {
                while metrics.changed().await.is_ok() {
                    if metrics.borrow().current_leader == Some(target) {
                        return;
                    }
                }
            })
            .await;
            if self.raft.metrics().borrow().current_leader == Some(target) {
                tracing::info!(target, "leadership moved");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::LeaderTransferTimeout);
            }
        }
    }

    /// Waits (up to `deadline`) until this member has led for longer than its own leader lease,
    /// so it grants a transferee its vote.
    async fn wait_out_own_lease(&self, deadline: Instant) {
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        let since = *self.leading_since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, since)) = since {
            // openraft's lease check is inclusive; a little more covers clock granularity.
            let after = since + lease + Duration::from_millis(20);
            tokio::time::sleep_until(after.min(deadline).into()).await;
        }
    }

    /// Before this member stops: if it leads, moves the leadership to the voter whose log is
    /// the most complete (so the cluster does not wait out an election timeout with writes
    /// stalled) and returns it; `Ok(None)` when it does not lead or is the only voter.
    pub async fn hand_off_leadership(&self) -> Result<Option<NodeId>, Error> {
        if self.leading_term().is_none() {
            return Ok(None);
        }
        let target = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let matched = |id: &NodeId| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .flatten()
                    .map(|l| l.index)
            };
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != self.id)
                .max_by_key(|v| (matched(v), std::cmp::Reverse(*v)))
        };
        let Some(target) = target else {
            return Ok(None);
        };
        self.move_leader(target).await?;
        Ok(Some(target))
    }

    /// Builds a snapshot of everything this member applied, so the log it covers is purged
    /// (etcd's defrag: the disk back); waits for it up to the request timeout.
    pub async fn compact_disk(&self) -> Result<(), Error> {
        let applied = self.raft.metrics().borrow().last_applied;
        if applied.is_none() || self.raft.metrics().borrow().snapshot >= applied {
            return Ok(());
        }
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|_| Error::Unhealthy)?;
        self.raft
            .wait(Some(self.settings.request_timeout * 6))
            .metrics(|m| m.snapshot >= applied, "snapshot for defragment")
            .await
            .map(|_| ())
            .map_err(|_| Error::Timeout)
    }

    /// Shortest lease TTL granted, in seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        self.settings.min_lease_ttl
    }

    /// The election timeout (`--election-timeout`): how long a follower waits for its
    /// leader before it stands for election.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    /// The leader this member knows, if any: itself while it leads and a majority of the
    /// voters acknowledged it within an election timeout (or it took over less than one ago;
    /// [`crate::prevote::Acks`]), else the one it follows while it has heard from it within an
    /// election timeout (past that, a follower stands for election or asks for pre-votes, and
    /// knows no leader — as etcd's pre-candidate).
    pub fn leader(&self) -> Option<NodeId> {
        let leader = self.raft.metrics().borrow().current_leader?;
        let e = self.election_timeout();
        let known = if leader == self.id {
            let since = *self.leading_since.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = |t: Instant| t.elapsed() < e;
            since.is_some_and(|(_, t)| fresh(t))
                || (self.peers.acks())
                    .quorum_at(self.id, &self.voters())
                    .is_some_and(|t| fresh(t.into_std()))
        } else {
            self.contact.silence() < e
        };
        known.then_some(leader)
    }

    /// This member's term while it leads, else `None`.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// Peer URLs of `id`, from the membership this member applied.
    pub(crate) fn peer_urls(&self, id: NodeId) -> Option<Vec<String>> {
        crate::propose::peer_urls(&self.raft, id)
    }

    /// The voters of the membership this member applied.
    pub(crate) fn voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The channels to the other members.
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The id of the last entry in this member's log.
    pub(crate) async fn last_log_id(&self) -> Result<Option<crate::prevote::LogId>, Error> {
        use openraft::storage::RaftLogStorage as _;
        let mut log = self.log.clone();
        let state = log.get_log_state().await.map_err(|_| Error::Unhealthy)?;
        Ok(state.last_log_id)
    }

    /// Whether to grant pre-vote `req` ([`crate::prevote`]).
    async fn grant_pre_vote(&self, req: &crate::prevote::PreVote) -> Result<bool, Error> {
        let last_log_id = self.last_log_id().await?;
        let (leading, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.vote.leader_id().term)
        };
        let granted = crate::prevote::grant(
            req,
            leading,
            self.contact.silence(),
            self.election_timeout(),
            term,
            last_log_id.as_ref(),
        );
        tracing::debug!(term = req.term, granted, "pre-vote asked");
        Ok(granted)
    }

    /// Runs `req` on the leader: here if this member leads, else forwarded. Retries while
    /// the leadership moves, up to the request timeout.
    async fn on_leader(&self, req: PeerRequest) -> Result<PeerResponse, Error> {
        let deadline = Instant::now() + self.settings.request_timeout;
        let mut metrics = self.raft.server_metrics();
        // Whether an attempt may have reached a log: failing at the deadline then is
        // "request timed out" (fate unknown), not "no leader".
        let mut maybe_appended = false;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            let outcome = match leader {
                Some(l) if l == self.id => self.serve_as_leader(req.clone()).await,
                Some(l) => match &req {
                    PeerRequest::Propose(cmd) => self
                        .forwarder
                        .propose(cmd.clone())
                        .await
                        .map(PeerResponse::Reply),
                    _ => self.forward(l, &req).await,
                },
                None => Err(Error::NoLeader),
            };
            match outcome {
                Err(e @ (Error::NotLeader | Error::NoLeader)) => {
                    maybe_appended |= e == Error::NotLeader;
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(if maybe_appended { Error::Timeout } else { e });
                    }
                    // Wait for the leadership to change, but poll too: the old leader may
                    // learn of its successor only from the next heartbeat.
                    let wait = left.min(Duration::from_millis(50));
                    let _ = tokio::time::timeout(wait, metrics.changed()).await;
                }
                other => return other,
            }
        }
    }

    async fn forward(&self, leader: NodeId, req: &PeerRequest) -> Result<PeerResponse, Error> {
        let urls = self.peer_urls(leader).ok_or(Error::NoLeader)?;
        match self
            .peers
            .call(&urls, req, self.settings.request_timeout)
            .await
        {
            Ok(answer) => answer,
            Err(e) if e.never_sent() => {
                tracing::debug!(leader, error = %e, "cannot reach the leader; waiting for one");
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(Error::NoLeader)
            }
            Err(e) => {
                tracing::debug!(leader, error = %e, "forward to leader failed");
                match req {
                    // A write may have reached the leader's log: do not send it again.
                    PeerRequest::Propose(_)
                    | PeerRequest::ProposeBatch(_)
                    | PeerRequest::AddMember { .. }
                    | PeerRequest::RemoveMember { .. } => Err(Error::Timeout),
                    // Everything else is safe to repeat once the leadership settles.
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(Error::NotLeader)
                    }
                }
            }
        }
    }

    /// Serves a call that arrived over the peer port.
    pub async fn serve_peer_call(&self, req: PeerRequest) -> Result<PeerResponse, Error> {
        match req {
            PeerRequest::Campaign => {
                tracing::info!("campaigning: the leader is moving its leadership here");
                self.raft
                    .trigger()
                    .elect()
                    .await
                    .map_err(|_| Error::Unhealthy)?;
                Ok(PeerResponse::Done)
            }
            PeerRequest::PreVote(req) => self.grant_pre_vote(&req).await.map(PeerResponse::PreVote),
            PeerRequest::Capabilities => Ok(PeerResponse::Capabilities(vec![
                crate::session::CAPABILITY.to_owned(),
            ])),
            PeerRequest::Members => Ok(PeerResponse::Members(
                self.raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(id, m)| (*id, m.clone()))
                    .collect(),
            )),
            other => self.serve_as_leader(other).await,
        }
    }

    async fn serve_as_leader(&self, req: PeerRequest) -> Result<PeerResponse, Error> {
        match req {
            PeerRequest::Propose(cmd) => self.proposer.propose(cmd).await.map(PeerResponse::Reply),
            PeerRequest::ProposeBatch(cmds) => {
                Ok(PeerResponse::Replies(self.proposer.propose_all(cmds).await))
            }
            PeerRequest::ReadIndex => self.reads.read_index().await.map(PeerResponse::ReadIndex),
            PeerRequest::LeaseKeepAlive { id } => {
                // A leader cut off from its peers believes it leads until it hears of a newer
                // term, while the others elect a leader whose lessor runs the lease's clock:
                // renewing here would tell the client its lease lives while the majority
                // expires it. So leadership is confirmed with a quorum first (a ReadIndex
                // round), and the lease renewed only in the term confirmed — etcd's
                // ensureLeadership before a renewal (etcd-io/etcd#15247). Found by the
                // chaos `lease` checker under isolate-member.
                let term = self.leading_term().ok_or(Error::NotLeader)?;
                self.lead_and_catch_up().await?;
                if self.leading_term() != Some(term) {
                    return Err(Error::NotLeader);
                }
                self.lessor
                    .keep_alive(term, &self.shared, id)
                    .map(PeerResponse::LeaseRenewed)
            }
            PeerRequest::LeaseTimeToLive { id } => {
                let term = self.leading_term().ok_or(Error::NotLeader)?;
                self.lead_and_catch_up().await?;
                if self.leading_term() != Some(term) {
                    return Err(Error::NotLeader);
                }
                Ok(PeerResponse::LeaseTtl(self.lessor.time_to_live(
                    term,
                    &self.shared,
                    id,
                )))
            }
            PeerRequest::AddMember { peer_urls, learner } => {
                self.add_member_as_leader(peer_urls, learner).await
            }
            PeerRequest::RemoveMember { id } => self.remove_member_as_leader(id).await,
            PeerRequest::Members
            | PeerRequest::Campaign
            | PeerRequest::PreVote(_)
            | PeerRequest::Capabilities => {
                unreachable!("served by serve_peer_call")
            }
        }
    }

    /// Confirms with a quorum that this member leads (a ReadIndex round) and waits until it has
    /// applied everything committed before. Leases are read from the applied state, and a member
    /// just elected may not yet have applied what its predecessor committed: a keep-alive for a
    /// lease granted just before the election would find no lease ("requested lease not
    /// found", seen once in the lab's isolated-leader test). etcd waits the same way before
    /// renewing a lease (`waitAppliedIndex` in `EtcdServer.LeaseRenew`).
    async fn lead_and_catch_up(&self) -> Result<(), Error> {
        let index = self.reads.read_index().await?;
        let quick = self.raft.wait(Some(CATCH_UP_QUIETLY));
        if quick
            .applied_index_at_least(Some(index), "lease request")
            .await
            .is_ok()
        {
            return Ok(());
        }
        tracing::info!(
            index,
            "a lease request waits until this member has applied what was committed before it"
        );
        let patient = self.raft.wait(Some(self.settings.request_timeout));
        patient
            .applied_index_at_least(Some(index), "lease request")
            .await
            .map(|_| ())
            .map_err(|_| Error::Timeout)
    }

    /// Replicates `cmd` and returns what applying it produced. Once the cluster has write
    /// sessions on, the write is numbered in this member's session, so that a copy sent again
    /// after a failure in transit is applied once ([`crate::session`]).
    pub async fn propose(&self, cmd: Command) -> Result<Reply, Error> {
        let (cmd, _outstanding) = if self.shared.sessions_enabled() {
            let (cmd, ticket) = self.session.number(cmd)?;
            (cmd, Some(ticket))
        } else {
            (cmd, None)
        };
        match self.on_leader(PeerRequest::Propose(cmd)).await? {
            PeerResponse::Reply(r) => Ok(r),
            other => unexpected(other),
        }
    }

    /// Waits until this member's state reflects every write acknowledged before the call
    /// (ReadIndex: the leader confirms it still leads; this member applies up to its index).
    pub async fn linearize(&self) -> Result<(), Error> {
        let index = match self.on_leader(PeerRequest::ReadIndex).await? {
            PeerResponse::ReadIndex(i) => i,
            other => return unexpected(other),
        };
        self.raft
            .wait(Some(self.settings.request_timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| Error::Timeout)
    }

    /// Renews a lease on the leader; returns its TTL.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, Error> {
        match self.on_leader(PeerRequest::LeaseKeepAlive { id }).await? {
            PeerResponse::LeaseRenewed(ttl) => Ok(ttl),
            other => unexpected(other),
        }
    }

    /// A lease's remaining TTL as the leader sees it.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<LeaseTtl>, Error> {
        match self.on_leader(PeerRequest::LeaseTimeToLive { id }).await? {
            PeerResponse::LeaseTtl(t) => Ok(t),
            other => unexpected(other),
        }
    }

    /// etcd MemberAdd; returns the new member's id.
    pub async fn add_member(&self, peer_urls: Vec<String>, learner: bool) -> Result<NodeId, Error> {
        match self
            .on_leader(PeerRequest::AddMember { peer_urls, learner })
            .await?
        {
            PeerResponse::MemberAdded(id) => Ok(id),
            other => unexpected(other),
        }
    }

    /// etcd MemberRemove.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        match self.on_leader(PeerRequest::RemoveMember { id }).await? {
            PeerResponse::MemberRemoved => Ok(()),
            other => unexpected(other),
        }
    }

    async fn add_member_as_leader(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<PeerResponse, Error> {
        let taken = self
            .members()
            .into_iter()
            .any(|m| m.peer_urls.iter().any(|u| peer_urls.contains(u)));
        if taken {
            return Err(Error::PeerUrlExists);
        }
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_be_bytes();
        let id = member_id(&peer_urls, &self.settings.cluster_token, &salt);
        let member = Member {
            name: String::new(),
            peer_urls,
        };
        self.raft
            .add_learner(id, member, false)
            .await
            .map_err(write_error)?;
        if !learner {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(write_error)?;
        }
        tracing::info!(id = format!("{id:x}"), learner, "member added");
        Ok(PeerResponse::MemberAdded(id))
    }

    async fn remove_member_as_leader(&self, id: NodeId) -> Result<PeerResponse, Error> {
        let (is_voter, exists) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().any(|v| v == id),
                membership.get_node(&id).is_some(),
            )
        };
        if !exists {
            return Err(Error::MemberNotFound);
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        tracing::info!(id = format!("{id:x}"), "member removed");
        Ok(PeerResponse::MemberRemoved)
    }

    /// The membership this member applied, with what each member published.
    pub fn members(&self) -> Vec<MemberInfo> {
        let data = self.shared.read();
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let published = data.published.get(id).cloned().unwrap_or_default();
                MemberInfo {
                    id: *id,
                    name: if published.name.is_empty() {
                        node.name.clone()
                    } else {
                        published.name
                    },
                    peer_urls: node.peer_urls.clone(),
                    client_urls: published.client_urls,
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// The members' ids and names, for logs.
    pub fn member_names(&self) -> BTreeMap<NodeId, String> {
        self.members().into_iter().map(|m| (m.id, m.name)).collect()
    }
}

fn unexpected<T>(resp: PeerResponse) -> Result<T, Error> {
    tracing::error!(?resp, "peer answered a different call");
    Err(Error::Unhealthy)
}
