//! Desired tables → map writes, by diff against what is applied.
//!
//! The applied tables start as what the pinned maps hold (a restarted agent reads them back),
//! so a restart writes only what changed while the agent was down and never clears a map.
//! After that the reconciler keeps its own copy, and each change recomputes only what it
//! touched ([`Touched`]): one service, some addresses, or the policy tables.
//!
//! # Partial views
//! Nothing is removed on the word of a cluster whose view is incomplete (its `synced/` markers
//! are not all there yet, or, for this node's own cluster, nothing of it is known at all —
//! a wiped or restored store): entries of such a cluster that are applied but not desired are
//! kept. A remote whose every key is gone (drained after `meshctl disconnect`) is a complete,
//! empty view, and its entries go.
//!
//! # Slot order
//! A service keeps each remaining backend in its slot; a removed backend's slot takes a new
//! backend or, failing that, the last one, so a change rewrites as few slots as it can. The
//! kernel writer orders the writes so a concurrent connect always finds a backend
//! ([`crate::maps`], "Update order").

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::desired::{self, Local};
use crate::maps::{Backend, Frontend, IpInfo, Prefix, Rule, Tables};
use crate::state::{MeshState, Touched};

/// Where the tables are written: the pinned maps, or a fake in tests.
pub trait Programmer {
    /// The error of a write.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Sets `frontend`'s slots from `old` (what is applied) to `new`.
    fn set_service(
        &mut self,
        frontend: &Frontend,
        old: &[Backend],
        new: &[Backend],
    ) -> Result<(), Self::Error>;
    /// Removes `frontend` and its `old` slots.
    fn remove_service(&mut self, frontend: &Frontend, old: &[Backend]) -> Result<(), Self::Error>;
    /// Sets an ipcache entry.
    fn set_ip(&mut self, prefix: &Prefix, info: &IpInfo) -> Result<(), Self::Error>;
    /// Removes an ipcache entry.
    fn remove_ip(&mut self, prefix: &Prefix) -> Result<(), Self::Error>;
    /// Marks an identity enforced (`true`) or not.
    fn set_enforced(&mut self, identity: u32, on: bool) -> Result<(), Self::Error>;
    /// Adds (`true`) or removes a rule.
    fn set_rule(&mut self, rule: &Rule, on: bool) -> Result<(), Self::Error>;
}

/// Writes done by one reconcile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    /// Frontends set or removed.
    pub services: u64,
    /// ipcache entries set or removed.
    pub ips: u64,
    /// Enforced identities and rules added or removed.
    pub policy: u64,
    /// Writes that failed (left for [`Reconciler::take_pending`]).
    pub failed: u64,
}

impl Writes {
    /// Total.
    pub fn total(&self) -> u64 {
        self.services + self.ips + self.policy
    }
}

/// A pass in which some writes failed: what it did, and the first error.
#[derive(Debug)]
pub struct Failed<E> {
    /// The writes made, and [`Writes::failed`].
    pub writes: Writes,
    /// The first failure.
    pub first: E,
}

/// The applied tables and the diffing.
#[derive(Debug, Default)]
pub struct Reconciler {
    applied: Tables,
    /// What failed to be written, to try again.
    pending: Touched,
    /// Which service each applied frontend came from, so a service's change or removal
    /// finds its old frontends without a full recompute. Complete after the first full
    /// reconcile; frontends read back from the maps have no owner until then.
    owners: BTreeMap<String, BTreeSet<Frontend>>,
}

impl Reconciler {
    /// Starts from what the maps hold.
    pub fn adopt(applied: Tables) -> Reconciler {
        Reconciler {
            applied,
            pending: Touched::default(),
            owners: BTreeMap::new(),
        }
    }

    /// What failed to be written since the last call: the next attempt's `touched`.
    pub fn take_pending(&mut self) -> Touched {
        std::mem::take(&mut self.pending)
    }

    /// What is applied.
    pub fn applied(&self) -> &Tables {
        &self.applied
    }

