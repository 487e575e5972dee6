//! The WireGuard mesh: a tunnel from this node to every node of every other cluster, keyed by
//! the public keys the agents publish (ARCHITECTURE.md, "WireGuard").
//!
//! - [`key`]: the node's key pair, made once in the state directory (0600).
//! - [`peers`]: records → desired peers (pure), and the diff to what the interface holds.
//! - [`device`]: the interface through wireguard-control (kernel or userspace backend).
//! - [`route`]: link state and routes of the peers' CIDRs, over rtnetlink.
//! - [`rule`]: `ip rule to <peer CIDR> lookup main`, ahead of per-ENI rules.
//! - [`masq`]: the masquerade exemption for pod traffic into the tunnel (nftables).
//! - [`publish`]: the node key record, under a lease the agent keeps alive.
//!
//! [`Wg`] ties them together for the agent: it reconciles the interface when records change
//! and, once a second, reads the peers' counters for the metrics, for `node-agent wg`, and to
//! notice an interface that lost its configuration (a userspace daemon that died).

pub mod device;
pub mod key;
pub mod masq;
pub mod peers;
pub mod publish;
pub mod route;
pub mod rule;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::Local;
use crate::metrics::{Metrics, PeerLabel, Transfer};
use crate::state::MeshState;
use device::Interface;
use key::KeyPair;
use peers::{Cidr, PeerTable, Plan, PublicKey};

/// The file in the state directory where the agent records its peers' names and counter
/// ages for `node-agent wg`.
pub const STATUS_FILE: &str = "wireguard-peers.json";

/// The WireGuard settings.
#[derive(Debug, Clone)]
pub struct WgConfig {
    /// The interface.
    pub interface: Interface,
    /// The listen port.
    pub port: u16,
    /// Reachability probing of the peers' nodes, unless `--reachability-port 0`.
    pub probe: Option<crate::reach::Settings>,
    /// The interface's MTU.
    pub mtu: u32,
    /// Peers with this cluster's other nodes too.
    pub intra_cluster: bool,
    /// The nft program for the masquerade exemption, or `None` without one.
    pub masq: Option<PathBuf>,
    /// The priority of the `to <peer CIDR> lookup main` rules.
    pub rule_priority: u32,
    /// With `auto`: the kernel's answer when it refused a WireGuard interface (userspace is
    /// used instead).
    pub kernel_refused: Option<String>,
}

/// What `node-agent wg` shows of a peer besides what the interface says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNote {
    /// The peer's cluster.
    pub cluster: String,
    /// The peer's node.
    pub node: String,
    /// When its transfer counters last changed (Unix ms), if they have since the agent started.
    pub changed_at_ms: Option<i64>,
    /// Whether its node answers this agent's reachability probes; `None` when it is not
    /// probed (probing off, or its agent publishes no probe port).
    #[serde(default)]
    pub reachable: Option<bool>,
}

/// Counters seen at the last tick.
#[derive(Debug, Clone, Copy)]
struct Seen {
    rx: u64,
    tx: u64,
    changed_at_ms: Option<i64>,
    /// When this agent began watching the peer.
    since_ms: i64,
}

/// The WireGuard side of the agent.
#[derive(Debug)]
pub struct Wg {
    config: WgConfig,
    key: KeyPair,
    table: PeerTable,
    /// Routes we hold (CIDR → source).
    routes: BTreeSet<(Cidr, Option<Ipv4Addr>)>,
    /// The masquerade exemption's nft, unless disabled.
    nft: Option<masq::Nft>,
    /// The exemption last written, or read back intact.
    exemption: Option<masq::Exemption>,
    /// What is wrong with the tunnel's plumbing now, by part (`wireguard`: the interface and
    /// its routes and rules; `rules`: the tick's check of the rules; `masquerade`: the
    /// exemption), for `/healthz`; a part's entry goes when its next attempt works.
    pub problems: BTreeMap<&'static str, String>,
    seen: BTreeMap<PublicKey, Seen>,
    status_file: PathBuf,
    /// What the status file holds.
    status_written: String,
    /// A configuration failed: reconcile everything at the next tick.
    pub retry: bool,
    /// The key conflicts last logged (each set is logged once).
    conflicts: Vec<peers::Conflict>,
    /// The store has been listed: the records are a view to reconcile against (before,
    /// an empty state would remove every adopted peer).
    pub listed: bool,
}

