//! How raftmesh's programs reach a cluster's API server, written once: the node agent,
//! meshctl, the API server's own controllers, chaos, the benchmarks and the tests all connect
//! through here, so a lesson learnt by one (a client balanced over every member keeps choosing
//! a killed one; a member cut off from its peers has nothing new to say) holds for all.
//!
//! - [`pki`]: the PKI directory as `meshctl pki init` writes it, as types.
//! - [`Credentials`]: CA bundle, client certificate and key files, read at every connect (a
//!   rotated certificate is used by the next connection).
//! - [`Settings`]: timeouts and keep-alives.
//! - [`member`]: a client of one member; [`with_leader`]: the first member, from a given one
//!   on, that answers and knows a leader — one member at a time, checked before use;
//!   [`answering`]: the same, settling for a member without a leader (to show a cluster's
//!   own state); [`balanced`]: over every member, as clientv3 does — for tests only.
//! - [`contexts`] (feature `contexts`): named clusters as meshctl's config file and kubeconfig
//!   contexts give them, resolved to endpoints and credentials.
//! - [`remote`] (feature `remote`): a remote cluster's API server as the mirror reaches it —
//!   endpoints resolved on every attempt, the connection's own TLS material.
//!
//! See ARCHITECTURE.md (the crates and who may depend on whom).

#[cfg(feature = "contexts")]
pub mod contexts;
pub mod pki;
#[cfg(feature = "remote")]
pub mod remote;

mod connect;

pub use connect::{
    Credentials, Error, STATUS_TIMEOUT, Settings, answering, balanced, member, with_leader,
};
pub use etcd_client::Client;