    /// Brings the maps to the state's tables for what `touched` names.
    ///
    /// A failed write (a full map) does not stop the pass: every other write is still made —
    /// above all the policy tables — the failed one is counted in [`Writes::failed`] and left
    /// for [`Reconciler::take_pending`], and the pass returns [`Failed`].
    /// ipcache removals are written before additions, and this cluster's addresses before
    /// any remote's, so a map filled by remotes never keeps out this cluster's own pods.
    pub fn reconcile<P: Programmer>(
        &mut self,
        state: &MeshState,
        local: &Local,
        now_ms: i64,
        touched: &Touched,
        out: &mut P,
    ) -> Result<Writes, Failed<P::Error>> {
        let keep = Keep::new(state, local);
        let mut writes = Writes::default();
        let mut first: Option<P::Error> = None;
        let mut failed = |e: P::Error, writes: &mut Writes| {
            writes.failed += 1;
            first.get_or_insert(e);
        };
        // Addresses before services: a new backend's identity is in the ipcache before any
        // connection reaches it (a pod with none takes only this node's traffic).
        // The whole ipcache is computed once for a full pass (one walk of every cluster), a
        // few addresses one at a time otherwise.
        let (ips, full): (BTreeSet<Ipv4Addr>, Option<BTreeMap<Prefix, IpInfo>>) = if touched.all_ips
        {
            let full = desired::ipcache(state, local);
            let mut all: BTreeSet<Ipv4Addr> = self.applied.ipcache.keys().map(|p| p.ip).collect();
            all.extend(full.keys().map(|p| p.ip));
            (all, Some(full))
        } else {
            (touched.ips.clone(), None)
        };
        let own_id = state.clusters.get(&local.cluster).and_then(|c| c.id);
        let mut removals = Vec::new();
        let mut own = Vec::new();
        let mut remote = Vec::new();
        for ip in ips {
            let prefix = Prefix { ip, len: 32 };
            let want = match &full {
                Some(full) => full.get(&prefix).copied(),
                None => desired::ipcache_entry(state, local, ip),
            };
            let have = self.applied.ipcache.get(&prefix).copied();
            match (have, want) {
                (h, Some(w)) if h != Some(w) => {
                    if Some(w.cluster_id) == own_id {
                        own.push((prefix, w));
                    } else {
                        remote.push((prefix, w));
                    }
                }
                (Some(h), None) if !keep.cluster(h.cluster_id) => removals.push(prefix),
                _ => {}
            }
        }
        for prefix in removals {
            match out.remove_ip(&prefix) {
                Ok(()) => {
                    self.applied.ipcache.remove(&prefix);
                    writes.ips += 1;
                }
                Err(e) => {
                    failed(e, &mut writes);
                    self.pending.ips.insert(prefix.ip);
                }
            }
        }
        for (prefix, info) in own.into_iter().chain(remote) {
            match out.set_ip(&prefix, &info) {
                Ok(()) => {
                    self.applied.ipcache.insert(prefix, info);
                    writes.ips += 1;
                }
                Err(e) => {
                    failed(e, &mut writes);
                    self.pending.ips.insert(prefix.ip);
                }
            }
        }

        if touched.all_services {
            let mut desired_all = BTreeMap::new();
            let mut owners: BTreeMap<String, BTreeSet<Frontend>> = BTreeMap::new();
            for name in desired::service_names(state, local) {
                let frontends = desired::service(state, local, name, now_ms);
                if !frontends.is_empty() {
                    owners.insert(name.clone(), frontends.keys().copied().collect());
                }
                desired_all.extend(frontends);
            }
            let applied: Vec<Frontend> = self.applied.services.keys().copied().collect();
            let frontends: BTreeSet<Frontend> = applied
                .into_iter()
                .chain(desired_all.keys().copied())
                .collect();
            for f in frontends {
                match self.service(&f, desired_all.get(&f), &keep, out) {
                    Ok(n) => writes.services += n,
                    Err(e) => {
                        failed(e, &mut writes);
                        self.pending.all_services = true;
                    }
                }
            }
            self.owners = owners;
        } else if !touched.services.is_empty() {
            // All touched services at once: in one batch a service may take over a VIP
            // another one releases, so the old and new frontends are diffed as one set.
            let mut desired_touched = BTreeMap::new();
            let mut wanted_by: BTreeMap<&String, BTreeSet<Frontend>> = BTreeMap::new();
            let mut frontends: BTreeSet<Frontend> = BTreeSet::new();
            for name in &touched.services {
                let one = desired::service(state, local, name, now_ms);
                wanted_by.insert(name, one.keys().copied().collect());
                frontends.extend(self.owners.remove(name).unwrap_or_default());
                desired_touched.extend(one);
            }
            frontends.extend(desired_touched.keys().copied());
            for f in &frontends {
                match self.service(f, desired_touched.get(f), &keep, out) {
                    Ok(n) => writes.services += n,
                    Err(e) => {
                        failed(e, &mut writes);
                        self.pending
                            .services
                            .extend(touched.services.iter().cloned());
                    }
                }
            }
            for (name, wanted) in wanted_by {
                if !wanted.is_empty() {
                    self.owners.insert(name.clone(), wanted);
                }
            }
        }

        if touched.policy {
            let (enforced, rules) = desired::policy(state, local);
            // Allow before enforcing, and stop enforcing before removing rules, so a change
            // never drops what both the old and the new policy allow. A write that fails (a
            // full map) is tried again at the next tick; an endpoint is enforced even when one
            // of its rules could not be added: a policy fails closed.
            let mut policy_failed = false;
            // One policy write's outcome: counted, or failed and left for the next tick.
            let mut wrote = |result: Result<(), P::Error>, writes: &mut Writes| match result {
                Ok(()) => {
                    writes.policy += 1;
                    true
                }
                Err(e) => {
                    failed(e, writes);
                    policy_failed = true;
                    false
                }
            };
            let add_rules: Vec<Rule> = rules.difference(&self.applied.rules).copied().collect();
            for r in add_rules {
                if wrote(out.set_rule(&r, true), &mut writes) {
                    self.applied.rules.insert(r);
                }
            }
            let add: Vec<u32> = enforced
                .difference(&self.applied.enforced)
                .copied()
                .collect();
            for e in add {
                if wrote(out.set_enforced(e, true), &mut writes) {
                    self.applied.enforced.insert(e);
                }
            }
            if !keep.own {
                let lift: Vec<u32> = self
                    .applied
                    .enforced
                    .difference(&enforced)
                    .copied()
                    .collect();
                for e in lift {
                    if wrote(out.set_enforced(e, false), &mut writes) {
                        self.applied.enforced.remove(&e);
                    }
                }
            }
            let drop_rules: Vec<Rule> = self
                .applied
                .rules
                .difference(&rules)
                .filter(|r| !keep.cluster((r.peer >> 16) as u16))
                .copied()
                .collect();
            for r in drop_rules {
                if wrote(out.set_rule(&r, false), &mut writes) {
                    self.applied.rules.remove(&r);
                }
            }
            self.pending.policy |= policy_failed;
        }
        match first {
            None => Ok(writes),
            Some(first) => Err(Failed { writes, first }),
        }
    }

