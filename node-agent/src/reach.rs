//! Reachability of remote nodes, judged by the network rather than by the store.
//!
//! A remote's records say which of its endpoints are ready, but they are its Kubernetes' view:
//! a node that dies keeps its endpoints ready for 40 s or more, and a partitioned cluster's
//! records stay as they were until its mirror is called stale. So every agent probes the nodes
//! of every remote cluster it has a WireGuard peer for, and a node that stops answering has its
//! backends demoted to the stale tier (a last resort, [`crate::desired`]) within about a
//! second; a cluster none of whose probed nodes answers has all its backends demoted.
//!
//! # Probes
//! A probe is one UDP datagram to the port the remote agent publishes in its node key record
//! (`probe_port`, `--reachability-port`), at the node's WireGuard endpoint address: the path
//! the tunnel's own packets take (same addresses, UDP), answered by the remote agent, so a dead
//! node, a dead agent and a cut link look alike. The payload is 12 bytes, `RMp1` and a nonce;
//! the answer is `RMa1` and the same nonce, sent back to where the probe came from (no
//! amplification: an answer is as long as its probe). The nonce is a per-process secret mixed
//! with the node's slot and a sequence number, so an answer counts only for the probe it
//! answers, from whatever address the remote's kernel sends it.
//!
//! WireGuard's own state cannot do this: a handshake is only retried after `REKEY_TIMEOUT`
//! (5 s) and only while traffic flows, and an idle peer's last handshake may be minutes old
//! (the WireGuard whitepaper, §6.1 and §6.5), with the kernel and with boringtun alike.
//!
//! # Judgement
//! Each node is probed every `--reachability-interval` (200 ms). A node that has answered no
//! probe for `--reachability-timeout` (800 ms) is unreachable; it is reachable again once it
//! has answered [`UP_AFTER`] consecutive probes (hysteresis: a flapping link does not move
//! connections back and forth at the probe rate). A node newly probed starts reachable, so an
//! agent that restarts does not demote every remote until they answer; one that never answers
//! is unreachable after the timeout.
//!
//! # Cost
//! Per remote node: 5 probes and 5 answers a second each way, 40 bytes of IPv4 and UDP
//! headers plus 12 of payload: about 260 B/s each way, and two `sendto` and two `recvfrom`
//! calls a second on each side. The probes of all remote nodes together are bounded by
//! `--reachability-max-rate` (2,000 a second, about 4 Mbit/s of headers): with more nodes than
//! that allows at the interval, each is probed less often and the timeout grows in proportion
//! ([`Settings::effective`]): 25,500 remote nodes (255 clusters of 100) are probed every
//! 12.75 s and judged unreachable after 51 s.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::metrics::{ClusterLabel, Outcome};
use crate::state::MeshState;
use crate::wg::peers::Peer;

/// A probe's first bytes.
pub const PROBE: [u8; 4] = *b"RMp1";
/// An answer's first bytes.
pub const ANSWER: [u8; 4] = *b"RMa1";
/// A probe's and an answer's length: the magic and a nonce.
pub const LEN: usize = 12;
/// Consecutive answered probes that make an unreachable node reachable again.
pub const UP_AFTER: u32 = 3;
/// Answers to probes older than this many of a node's latest are ignored.
const WINDOW: u32 = 16;

/// How probing is done (`--reachability-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Where this agent answers probes and sends its own from.
    pub port: u16,
    /// How often each remote node is probed.
    pub interval: Duration,
    /// Silence after which a node is unreachable.
    pub timeout: Duration,
    /// Probes a second, at most, over every remote node.
    pub max_rate: u32,
}

impl Settings {
    /// The interval and timeout for `nodes` probed nodes: the configured ones while the rate
    /// allows them, else the interval the rate allows and the timeout stretched in proportion.
    pub fn effective(&self, nodes: usize) -> (Duration, Duration) {
        let allowed = Duration::from_secs_f64(nodes as f64 / f64::from(self.max_rate.max(1)));
        if allowed <= self.interval {
            return (self.interval, self.timeout);
        }
        let stretch = allowed.as_secs_f64() / self.interval.as_secs_f64();
        (allowed, self.timeout.mul_f64(stretch))
    }
}

/// A remote node: cluster and name.
pub type NodeRef = (String, String);

