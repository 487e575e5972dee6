//! kvstore: a durable, Raft-replicated key-value store that speaks the etcd v3 API.
//!
//! It is the store of raftmesh's mesh API server: agents, remote clusters, meshctl and
//! etcdctl all talk to it with etcd's protocol and get etcd's semantics and errors.
//!
//! # Layout
//! - [`server`]: a member assembled; `run(config, listeners, shutdown)`; [`limits`]: what the
//!   store may hold (quota, leases, watchers, per identity).
//! - [`node`]: a running member's operations that involve the leader (forwarding, ReadIndex,
//!   leases, membership).
//! - [`api`]: the etcd gRPC services on the client port; [`api::convert`] holds every
//!   protobuf ↔ domain conversion, [`api::status`] every error → gRPC status mapping.
//! - [`peer`]: what members say to each other; [`peer_service`] and [`network`]: the Raft
//!   peer port, server and client side. A trust boundary: never exposed to clients.
//! - [`tls`]: mutual TLS on both ports (handshakes, peer connector, certificate reload);
//!   [`admission`]: oldest-first eviction of connections in progress, in all and per source;
//!   [`auth`]: what each certificate identity may do, checked on every request.
//! - [`data`]: the replicated state, how a command changes it, its encoding;
//!   [`state_machine`]: keeps it for openraft, applies committed entries, snapshots.
//! - [`backup`]: backups (`etcdctl snapshot save`) and restoring a new cluster from one.
//! - [`snapshot_file`]: the snapshot file: checksummed, one writer, never an older one.
//! - [`log_store`]: the Raft log: entries in [`wal`] segments, synced per append, vote and
//!   purge/commit points in sled — the only module that knows sled.
//! - [`wal`]: append-only segment files with CRCs; torn-tail recovery.
//! - [`mvcc`]: the multi-version key space with etcd's semantics; pure and deterministic.
//! - [`request`]: the KV requests and responses in domain form (what the log carries).
//! - [`validate`]: checks run on a request before it is proposed.
//! - [`per_identity`]: leases, watch streams and watchers one certificate identity may hold.
//! - [`watch_hub`]: which watch streams a write concerns, so only those wake.
//! - [`lessor`], [`read_index`], [`propose`]: the leader's lease deadlines, batched ReadIndex
//!   and batched proposals.
//! - [`session`]: write sessions: every write numbered, so a copy sent again after a failure in
//!   transit is applied once.
//! - [`membership`]: member and cluster ids; `--initial-cluster`.
//! - [`metrics`]: Prometheus metrics and `/healthz`.
//! - [`raft_types`]: the openraft type configuration, log command and reply.
//! - [`error`]: etcd's errors, with etcd's exact strings.

pub mod admission;
pub mod api;
pub mod auth;
pub mod backup;
pub mod data;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod lessor;
pub mod limits;
pub mod log_store;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod peer;
pub mod peer_service;
pub mod per_identity;
pub mod prevote;
pub mod propose;
pub mod raft_types;
pub mod read_index;
pub mod request;
pub mod server;
pub mod session;
pub mod snapshot_file;
pub mod state_machine;
pub mod tls;
pub mod validate;
pub mod wal;
pub mod watch_hub;