/// A failure setting up or configuring WireGuard.
pub type Error = device::Error;

impl Wg {
    /// Sets up the interface with the node's key (made on first start) and adopts its peers.
    pub fn start(config: WgConfig, key: KeyPair, state_dir: &Path) -> Result<Wg, Error> {
        // An external daemon may still be starting beside the agent: give it a while.
        let created = config.interface.ensure(
            &key,
            config.port,
            config.mtu,
            std::time::Duration::from_secs(30),
        )?;
        let table = if created {
            PeerTable::default()
        } else {
            PeerTable::adopt(
                config
                    .interface
                    .read()?
                    .into_iter()
                    .map(|(k, s)| (k, s.applied))
                    .collect(),
            )
        };
        let routes = index_of(&config.interface)
            .and_then(|i| route::list(i).ok())
            .unwrap_or_default();
        if let Some(refused) = &config.kernel_refused {
            tracing::warn!(
                interface = config.interface.name(),
                kernel = %refused,
                "the kernel refused a WireGuard interface: using userspace ({})",
                config
                    .interface
                    .userspace_program()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        tracing::info!(
            interface = config.interface.name(),
            backend = config.interface.backend_name(),
            port = config.port,
            mtu = config.mtu,
            public_key = %key.public.to_base64(),
            created,
            adopted_peers = table.applied().len(),
            "WireGuard interface ready"
        );
        Ok(Wg {
            nft: config.masq.as_deref().map(masq::Nft::new),
            config,
            key,
            table,
            routes,
            exemption: None,
            problems: BTreeMap::new(),
            seen: BTreeMap::new(),
            status_file: state_dir.join(STATUS_FILE),
            status_written: String::new(),
            retry: false,
            conflicts: Vec::new(),
            listed: false,
        })
    }

    /// The node's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key.public.0
    }

    /// The listen port.
    pub fn port(&self) -> u16 {
        self.config.port
    }

    /// The backend in use (`kernel` or `userspace`).
    pub fn backend(&self) -> &'static str {
        self.config.interface.backend_name()
    }

    /// Makes the interface's peers and routes match the records, and returns the peers it
    /// should have. A failure is logged and counted, and retried at the next tick; it never
    /// stops the agent.
    pub fn reconcile(
        &mut self,
        state: &MeshState,
        local: &Local,
        metrics: &Metrics,
    ) -> BTreeMap<peers::PublicKey, peers::Peer> {
        let (desired, conflicts) =
            peers::desired(state, local, self.public_key(), self.config.intra_cluster);
        metrics.wg_key_conflicts.set(conflicts.len() as i64);
        if conflicts != self.conflicts {
            for c in &conflicts {
                tracing::warn!(
                    claimant = format!("{}/{}", c.claimant.0, c.claimant.1),
                    holder = format!("{}/{}", c.holder.0, c.holder.1),
                    "a node publishes the WireGuard key another node published first: refused"
                );
            }
            self.conflicts = conflicts;
        }
        let plan = self.table.plan(&desired, state);
        match self.apply(&plan, state, local) {
            Ok(()) => {
                self.problems.remove("wireguard");
            }
            Err(e) => {
                tracing::error!("configuring WireGuard: {e}; retrying at the next tick");
                metrics.wg_errors.inc();
                self.problems.insert("wireguard", format!("WireGuard: {e}"));
                self.retry = true;
            }
        }
        metrics.wg_peers.set(self.table.applied().len() as i64);
        self.sync_exemption(state, local, metrics, false);
        desired
    }

