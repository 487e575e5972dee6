//! Pod interfaces: finding them by what they are (ARCHITECTURE.md, "Datapath"), attaching
//! the policy programs to each, and hearing about new ones from netlink as they appear.

use super::*;

impl Agent<'_> {
    /// Finds the pod interfaces (by what they are), makes sure each has the policy programs,
    /// unpins links of gone ones, and counts this node's pods that no interface with the
    /// programs leads to.
    pub(super) fn scan_interfaces(&mut self) -> Result<(), Error> {
        let links = match podnet::links() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("listing interfaces: {e}");
                return Ok(());
            }
        };
        let present = podnet::pod_interfaces(
            &links,
            self.config.discover_pod_interfaces,
            &self.config.pod_interface_prefixes,
        );
        let mut enforcing = BTreeSet::new();
        for (name, index) in &present {
            let key = (name.clone(), *index);
            match self.programs.attach_interface(name, *index) {
                Ok(outcome) => {
                    if outcome == Attached::Changed {
                        tracing::info!(
                            interface = %name,
                            mode = self.programs.mode().name(),
                            "policy programs attached"
                        );
                    }
                    if self.attach_failures.remove(&key).is_some() {
                        tracing::info!(interface = %name, "policy programs attached after failures");
                    }
                    match outcome {
                        Attached::Behind(front) => {
                            if self.behind.get(name) != Some(&front) {
                                tracing::warn!(interface = %name, "another tc filter runs before the policy filter: {front}");
                            }
                            self.behind.insert(name.clone(), front);
                        }
                        _ => {
                            self.behind.remove(name);
                        }
                    }
                    enforcing.insert(key);
                }
                // The interface may have gone between the listing and the attach; a kernel
                // that refuses is counted and reported (its pods are unenforced).
                Err(e) => {
                    let text = e.to_string();
                    if self.attach_failures.get(&key) != Some(&text) {
                        tracing::warn!(interface = %name, "attaching policy programs: {text}");
                        self.metrics.attach_errors.inc();
                    }
                    self.attach_failures.insert(key, text);
                }
            }
        }
        self.attach_failures.retain(|k, _| present.contains(k));
        self.behind
            .retain(|name, _| present.iter().any(|(n, _)| n == name));
        self.interfaces = enforcing;
        for gone in self.programs.sweep_interfaces(&present)? {
            tracing::info!(interface = %gone, "interface gone: its links unpinned");
        }
        self.metrics.interfaces.set(self.interfaces.len() as i64);
        let routes = match podnet::main_routes() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("listing routes: {e}");
                None
            }
        };
        self.sync_ifaces(routes.as_deref());
        self.check_enforcement(&links, routes.as_deref());
        self.report_health();
        Ok(())
    }

    /// Finds this node's pod addresses (from the store) that no interface with the policy
    /// programs leads to.
    fn check_enforcement(&mut self, links: &[podnet::Link], routes: Option<&[podnet::Route]>) {
        let pods = self.local_pods();
        let unenforced = if pods.is_empty() {
            BTreeMap::new()
        } else {
            let Some(routes) = routes else {
                return;
            };
            let enforcing: BTreeSet<u32> = self.interfaces.iter().map(|(_, i)| *i).collect();
            podnet::unenforced(&pods, routes, links, &enforcing)
        };
        self.metrics.pods_unenforced.set(unenforced.len() as i64);
        self.unenforced = unenforced;
    }

    /// Writes what is behind each interface with the policy programs (`pol_ifaces`): the pod's
    /// address where a /32 route leads to the interface, its identity from the store (else
    /// what the program learned from the packets delivered to it), `--enforce-unknown-pods`
    /// and this node's host identity. Entries of other interfaces go, with their flow slots.
    fn sync_ifaces(&mut self, routes: Option<&[podnet::Route]>) {
        let have = match self.kernel.ifaces() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("reading the pod interfaces' map: {e}");
                return;
            }
        };
        let host = self
            .state
            .clusters
            .get(&self.local.cluster)
            .and_then(|c| c.id)
            .map_or(0, |id| {
                mesh_api::identity::identity(id, mesh_api::identity::HOST)
            });
        let flags = if self.config.enforce_unknown_pods {
            crate::maps::iface_flags::DENY_UNKNOWN
        } else {
            0
        };
        let mut awaiting = 0;
        for (_, index) in &self.interfaces {
            let pod_ip = routes
                .into_iter()
                .flatten()
                .find(|r| r.dst.1 == 32 && r.oif == Some(*index) && !r.via_gateway)
                .map(|r| r.dst.0);
            let known = pod_ip
                .and_then(|ip| desired::ipcache_entry(&self.state, &self.local, ip))
                .filter(|i| i.flags & crate::maps::ipcache_flags::POD != 0)
                .map(|i| i.identity);
            let old = have.get(index);
            let want = crate::maps::Iface {
                identity: known.or(old.map(|o| o.identity)).unwrap_or(0),
                flags,
                pod_ip: pod_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                // Before the first list the host identity is not known: keep the last.
                host: if host == 0 {
                    old.map_or(0, |o| o.host)
                } else {
                    host
                },
            };
            awaiting += usize::from(want.identity == 0);
            if old != Some(&want)
                && let Err(e) = self.kernel.set_iface(*index, &want)
            {
                tracing::warn!(ifindex = index, "writing the pod interfaces' map: {e}");
                self.metrics.map_errors.inc();
            }
        }
        let attached: BTreeSet<u32> = self.interfaces.iter().map(|(_, i)| *i).collect();
        for gone in have.keys().filter(|i| !attached.contains(i)) {
            if let Err(e) = self.kernel.remove_iface(*gone) {
                tracing::warn!(ifindex = gone, "removing a pod interface's entry: {e}");
            }
        }
        self.metrics.pods_awaiting_identity.set(awaiting as i64);
    }

    /// This node's pod addresses, by the store: this cluster's ipcache entries placed on one of
    /// this node's addresses, other than those addresses themselves (host-network pods).
    fn local_pods(&self) -> BTreeSet<Ipv4Addr> {
        let Some(c) = self.state.clusters.get(&self.local.cluster) else {
            return BTreeSet::new();
        };
        let Some(node) = c.nodes.get(&self.local.node) else {
            return BTreeSet::new();
        };
        c.ipcache
            .iter()
            .filter(|(ip, pod)| node.ips.contains(&pod.node) && !node.ips.contains(ip))
            .map(|(ip, _)| *ip)
            .collect()
    }
}

