//! The mesh API server: the store (kvstore) of one cluster, and the leader-gated controllers
//! that fill it: publishing the cluster's Kubernetes objects as mesh records, and mirroring
//! every connected remote cluster's records.
//!
//! [`run`] is the whole server; `main.rs` only parses flags, validates them ([`Config`]),
//! binds the sockets and calls it. Tests start servers in-process the same way.
//!
//! # Layout
//! - [`config`]: the flags and their validation into a [`Config`].
//! - [`server`]: the composition root ([`run`]): the member, the metrics registry, the
//!   controllers, the shutdown signal.
//! - [`controller`]: the leader-gated controller shape and its supervisor.
//! - [`bootstrap`]: agent certificates for ServiceAccount tokens (TokenReview).
//! - [`publish`]: Kubernetes objects → mesh records, one conversion path for every source of
//!   objects.
//! - [`mirror`]: remote clusters' records → this cluster's store.

pub mod bootstrap;
pub mod config;
pub mod controller;
pub mod mcs;
pub mod mirror;
pub mod publish;
pub mod server;

pub use config::Config;
pub use server::{Listeners, run};