/// Every remote node the records know, with where to probe it: `None` for one that is not
/// probed (no WireGuard peer, no endpoint, or an agent that publishes no probe port).
pub type Targets = BTreeMap<NodeRef, Option<SocketAddrV4>>;

/// The remote nodes of clusters other than `own`, the WireGuard peers (`peers`) among them
/// whose agents answer probes at their endpoint address and published probe port.
pub fn targets<'a>(
    state: &MeshState,
    own: &str,
    peers: impl IntoIterator<Item = &'a Peer>,
) -> Targets {
    let mut out: Targets = state
        .clusters
        .iter()
        .filter(|(c, _)| c.as_str() != own)
        .flat_map(|(c, cs)| cs.nodes.keys().map(|n| ((c.clone(), n.clone()), None)))
        .collect();
    for p in peers.into_iter().filter(|p| p.cluster != own) {
        let port = state
            .clusters
            .get(&p.cluster)
            .and_then(|c| c.nodekeys.get(&p.node))
            .and_then(|k| k.probe_port);
        if let (Some(endpoint), Some(port)) = (p.endpoint, port) {
            out.insert(
                (p.cluster.clone(), p.node.clone()),
                Some(SocketAddrV4::new(*endpoint.ip(), port)),
            );
        }
    }
    out
}

/// Remote nodes found unreachable, and clusters none of whose probed nodes is reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unreachable {
    /// Node names by cluster.
    pub nodes: BTreeMap<String, BTreeSet<String>>,
    /// Clusters whose every probed node is unreachable.
    pub clusters: BTreeSet<String>,
    /// The nodes probed (judged), by cluster: what the unreachable ones are out of.
    pub probed: BTreeMap<String, usize>,
}

impl Unreachable {
    /// Whether nothing is unreachable.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `other` finds other nodes or clusters unreachable (the number probed aside):
    /// what changes the backends' tiers.
    pub fn differs_in_judgement(&self, other: &Unreachable) -> bool {
        (&self.nodes, &self.clusters) != (&other.nodes, &other.clusters)
    }

    /// The record the agent publishes at `mesh/status/reach/<cluster>/<node>`.
    pub fn record(&self) -> mesh_api::reach::ReachRecord {
        mesh_api::reach::ReachRecord::new(&self.probed, &self.nodes)
    }

    /// The addresses of `cluster`'s unreachable nodes (every address of their node records):
    /// the endpoints on them are the pods the ipcache places at one of these, and host-network
    /// endpoints at one of these themselves.
    pub fn node_ips(&self, state: &MeshState, cluster: &str) -> BTreeSet<Ipv4Addr> {
        let (Some(down), Some(c)) = (self.nodes.get(cluster), state.clusters.get(cluster)) else {
            return BTreeSet::new();
        };
        down.iter()
            .filter_map(|n| c.nodes.get(n))
            .flat_map(|info| info.ips.iter().copied())
            .collect()
    }
}

/// What one probed node looks like.
#[derive(Debug, Clone)]
struct Probed {
    addr: SocketAddrV4,
    slot: u32,
    /// The last probe's sequence number (0: none sent yet).
    seq: u32,
    next_at: Instant,
    /// The last answer, or when probing began.
    heard: Instant,
    /// The highest sequence number answered.
    answered: u32,
    /// Consecutive probes answered, up to the last answered one.
    streak: u32,
    down: bool,
}

/// The probing state of every target, without sockets or clocks of its own (the caller
/// passes `now`), so the judgement is tested on its own.
#[derive(Debug)]
pub struct Tracker {
    settings: Settings,
    secret: u64,
    nodes: BTreeMap<NodeRef, Probed>,
    /// Nodes found unreachable that are no longer probed (their WireGuard peer went: their
    /// key expired, say) but that the records still have: still unreachable, until probed
    /// again and answering.
    lost: BTreeSet<NodeRef>,
    by_slot: BTreeMap<u32, NodeRef>,
    next_slot: u32,
    interval: Duration,
    timeout: Duration,
}

/// A judgement that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The node.
    pub node: NodeRef,
    /// Whether it is now unreachable.
    pub down: bool,
}