/// A netlink socket subscribed to link changes, so a new pod interface gets the policy
/// programs as soon as it appears instead of at the next tick (during which its pod would
/// accept anything).
pub(super) struct LinkEvents {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl LinkEvents {
    /// `RTMGRP_LINK`.
    const GROUP: u32 = 1;

    pub(super) fn open() -> std::io::Result<LinkEvents> {
        use nix::sys::socket::{
            AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
        };
        use std::os::fd::AsRawFd;
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, Self::GROUP))?;
        #[expect(
            deprecated,
            reason = "register is the unsafe replacement; AsyncFd owns this OwnedFd, so it stays open while registered"
        )]
        let fd = tokio::io::unix::AsyncFd::new(fd)?;
        Ok(LinkEvents { fd })
    }

    /// Completes after one or more link changes (never, without a socket).
    pub(super) async fn next(links: Option<&LinkEvents>) {
        use std::os::fd::AsRawFd;
        let Some(links) = links else {
            return std::future::pending().await;
        };
        let Ok(mut guard) = links.fd.readable().await else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 8192];
        // The messages only say "something changed": drain them; the scan reads the links.
        while let Ok(n) = nix::sys::socket::recv(
            links.fd.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            if n == 0 {
                break;
            }
        }
        guard.clear_ready();
    }
}