    /// Makes the masquerade exemption cover this node's pods to every peer's CIDRs. With
    /// `verify`, reads the table back first (someone may have flushed it) and restores it.
    fn sync_exemption(
        &mut self,
        state: &MeshState,
        local: &Local,
        metrics: &Metrics,
        verify: bool,
    ) {
        let Some(nft) = &self.nft else {
            return;
        };
        let want = masq::Exemption::new(
            peers::node_allowed(state, &local.cluster, &local.node),
            self.table.routes(),
        );
        if verify {
            match nft.read() {
                Ok(Some((have, packets))) => {
                    metrics.masq_exempted.set(packets as i64);
                    if have == want {
                        self.exemption = Some(have);
                        metrics.masq_ok.set(1);
                        self.problems.remove("masquerade");
                        return;
                    }
                    if self.exemption.as_ref() == Some(&want) {
                        tracing::warn!(
                            "the masquerade exemption (nft table ip raftmesh) was changed: restoring it"
                        );
                        metrics.masq_restored.inc();
                    }
                }
                Ok(None) => {
                    if self.exemption.is_some() {
                        tracing::warn!(
                            "the masquerade exemption (nft table ip raftmesh) is gone: restoring it"
                        );
                        metrics.masq_restored.inc();
                    }
                }
                Err(e) => {
                    self.exemption_failed(metrics, &e);
                    return;
                }
            }
            self.exemption = None;
        }
        if self.exemption.as_ref() == Some(&want) {
            return;
        }
        match nft.apply(&want) {
            Ok(()) => {
                tracing::info!(
                    sources = want.sources.len(),
                    destinations = want.destinations.len(),
                    "masquerade exemption written (nft table ip raftmesh)"
                );
                self.exemption = Some(want);
                metrics.masq_ok.set(1);
                self.problems.remove("masquerade");
            }
            Err(e) => self.exemption_failed(metrics, &e),
        }
    }

    fn exemption_failed(&mut self, metrics: &Metrics, e: &masq::Error) {
        tracing::error!("masquerade exemption: {e}; retrying at the next tick");
        metrics.masq_errors.inc();
        metrics.masq_ok.set(0);
        self.exemption = None;
        self.problems.insert(
            "masquerade",
            format!(
                "masquerade exemption: {e} (pod traffic to other clusters may leave with the node's address)"
            ),
        );
    }