impl Tracker {
    /// No targets yet; `secret` keys the nonces.
    pub fn new(settings: Settings, secret: u64) -> Tracker {
        Tracker {
            settings,
            secret,
            nodes: BTreeMap::new(),
            lost: BTreeSet::new(),
            by_slot: BTreeMap::new(),
            next_slot: 1,
            interval: settings.interval,
            timeout: settings.timeout,
        }
    }

    /// The interval and timeout in force.
    pub fn timing(&self) -> (Duration, Duration) {
        (self.interval, self.timeout)
    }

    /// Probes the nodes of `targets` that have an address from now on: new nodes start
    /// reachable (heard from now), their first probes spread over one interval; a node whose
    /// address changed is probed afresh. A node no longer probed is forgotten — unless it was
    /// unreachable and the records still have it: then it stays unreachable, and must answer
    /// [`UP_AFTER`] probes in a row once it is probed again.
    pub fn set_targets(&mut self, targets: &Targets, now: Instant) {
        let before = self.lost.clone();
        let mut was_down = std::mem::take(&mut self.lost);
        self.nodes.retain(|node, p| {
            let same = targets.get(node).copied().flatten() == Some(p.addr);
            if !same && p.down {
                was_down.insert(node.clone());
            }
            same
        });
        self.by_slot.retain(|_, node| self.nodes.contains_key(node));
        let probed: Vec<(&NodeRef, SocketAddrV4)> = targets
            .iter()
            .filter_map(|(n, a)| Some((n, (*a)?)))
            .collect();
        (self.interval, self.timeout) = self.settings.effective(probed.len());
        let count = probed.len().max(1) as u32;
        for (i, (node, addr)) in probed.into_iter().enumerate() {
            if self.nodes.contains_key(node) {
                continue;
            }
            let down = was_down.remove(node);
            let slot = self.next_slot;
            self.next_slot = self.next_slot.wrapping_add(1).max(1);
            self.by_slot.insert(slot, node.clone());
            self.nodes.insert(
                node.clone(),
                Probed {
                    addr,
                    slot,
                    seq: 0,
                    next_at: now + self.interval * (i as u32 % count) / count,
                    heard: now,
                    answered: 0,
                    streak: 0,
                    down,
                },
            );
        }
        // What is left was unreachable and is not probed now: kept while the records know it.
        self.lost = was_down
            .into_iter()
            .filter(|n| targets.contains_key(n))
            .collect();
        for (cluster, node) in self.lost.difference(&before) {
            tracing::info!(
                remote = %cluster,
                node = %node,
                "remote node no longer probed (no tunnel to it): still a last resort until it answers again"
            );
        }
    }

    /// The probes due at `now`, with their destinations.
    pub fn due(&mut self, now: Instant) -> Vec<(SocketAddrV4, [u8; LEN])> {
        let mut out = Vec::new();
        let (secret, interval) = (self.secret, self.interval);
        for p in self.nodes.values_mut() {
            if p.next_at > now {
                continue;
            }
            p.seq = p.seq.wrapping_add(1).max(1);
            // A late timer does not send a burst: the next probe is an interval from now.
            p.next_at = (p.next_at + interval).max(now + interval / 2);
            let nonce = nonce(secret, p.slot, p.seq);
            let mut packet = [0u8; LEN];
            packet[..4].copy_from_slice(&PROBE);
            packet[4..].copy_from_slice(&nonce.to_be_bytes());
            out.push((p.addr, packet));
        }
        out
    }

    /// Counts an answer received at `now`; false when it answers no recent probe of ours.
    pub fn answer(&mut self, packet: &[u8], now: Instant) -> bool {
        let Some(nonce) = parse(packet, ANSWER) else {
            return false;
        };
        let mixed = nonce ^ self.secret;
        let (slot, seq) = ((mixed >> 32) as u32, mixed as u32);
        let Some(node) = self.by_slot.get(&slot) else {
            return false;
        };
        let Some(p) = self.nodes.get_mut(node) else {
            return false;
        };
        if seq == 0 || seq > p.seq || p.seq - seq >= WINDOW || seq <= p.answered {
            return false;
        }
        p.streak = if seq == p.answered + 1 {
            p.streak + 1
        } else {
            1
        };
        p.answered = seq;
        p.heard = now;
        true
    }

