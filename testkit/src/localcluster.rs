//! Start, kill, pause, restart and grow N-member etcd-API clusters as local processes on
//! 127.0.0.1, for tests and benchmarks.
//!
//! Both flavors — raftmesh's `mesh-apiserver` and the real etcd — are started with the same etcd
//! command-line flags, so a test written against one runs unchanged against the other:
//!
//! ```text
//! --name n1 --data-dir <dir> --listen-client-urls http://127.0.0.1:<c> --advertise-client-urls …
//! --listen-peer-urls http://127.0.0.1:<p> --initial-advertise-peer-urls …
//! --initial-cluster n1=…,n2=…,n3=… --initial-cluster-state new|existing
//! --initial-cluster-token <token> [--snapshot-count N] [--listen-metrics-urls …] [extra args]
//! ```
//!
//! `RAFTMESH_TEST_SERVER=etcd` makes [`Flavor::from_env`] pick etcd, which is how the expected
//! values of our acceptance tests are checked against the reference.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use testkit::localcluster::{Cluster, Flavor, Spec};
//! let flavor = Flavor::from_env("target/debug/mesh-apiserver");
//! let mut cluster = Cluster::start(flavor, Spec::default()).await?;
//! let leader = cluster.leader().await?;
//! cluster.kill(leader);
//! let out = cluster.etcdctl().args(["put", "k", "v"]).output()?;
//! assert_eq!(out.stdout, b"OK\n");
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`flavor`]: which server binary runs ([`Flavor`]) and how the environment selects it.
//! - [`spec`]: what to start ([`Spec`]).
//! - [`member`]: one member's name, ports, data dir and exact command line ([`MemberConfig`]).
//! - [`ports`]: free-port picking, unique within the process.
//! - [`cluster`]: the running processes ([`Cluster`]): readiness polling, kill / pause / restart,
//!   membership changes, clients and `etcdctl` commands, logs.
//!
//! Every member's stdout and stderr go to `<tempdir>/<name>.log`; set `RAFTMESH_KEEP_LOGS` to keep
//! the temporary directory after the cluster is dropped.

pub mod cluster;
pub mod flavor;
pub mod member;
pub mod ports;
pub mod spec;

pub use cluster::Cluster;
pub use flavor::Flavor;
pub use member::{ClusterState, MemberConfig, MemberPorts};
pub use spec::Spec;
