//! Contexts, as meshctl and every other tool name a cluster (feature `contexts`): meshctl's own,
//! kept in `$RAFTMESH_CONFIG` like kubectl's ([`ConfigFile`]), and kubeconfig contexts, resolved
//! through the cluster's API to the install the chart made ([`kube`]). Either resolves to a
//! [`ClusterContext`]: endpoints and credential files, and the clients made of them (each
//! through this crate's one connect).
//!
//! - `file`: the config file and its entries.
//! - `resolved`: [`ClusterContext`], what a context names once resolved.
//! - [`kube`]: kubeconfig contexts (the remote Service, Secrets, member pods).

mod file;
pub mod kube;
mod resolved;

pub use file::{CONFIG_ENV, ConfigFile, ContextEntry, config_path};
pub use resolved::{CaPem, ClusterContext, KubeInstall};