    /// Judges every node at `now`; returns the judgements that changed.
    pub fn evaluate(&mut self, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        for (node, p) in &mut self.nodes {
            if !p.down && now.saturating_duration_since(p.heard) > self.timeout {
                p.down = true;
                p.streak = 0;
                out.push(Transition {
                    node: node.clone(),
                    down: true,
                });
            } else if p.down && p.streak >= UP_AFTER {
                p.down = false;
                out.push(Transition {
                    node: node.clone(),
                    down: false,
                });
            }
        }
        out
    }

    /// Every judged node (probed, or lost while unreachable) and whether it is unreachable.
    fn judged(&self) -> impl Iterator<Item = (&NodeRef, bool)> {
        self.nodes
            .iter()
            .map(|(n, p)| (n, p.down))
            .chain(self.lost.iter().map(|n| (n, true)))
    }

    /// The nodes and clusters unreachable now.
    pub fn unreachable(&self) -> Unreachable {
        let mut out = Unreachable::default();
        for ((cluster, node), down) in self.judged() {
            if down {
                out.nodes
                    .entry(cluster.clone())
                    .or_default()
                    .insert(node.clone());
            }
        }
        for (cluster, (all, down)) in self.counts() {
            if all == down {
                out.clusters.insert(cluster.clone());
            }
            out.probed.insert(cluster, all);
        }
        out
    }

    /// Judged and unreachable nodes by cluster.
    pub fn counts(&self) -> BTreeMap<String, (usize, usize)> {
        let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for ((cluster, _), down) in self.judged() {
            let c = out.entry(cluster.clone()).or_default();
            c.0 += 1;
            c.1 += usize::from(down);
        }
        out
    }
}

/// The nonce of probe `seq` to the node in `slot`: the per-process secret mixed with both, so
/// an answer names the probe it answers and no one else can make one up.
fn nonce(secret: u64, slot: u32, seq: u32) -> u64 {
    secret ^ ((u64::from(slot) << 32) | u64::from(seq))
}

/// The nonce of a packet that starts with `magic` and has the length of one.
fn parse(packet: &[u8], magic: [u8; 4]) -> Option<u64> {
    if packet.len() != LEN || packet[..4] != magic {
        return None;
    }
    Some(u64::from_be_bytes(packet[4..].try_into().ok()?))
}

/// The answer to `packet` if it is a probe.
pub fn answer_to(packet: &[u8]) -> Option<[u8; LEN]> {
    let nonce = parse(packet, PROBE)?;
    let mut out = [0u8; LEN];
    out[..4].copy_from_slice(&ANSWER);
    out[4..].copy_from_slice(&nonce.to_be_bytes());
    Some(out)
}

/// The prober's metrics.
#[derive(Debug, Clone, Default)]
pub struct ReachMetrics {
    sent: Counter,
    send_errors: Counter,
    answers: Counter,
    served: Counter,
    probed: Family<ClusterLabel, Gauge>,
    unreachable: Family<ClusterLabel, Gauge>,
    transitions: Family<Outcome, Counter>,
}

impl ReachMetrics {
    /// Registers them in the agent's registry.
    pub fn register(registry: &mut Registry) -> ReachMetrics {
        let m = ReachMetrics::default();
        registry.register(
            "reachability_probes_sent",
            "Reachability probes sent to remote nodes",
            m.sent.clone(),
        );
        registry.register(
            "reachability_send_errors",
            "Reachability probes the kernel refused to send (no route, say): counted as unanswered",
            m.send_errors.clone(),
        );
        registry.register(
            "reachability_answers",
            "Answers received to this agent's reachability probes",
            m.answers.clone(),
        );
        registry.register(
            "reachability_probes_served",
            "Reachability probes of other agents this agent answered",
            m.served.clone(),
        );
        registry.register(
            "remote_nodes_probed",
            "Remote nodes this agent judges (probed, or unreachable when last probed), by cluster",
            m.probed.clone(),
        );
        registry.register(
            "remote_nodes_unreachable",
            "Remote nodes that answer no probe (their backends are a last resort), by cluster",
            m.unreachable.clone(),
        );
        registry.register(
            "remote_node_reachability_changes",
            "Remote nodes found unreachable or reachable again (result)",
            m.transitions.clone(),
        );
        for result in ["unreachable", "reachable"] {
            let _ = m.transitions.get_or_create(&Outcome {
                result: result.to_owned(),
            });
        }
        m
    }
}

