//! Kubernetes objects → the records of `mesh-api` (ARCHITECTURE.md, "Key layout
//! and records", "Publisher and mirror").
//!
//! Both sources of objects, the live API and a directory of manifests, produce the same
//! [`objects::Objects`], and [`convert::desired`] turns them into the records the cluster
//! should publish. Objects that cannot be published (a Service without a selector and no
//! slices, a pod IP outside its node's pod CIDRs, …) are reported as [`convert::Problem`]s
//! and skipped; they never stop the rest. [`store`] writes records by diff and allocates
//! identities.

pub mod controller;
pub mod convert;
pub mod live;
pub mod objects;
pub mod store;

pub use controller::{Config, SourceConfig};
