//! chaos: fault scenarios on the lab and the checkers that judge them (ARCHITECTURE.md, "The lab, chaos and benchmarks").
//!
//! raftmesh claims that partitions never block writes inside a cluster, that remote state is
//! kept and its age measured, that healing costs a delta, and that no acknowledged write is
//! lost. Workloads record what clients asked and what they were told ([`history`]); checkers
//! ([`check`]) decide from those records alone whether a claim held, ordering events by the
//! store's revisions or by one process's own call/return order, never by clocks of different
//! processes.
//!
//! # Layout
//! - [`history`]: operations on keys, writes with their revisions, watch events.
//! - [`workload`]: KV clients and watchers that record histories.
//! - [`rng`]: seeded choices.
//! - [`scenario`]: the scenarios: a lab, workloads, faults on a timeline, the checkers.
//! - [`report`]: a scenario's markdown and JSON.
//! - [`converge`]: mirrors equal to their origins, agents' maps equal to the records.
//! - [`check`]: linearizability of single-key registers ([`check::linear`]), watch guarantees
//!   ([`check::watch`]), acknowledged writes kept ([`check::lost`]).

pub mod check;
pub mod converge;
pub mod history;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod workload;
