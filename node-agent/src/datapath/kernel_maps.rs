//! The programmable maps, opened from the loaded objects or from their pins: what the
//! reconcile writes ([`crate::reconcile::Programmer`]) and what `node-agent maps`, the tests and
//! the chaos checkers read back.

use super::*;

/// The programmable maps, opened.
pub struct KernelMaps {
    services: HashMap<MapData, maps::SvcKey, maps::SvcValue>,
    backends: HashMap<MapData, maps::BackendKey, maps::BackendValue>,
    ipcache: LpmTrie<MapData, [u8; 4], maps::IpcacheValue>,
    enforced: HashMap<MapData, u32, u32>,
    rules: HashMap<MapData, maps::PolicyKey, u32>,
    lb_counters: PerCpuArray<MapData, u64>,
    pol_counters: PerCpuArray<MapData, u64>,
    verdicts: PerCpuHashMap<MapData, maps::VerdictKey, u64>,
    ifaces: HashMap<MapData, u32, maps::IfaceValue>,
    pod_flows: HashMap<MapData, maps::PodFlowKey, maps::PodFlowValue>,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps").finish_non_exhaustive()
    }
}

/// The counters, summed over CPUs, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Load balancing ([`maps::LB_COUNTER_NAMES`]).
    pub lb: Vec<(&'static str, u64)>,
    /// Policy ([`maps::POL_COUNTER_NAMES`]).
    pub policy: Vec<(&'static str, u64)>,
}

impl KernelMaps {
    pub(super) fn take(lb: &mut Ebpf, pol: &mut Ebpf) -> Result<KernelMaps> {
        fn take(e: &mut Ebpf, name: &'static str) -> Result<Map> {
            e.take_map(name)
                .ok_or_else(|| Error::Missing(format!("map {name}")))
        }
        KernelMaps::from_maps(|name| {
            if maps::LB_MAPS.contains(&name) {
                take(lb, name)
            } else {
                take(pol, name)
            }
        })
    }

    /// Opens the pinned maps under `pins` (no program needed: `node-agent maps`, tests).
    pub fn open(pins: &Pins) -> Result<KernelMaps> {
        KernelMaps::from_maps(|name| {
            let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    fn from_maps(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<KernelMaps> {
        Ok(KernelMaps {
            services: get(maps::LB_SERVICES)?
                .try_into()
                .map_err(map_err(maps::LB_SERVICES))?,
            backends: get(maps::LB_BACKENDS)?
                .try_into()
                .map_err(map_err(maps::LB_BACKENDS))?,
            ipcache: get(maps::IPCACHE)?
                .try_into()
                .map_err(map_err(maps::IPCACHE))?,
            enforced: get(maps::POL_ENFORCED)?
                .try_into()
                .map_err(map_err(maps::POL_ENFORCED))?,
            rules: get(maps::POL_RULES)?
                .try_into()
                .map_err(map_err(maps::POL_RULES))?,
            lb_counters: get(maps::LB_COUNTERS)?
                .try_into()
                .map_err(map_err(maps::LB_COUNTERS))?,
            pol_counters: get(maps::POL_COUNTERS)?
                .try_into()
                .map_err(map_err(maps::POL_COUNTERS))?,
            verdicts: get(maps::POL_VERDICTS)?
                .try_into()
                .map_err(map_err(maps::POL_VERDICTS))?,
            ifaces: get(maps::POL_IFACES)?
                .try_into()
                .map_err(map_err(maps::POL_IFACES))?,
            pod_flows: get(maps::POL_POD_FLOWS)?
                .try_into()
                .map_err(map_err(maps::POL_POD_FLOWS))?,
        })
    }

    /// What is behind each pod interface, by ifindex.
    pub fn ifaces(&self) -> Result<std::collections::BTreeMap<u32, maps::Iface>> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.ifaces.iter() {
            let (k, v) = item.map_err(map_err(maps::POL_IFACES))?;
            out.insert(k, maps::iface_of(&v));
        }
        Ok(out)
    }

    /// Sets what is behind pod interface `ifindex`.
    pub fn set_iface(&mut self, ifindex: u32, iface: &maps::Iface) -> Result<()> {
        self.ifaces
            .insert(ifindex, maps::iface_value(iface), 0)
            .map_err(map_err(maps::POL_IFACES))
    }

    /// Forgets pod interface `ifindex` (gone): its entry and its flow slots.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.ifaces.remove(&ifindex)).map_err(map_err(maps::POL_IFACES))?;
        let slots: Vec<maps::PodFlowKey> = self
            .pod_flows
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| maps::pod_flow_ifindex(k) == ifindex)
            .collect();
        for k in slots {
            ignore_missing(self.pod_flows.remove(&k)).map_err(map_err(maps::POL_POD_FLOWS))?;
        }
        Ok(())
    }

    /// The verdicts on new flows, summed over CPUs, most flows first.
    pub fn verdicts(&self) -> Result<Vec<maps::Verdict>> {
        let mut out = Vec::new();
        for item in self.verdicts.iter() {
            let (k, values) = item.map_err(map_err(maps::POL_VERDICTS))?;
            out.push(maps::verdict_of(&k, values.iter().sum()));
        }
        out.sort_by(|a, b| {
            b.flows
                .cmp(&a.flows)
                .then(a.endpoint.cmp(&b.endpoint))
                .then(a.peer.cmp(&b.peer))
        });
        Ok(out)
    }

    /// What the maps hold, and the backend slots no count reaches (left by an agent that
    /// died in the middle of a shrink; the program never reads them).
    pub fn read(&self) -> Result<(Tables, Vec<(Frontend, u32)>)> {
        let mut t = Tables::default();
        for item in self.services.iter() {
            let (k, v) = item.map_err(map_err(maps::LB_SERVICES))?;
            // The count comes from a pinned map, possibly of another version: trust it no
            // further than a plausible service size.
            let n = (count_of(&v) as usize).min(4096);
            t.services.insert(frontend_of(&k), Vec::with_capacity(n));
        }
        let mut slots: std::collections::BTreeMap<Frontend, Vec<(u32, Backend)>> =
            std::collections::BTreeMap::new();
        for item in self.backends.iter() {
            let (k, v) = item.map_err(map_err(maps::LB_BACKENDS))?;
            let (f, slot) = slot_of(&k);
            slots.entry(f).or_default().push((slot, backend_of(&v)));
        }
        let mut strays = Vec::new();
        for (f, mut list) in slots {
            list.sort_by_key(|(slot, _)| *slot);
            let count = match self.services.get(&svc_key(&f), 0) {
                Ok(v) => count_of(&v),
                Err(_) => 0,
            };
            let mut backends = t.services.get_mut(&f);
            for (slot, b) in list {
                match backends {
                    Some(ref mut v) if slot < count && slot as usize == v.len() => v.push(b),
                    _ => strays.push((f, slot)),
                }
            }
        }
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(map_err(maps::IPCACHE))?;
            let bytes = k.data();
            t.ipcache.insert(
                Prefix {
                    ip: bytes.into(),
                    len: k.prefix_len() as u8,
                },
                ipinfo_of(&v),
            );
        }
        for item in self.enforced.keys() {
            t.enforced
                .insert(item.map_err(map_err(maps::POL_ENFORCED))?);
        }
        for item in self.rules.keys() {
            t.rules
                .insert(rule_of(&item.map_err(map_err(maps::POL_RULES))?));
        }
        Ok((t, strays))
    }

    /// The slot count of `frontend`, if it is programmed (one lookup).
    pub fn slot_count(&self, frontend: &Frontend) -> Option<u32> {
        self.services
            .get(&svc_key(frontend), 0)
            .ok()
            .map(|v| count_of(&v))
    }

    /// Deletes slots returned by [`KernelMaps::read`] as strays.
    pub fn remove_strays(&mut self, strays: &[(Frontend, u32)]) -> Result<()> {
        for (f, slot) in strays {
            ignore_missing(self.backends.remove(&backend_key(f, *slot)))
                .map_err(map_err(maps::LB_BACKENDS))?;
        }
        Ok(())
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        fn sum(
            a: &PerCpuArray<MapData, u64>,
            names: &[&'static str],
            map: &'static str,
        ) -> Result<Vec<(&'static str, u64)>> {
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let values = a.get(&(i as u32), 0).map_err(map_err(map))?;
                    Ok((*name, values.iter().sum()))
                })
                .collect()
        }
        Ok(Counters {
            lb: sum(
                &self.lb_counters,
                &maps::LB_COUNTER_NAMES,
                maps::LB_COUNTERS,
            )?,
            policy: sum(
                &self.pol_counters,
                &maps::POL_COUNTER_NAMES,
                maps::POL_COUNTERS,
            )?,
        })
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

impl Programmer for KernelMaps {
    type Error = Error;

    fn set_service(&mut self, f: &Frontend, old: &[Backend], new: &[Backend]) -> Result<()> {
        let key = svc_key(f);
        // Slots first, then the count when growing; the count first, then the slots beyond it
        // when shrinking (see crate::maps, "Update order").
        for (slot, b) in new.iter().enumerate() {
            if old.get(slot) != Some(b) {
                self.backends
                    .insert(backend_key(f, slot as u32), backend_value(b), 0)
                    .map_err(map_err(maps::LB_BACKENDS))?;
            }
        }
        self.services
            .insert(key, svc_value(new.len() as u32), 0)
            .map_err(map_err(maps::LB_SERVICES))?;
        for slot in new.len()..old.len() {
            ignore_missing(self.backends.remove(&backend_key(f, slot as u32)))
                .map_err(map_err(maps::LB_BACKENDS))?;
        }
        Ok(())
    }

    fn remove_service(&mut self, f: &Frontend, old: &[Backend]) -> Result<()> {
        ignore_missing(self.services.remove(&svc_key(f))).map_err(map_err(maps::LB_SERVICES))?;
        // Slot 0 last: a connect that read the count just before keeps finding a backend.
        for slot in (0..old.len()).rev() {
            ignore_missing(self.backends.remove(&backend_key(f, slot as u32)))
                .map_err(map_err(maps::LB_BACKENDS))?;
        }
        Ok(())
    }

    fn set_ip(&mut self, prefix: &Prefix, info: &IpInfo) -> Result<()> {
        let key = LpmKey::new(u32::from(prefix.len), prefix.ip.octets());
        self.ipcache
            .insert(&key, ipcache_value(info), 0)
            .map_err(map_err(maps::IPCACHE))
    }

    fn remove_ip(&mut self, prefix: &Prefix) -> Result<()> {
        let key = LpmKey::new(u32::from(prefix.len), prefix.ip.octets());
        ignore_missing(self.ipcache.remove(&key)).map_err(map_err(maps::IPCACHE))
    }

    fn set_enforced(&mut self, identity: u32, on: bool) -> Result<()> {
        if on {
            self.enforced
                .insert(identity, 1, 0)
                .map_err(map_err(maps::POL_ENFORCED))
        } else {
            ignore_missing(self.enforced.remove(&identity)).map_err(map_err(maps::POL_ENFORCED))
        }
    }

    fn set_rule(&mut self, rule: &Rule, on: bool) -> Result<()> {
        if on {
            self.rules
                .insert(rule_key(rule), 1, 0)
                .map_err(map_err(maps::POL_RULES))
        } else {
            ignore_missing(self.rules.remove(&rule_key(rule))).map_err(map_err(maps::POL_RULES))
        }
    }
}
