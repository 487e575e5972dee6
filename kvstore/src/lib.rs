//! kvstore: a durable, Raft-replicated key-value store that speaks the etcd v3 API.
//!
//! # Layout
//! - [`request`]: the KV requests and responses in domain form (what the log carries).
//! - [`mvcc`]: the multi-version key space with etcd's semantics; pure and deterministic.
//! - [`validate`]: checks run on a request before it is proposed.
//! - [`error`]: etcd's errors, with etcd's exact strings.

pub mod error;
pub mod log_store;
pub mod membership;
pub mod mvcc;
pub mod raft_types;
pub mod request;
pub mod state_machine;
pub mod validate;