    /// Removes the exemption and our rules (`--uninstall`). Returns what it removed.
    pub fn uninstall_plumbing(nft: Option<&Path>) -> Vec<String> {
        let mut removed = Vec::new();
        if let Some(nft) = nft {
            match masq::Nft::new(nft).remove() {
                Ok(true) => removed.push(format!("nft table ip {}", masq::TABLE)),
                Ok(false) => {}
                // No nft: the agent cannot have written the table.
                Err(masq::Error::Spawn { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => removed.push(format!("(nft table ip {} left: {e})", masq::TABLE)),
            }
        }
        for (cidr, priority) in rule::list().unwrap_or_default() {
            if rule::delete(cidr, priority).is_ok() {
                removed.push(format!(
                    "ip rule to {}/{} priority {priority}",
                    cidr.0, cidr.1
                ));
            }
        }
        removed
    }

    fn apply(&mut self, plan: &Plan, state: &MeshState, local: &Local) -> Result<(), Error> {
        self.config.interface.apply(plan)?;
        self.table.commit(plan);
        for (key, peer) in &plan.upsert {
            tracing::info!(
                cluster = %peer.cluster,
                node = %peer.node,
                public_key = %key::encode(key),
                endpoint = %device::endpoint_text(peer.endpoint),
                allowed_ips = ?peer.allowed.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
                "WireGuard peer set"
            );
        }
        for key in &plan.remove {
            tracing::info!(public_key = %key::encode(key), "WireGuard peer removed");
            self.seen.remove(key);
        }
        if plan.kept > 0 {
            tracing::debug!(
                kept = plan.kept,
                "peers kept: their cluster's view is not complete"
            );
        }
        self.sync_routes(state, local)
    }

    /// Routes every applied peer's CIDRs through the interface, from an address of this node's
    /// pod CIDRs when the host has one.
    fn sync_routes(&mut self, state: &MeshState, local: &Local) -> Result<(), Error> {
        let Some(index) = index_of(&self.config.interface) else {
            return Err(Error::Io {
                op: "finding the link",
                interface: self.config.interface.name().to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        let own_cidrs: Vec<Cidr> = state
            .clusters
            .get(&local.cluster)
            .and_then(|c| c.nodes.get(&local.node))
            .map(|n| n.pod_cidrs.clone())
            .unwrap_or_default();
        let src = route::local_address_in(&own_cidrs);
        let want: BTreeSet<(Cidr, Option<Ipv4Addr>)> =
            self.table.routes().into_iter().map(|c| (c, src)).collect();
        if want == self.routes {
            return Ok(());
        }
        let io = |op| {
            let name = self.config.interface.name().to_owned();
            move |source| Error::Io {
                op,
                interface: name,
                source,
            }
        };
        let have = route::list(index).map_err(io("listing routes"))?;
        for (cidr, src) in want.difference(&have) {
            route::add(index, *cidr, *src).map_err(io("adding a route"))?;
        }
        let wanted: BTreeSet<Cidr> = want.iter().map(|(c, _)| *c).collect();
        for (cidr, _) in have.iter().filter(|(c, _)| !wanted.contains(c)) {
            route::delete(index, *cidr).map_err(io("deleting a route"))?;
        }
        tracing::debug!(routes = want.len(), source = ?src, "WireGuard routes synced");
        self.routes = want;
        self.sync_rules(&wanted).map_err(io("policy routing rules"))
    }

    /// Makes our `to <cidr> lookup main` rules exactly `cidrs` at the configured priority.
    fn sync_rules(&self, cidrs: &BTreeSet<Cidr>) -> std::io::Result<()> {
        let priority = self.config.rule_priority;
        let want: BTreeSet<(Cidr, u32)> = cidrs.iter().map(|c| (*c, priority)).collect();
        let have = rule::list()?;
        for (cidr, p) in have.difference(&want) {
            rule::delete(*cidr, *p)?;
        }
        for (cidr, p) in want.difference(&have) {
            rule::add(*cidr, *p)?;
        }
        if want != have {
            tracing::debug!(rules = want.len(), priority, "policy routing rules synced");
        }
        Ok(())
    }

    /// Once a second: reads the counters for the metrics and `node-agent wg`, and notices an
    /// interface that lost its configuration (then sets it up again and re-applies every peer).
    pub fn tick(&mut self, state: &MeshState, local: &Local, metrics: &Metrics, now_ms: i64) {
        let status = match self.config.interface.read() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading WireGuard: {e}; setting the interface up again");
                metrics.wg_errors.inc();
                self.restart(state, local, metrics);
                return;
            }
        };
        let have: BTreeSet<&PublicKey> = status.keys().collect();
        let want: BTreeSet<&PublicKey> = self.table.applied().keys().collect();
        if have != want {
            tracing::warn!(
                interface_peers = have.len(),
                configured = want.len(),
                "the interface's peers changed under us: configuring them again"
            );
            // A daemon that restarted (an external one beside the agent, say) lost its key,
            // port and link state too: set them again (the same key keeps any sessions).
            if let Err(e) = self.config.interface.ensure(
                &self.key,
                self.config.port,
                self.config.mtu,
                std::time::Duration::ZERO,
            ) {
                tracing::error!("setting WireGuard up: {e}; retrying at the next tick");
                metrics.wg_errors.inc();
            }
            self.table = PeerTable::adopt(
                status
                    .iter()
                    .map(|(k, s)| (*k, s.applied.clone()))
                    .collect(),
            );
            self.retry = true;
        }
        if self.listed && std::mem::take(&mut self.retry) {
            self.routes.clear();
            self.reconcile(state, local, metrics);
        } else if self.listed {
            // Rules and the exemption live in tables other programs write too (a CNI
            // restoring its iptables, an admin flushing nftables): checked every tick.
            let wanted: BTreeSet<Cidr> = self.routes.iter().map(|(c, _)| *c).collect();
            match self.sync_rules(&wanted) {
                Ok(()) => {
                    self.problems.remove("rules");
                }
                Err(e) => {
                    tracing::error!("policy routing rules: {e}; retrying at the next tick");
                    metrics.wg_errors.inc();
                    self.problems
                        .insert("rules", format!("policy routing rules: {e}"));
                }
            }
            self.sync_exemption(state, local, metrics, true);
        }
        let mut bytes: BTreeMap<(String, &str), i64> = BTreeMap::new();
        let mut notes = BTreeMap::new();
        self.seen.retain(|k, _| status.contains_key(k));
        metrics.wg_transfer_age.clear();
        for (key, s) in &status {
            let (cluster, node) = self.name_of(key, state);
            let seen = self.seen.entry(*key).or_insert(Seen {
                rx: s.rx,
                tx: s.tx,
                changed_at_ms: None,
                since_ms: now_ms,
            });
            if (seen.rx, seen.tx) != (s.rx, s.tx) {
                seen.rx = s.rx;
                seen.tx = s.tx;
                seen.changed_at_ms = Some(now_ms);
            }
            *bytes.entry((cluster.clone(), "rx")).or_default() += s.rx as i64;
            *bytes.entry((cluster.clone(), "tx")).or_default() += s.tx as i64;
            // A peer whose counters have not moved since the agent began watching it is
            // as old as the watching: a tunnel that never carried anything shows, too.
            let at = seen.changed_at_ms.unwrap_or(seen.since_ms);
            metrics
                .wg_transfer_age
                .get_or_create(&PeerLabel {
                    cluster: cluster.clone(),
                    node: node.clone(),
                })
                .set((now_ms - at).max(0) / 1000);
            notes.insert(
                key::encode(key),
                PeerNote {
                    reachable: reachable(self.config.probe.is_some(), state, &cluster, &node),
                    cluster,
                    node,
                    changed_at_ms: seen.changed_at_ms,
                },
            );
        }
        metrics.wg_bytes.clear();
        for ((cluster, direction), n) in bytes {
            metrics
                .wg_bytes
                .get_or_create(&Transfer {
                    cluster,
                    direction: direction.to_owned(),
                })
                .set(n);
        }
        metrics.wg_peers.set(status.len() as i64);
        let text = serde_json::to_string(&notes).expect("json");
        if text != self.status_written {
            match std::fs::write(&self.status_file, &text) {
                Ok(()) => self.status_written = text,
                Err(e) => tracing::debug!("writing {}: {e}", self.status_file.display()),
            }
        }
    }

    /// The cluster and node of a peer: as configured, else (a peer adopted from the
    /// interface) from the records, else `?`.
    fn name_of(&self, key: &PublicKey, state: &MeshState) -> (String, String) {
        if let Some((c, n)) = self.table.owner(key) {
            return (c.to_owned(), n.to_owned());
        }
        state
            .clusters
            .iter()
            .find_map(|(cname, c)| {
                let (node, _) = c.nodekeys.iter().find(|(_, k)| k.public_key == *key)?;
                Some((cname.clone(), node.clone()))
            })
            .unwrap_or_else(|| ("?".to_owned(), "?".to_owned()))
    }

    fn restart(&mut self, state: &MeshState, local: &Local, metrics: &Metrics) {
        match self.config.interface.ensure(
            &self.key,
            self.config.port,
            self.config.mtu,
            std::time::Duration::ZERO,
        ) {
            Ok(created) => {
                if created {
                    self.table = PeerTable::default();
                    self.routes.clear();
                    tracing::info!(
                        interface = self.config.interface.name(),
                        "WireGuard interface created again"
                    );
                }
                if self.listed {
                    self.reconcile(state, local, metrics);
                }
            }
            Err(e) => {
                tracing::error!("setting WireGuard up: {e}; retrying at the next tick");
                metrics.wg_errors.inc();
            }
        }
    }
}

fn index_of(interface: &Interface) -> Option<u32> {
    route::index(interface.name())
}

/// Whether node `node` of `cluster` answers this agent's probes, if it is probed (`probing`:
/// the agent probes at all).
fn reachable(probing: bool, state: &MeshState, cluster: &str, node: &str) -> Option<bool> {
    if !probing {
        return None;
    }
    state
        .clusters
        .get(cluster)?
        .nodekeys
        .get(node)?
        .probe_port?;
    Some(
        !state
            .unreachable
            .nodes
            .get(cluster)
            .is_some_and(|n| n.contains(node)),
    )
}
