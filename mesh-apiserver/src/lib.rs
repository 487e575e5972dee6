//! The mesh API server beyond the store: turning the cluster's Kubernetes objects into the
//! records other clusters and node agents read.
//!
//! # Layout
//! - [`publish`]: Kubernetes objects → mesh records (`mesh-api`), one conversion path for
//!   every source of objects.

pub mod publish;
