//! The test harness of the workspace: what tests, benchmarks (`mesh-bench`) and chaos use to
//! run the real programs, and nothing a shipped binary links (meshctl, mesh-apiserver and
//! node-agent take it as a dev-dependency only). It builds on the lab's building blocks
//! ([`lab::netns`], [`lab::cgroup`], [`lab::process`]); `lab` does not depend on it.
//!
//! # Layout
//! - [`localcluster`]: start, kill, pause, restart and grow N-member etcd-API clusters
//!   (`mesh-apiserver` or the real etcd) as local processes.
//! - [`topology`]: clusters of nodes with pods on network namespaces, joined by a fabric.
//! - [`mesh`]: a running mesh on a topology (API servers, `meshctl connect`, agents with
//!   WireGuard), the harness of the WireGuard tests and benchmark.
//! - [`args`]: typed command lines of `mesh-apiserver` ([`args::ApiServerArgs`]) and
//!   `node-agent` ([`args::AgentArgs`]).
//! - [`kube`]: a fake Kubernetes API ([`kube::FakeApi`]).
//! - [`eventually`]: waiting for a condition, blocking or async.

pub mod args;
pub mod eventually;
pub mod kube;
pub mod localcluster;
pub mod mesh;
pub mod topology;

pub use eventually::{eventually, eventually_async, eventually_every};