    /// Brings one frontend to `want`; returns 1 if it wrote.
    fn service<P: Programmer>(
        &mut self,
        f: &Frontend,
        want: Option<&Vec<Backend>>,
        keep: &Keep,
        out: &mut P,
    ) -> Result<u64, P::Error> {
        let have = self.applied.services.get(f);
        let mut wanted: Vec<Backend> = want.cloned().unwrap_or_default();
        if let (Some(have), Some(_)) = (have, want) {
            // Backends of clusters with a partial view stay until that view is complete (a
            // frontend this cluster no longer wants goes whole: the service itself is gone).
            for b in have {
                if keep.cluster(b.cluster_id) && !wanted.iter().any(|w| same(w, b)) {
                    wanted.push(*b);
                }
            }
        }
        match (have, want) {
            (None, None) => Ok(0),
            // This cluster's own view is partial: its frontends stay as they are.
            (Some(_), None) if keep.own => Ok(0),
            (Some(have), None) => {
                out.remove_service(f, have)?;
                self.applied.services.remove(f);
                Ok(1)
            }
            (have, _) => {
                let old: &[Backend] = have.map(Vec::as_slice).unwrap_or(&[]);
                let new = arrange(old, &wanted);
                if have.is_some_and(|h| *h == new) {
                    return Ok(0);
                }
                out.set_service(f, old, &new)?;
                self.applied.services.insert(*f, new);
                Ok(1)
            }
        }
    }
}

/// Which applied entries a partial view protects.
struct Keep {
    /// This node's own cluster has no complete view.
    own: bool,
    /// Ids of clusters with a partial view.
    partial: BTreeSet<u16>,
    /// Some partial cluster has no known id: every id not of a complete cluster is kept.
    unknown_partial: bool,
    complete: BTreeSet<u16>,
}

impl Keep {
    fn new(state: &MeshState, local: &Local) -> Keep {
        let mut keep = Keep {
            own: !state
                .clusters
                .get(&local.cluster)
                .is_some_and(|c| c.complete()),
            partial: BTreeSet::new(),
            unknown_partial: false,
            complete: BTreeSet::new(),
        };
        for c in state.clusters.values() {
            match (c.complete(), c.id) {
                (true, Some(id)) => {
                    keep.complete.insert(id);
                }
                (false, Some(id)) => {
                    keep.partial.insert(id);
                }
                (false, None) | (true, None) => keep.unknown_partial = true,
            }
        }
        keep
    }

    /// Whether entries of cluster `id` that are no longer desired must stay. While this
    /// node's own cluster is partial (a wiped or restoring store) nothing is trusted to be
    /// gone, of any cluster.
    fn cluster(&self, id: u16) -> bool {
        self.own
            || self.partial.contains(&id)
            || (self.unknown_partial && !self.complete.contains(&id))
    }
}

fn same(a: &Backend, b: &Backend) -> bool {
    a.ip == b.ip && a.port == b.port
}

/// `wanted` in slot order, keeping every backend that stays in the slot it has in `old`.
pub fn arrange(old: &[Backend], wanted: &[Backend]) -> Vec<Backend> {
    let mut slots: Vec<Option<Backend>> = old
        .iter()
        .map(|o| wanted.iter().find(|w| same(w, o)).copied())
        .collect();
    let mut fresh = wanted
        .iter()
        .filter(|w| !old.iter().any(|o| same(o, w)))
        .copied();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = fresh.next();
    }
    slots.extend(fresh.map(Some));
    // Fill the remaining holes with the last backends.
    let mut out: Vec<Option<Backend>> = slots;
    let mut i = 0;
    while i < out.len() {
        if out[i].is_none() {
            while out.last().is_some_and(Option::is_none) {
                out.pop();
            }
            if i < out.len() {
                out.swap_remove(i);
            }
        }
        i += 1;
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
