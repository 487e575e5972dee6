//! raftmesh's node agent: turns the mesh's records into the node's datapath.
//!
//! The agent watches its own cluster's API server (`mesh/v1/`, which holds this cluster's
//! records and every connected remote's mirrored ones, and `mesh/status/remotes/`), and
//! programs eBPF maps: socket load balancing for global services (cgroup connect4, sendmsg4,
//! recvmsg4, getpeername4) and identity policy on traffic to pods (tcx, or tc on kernels before
//! 6.6, on the pod veths). Maps
//! and links are pinned, so the datapath keeps working while the agent restarts, and a
//! restarted agent adopts them and writes only the difference. See ARCHITECTURE.md, "The node agent".
//!
//! # Layout
//! - [`config`]: flags and their validation.
//! - [`state`]: the mesh's records, kept compact ([`state::MeshState`]).
//! - [`desired`]: records → tables, pure (golden-tested).
//! - [`dns`]: `clusterset.local` DNS (the Multi-Cluster Services API's names) from the imports
//!   in memory, served with hickory-server on `--dns-listen`.
//! - [`maps`]: the maps' names, the encoding of keys and values (the structs of
//!   `ebpf/abi.h`, mirrored in [`maps::abi`] and checked against the header at build time),
//!   and the decoded [`maps::Tables`].
//! - [`reconcile`]: desired vs applied → writes, never removing on a partial view.
//! - [`datapath`]: loading, attaching (tcx, or legacy tc on older kernels), adopting and
//!   uninstalling with aya; the maps as a [`reconcile::Programmer`].
//! - [`netlink`]: rtnetlink dumps and changes, in one place.
//! - [`podnet`]: pod interfaces found by what they are (veths to other namespaces), and the
//!   pod addresses no interface with the policy programs leads to.
//! - [`source`]: list and watch of the API server.
//! - [`bootstrap`]: the agent certificate from the API server for a ServiceAccount token.
//! - [`agent`]: the loop tying them together ([`agent::run`]).
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`show`]: `node-agent maps` and `node-agent wg`.
//! - [`wg`]: the WireGuard mesh to the nodes of every other cluster, with the routing rules and
//!   the masquerade exemption that keep pod traffic to other clusters in it, unmasqueraded.

pub mod agent;
pub mod bootstrap;
pub mod config;
pub mod datapath;
pub mod desired;
pub mod dns;
pub mod maps;
pub mod metrics;
pub mod netlink;
pub mod podnet;
pub mod reach;
pub mod reconcile;
pub mod show;
pub mod source;
pub mod state;
pub mod wg;

#[cfg(test)]
mod testing;