/// The running prober: give it targets, read what is unreachable.
#[derive(Debug)]
pub struct Prober {
    targets: watch::Sender<Targets>,
    unreachable: watch::Receiver<Unreachable>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    /// Binds `0.0.0.0:<port>` (every address of the node: probes come to the one the node
    /// publishes as its WireGuard endpoint) and starts answering and probing.
    pub async fn start(settings: Settings, metrics: ReachMetrics) -> std::io::Result<Prober> {
        let socket =
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, settings.port)).await?;
        let secret = RandomState::new().build_hasher().finish();
        let (targets_tx, targets_rx) = watch::channel(Targets::new());
        let (unreachable_tx, unreachable_rx) = watch::channel(Unreachable::default());
        let tracker = Tracker::new(settings, secret);
        let task = tokio::spawn(run(socket, tracker, targets_rx, unreachable_tx, metrics));
        Ok(Prober {
            targets: targets_tx,
            unreachable: unreachable_rx,
            task,
        })
    }

    /// Probes `targets` from now on.
    pub fn set_targets(&self, targets: Targets) {
        self.targets.send_if_modified(|t| {
            let changed = *t != targets;
            *t = targets;
            changed
        });
    }

    /// Waits for the judgement to change and returns it.
    pub async fn changed(&mut self) -> Unreachable {
        if self.unreachable.changed().await.is_err() {
            // The task ended (it does not, but if it did nothing is unreachable any more).
            std::future::pending::<()>().await;
        }
        self.unreachable.borrow_and_update().clone()
    }

    /// The judgement now.
    pub fn unreachable(&self) -> Unreachable {
        self.unreachable.borrow().clone()
    }
}

/// The probing loop: answers probes, sends due ones, judges every tick.
async fn run(
    socket: UdpSocket,
    mut tracker: Tracker,
    mut targets: watch::Receiver<Targets>,
    unreachable: watch::Sender<Unreachable>,
    metrics: ReachMetrics,
) {
    let mut buf = [0u8; 64];
    // Judged four times per interval: the timeout is met to within a quarter interval.
    let mut tick = tokio::time::interval(tracker.timing().0 / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let packet = &buf[..n];
                if let Some(answer) = answer_to(packet) {
                    if socket.send_to(&answer, from).await.is_ok() {
                        metrics.served.inc();
                    }
                } else if tracker.answer(packet, std::time::Instant::now()) {
                    metrics.answers.inc();
                }
            }
            r = targets.changed() => {
                if r.is_err() {
                    return; // the prober was dropped
                }
                let t = targets.borrow_and_update().clone();
                tracker.set_targets(&t, Instant::now());
                let interval = tracker.timing().0 / 4;
                if interval != tick.period() {
                    tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                publish(&tracker, &unreachable, &metrics);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for (addr, packet) in tracker.due(now) {
                    match socket.send_to(&packet, SocketAddr::V4(addr)).await {
                        Ok(_) => metrics.sent.inc(),
                        Err(_) => metrics.send_errors.inc(),
                    };
                }
                let changed = tracker.evaluate(now);
                for t in &changed {
                    tracing::info!(
                        remote = %t.node.0,
                        node = %t.node.1,
                        "remote node {}",
                        if t.down {
                            "answers no probe: its backends are now a last resort"
                        } else {
                            "answers probes again: its backends are used again"
                        }
                    );
                    let result = if t.down { "unreachable" } else { "reachable" };
                    metrics
                        .transitions
                        .get_or_create(&Outcome { result: result.to_owned() })
                        .inc();
                }
                if !changed.is_empty() {
                    publish(&tracker, &unreachable, &metrics);
                }
            }
        }
    }
}

/// Sends the judgement on (when it changed) and sets the gauges.
fn publish(tracker: &Tracker, unreachable: &watch::Sender<Unreachable>, metrics: &ReachMetrics) {
    let now = tracker.unreachable();
    unreachable.send_if_modified(|u| {
        let changed = *u != now;
        *u = now;
        changed
    });
    metrics.probed.clear();
    metrics.unreachable.clear();
    for (cluster, (probed, down)) in tracker.counts() {
        let label = ClusterLabel { cluster };
        metrics.probed.get_or_create(&label).set(probed as i64);
        metrics.unreachable.get_or_create(&label).set(down as i64);
    }
}

#[cfg(test)]
mod tests;
