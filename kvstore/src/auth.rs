//! Authorization: what a caller may do, by the role and name in its client certificate and
//! by key path. See ARCHITECTURE.md, "Trust model".
//!
//! | role | reads | writes | leases | members, compaction, maintenance |
//! |---|---|---|---|---|
//! | `admin`, `apiserver` | all | all | all | all |
//! | `agent` (node `n`) | `mesh/v1/`, `mesh/status/` | `mesh/v1/<c>/nodekeys/<n>` and `mesh/status/reach/<c>/<n>` only | grant; keep alive, attach to and revoke only leases it granted (revoke: when every attached key is its own); look up | list members, status |
//! | `remote` | `mesh/v1/<this cluster>/` | nothing | nothing | nothing |
//!
//! A range is allowed only when all of it lies inside an allowed prefix (a range running to
//! the end of the key space, `range_end = "\0"`, lies inside none). A Txn is allowed only
//! when every compare (a read) and every operation of both branches, nested ones included,
//! is. A refusal is etcd's `PermissionDenied` and happens before anything is proposed, so it
//! changes nothing.
//!
//! The TLS layer has already refused any certificate not issued by this cluster's CA for this
//! cluster. With `--insecure-plaintext` there are no certificates and every caller may do
//! everything ([`Authorizer::open`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use certs::{Identity, Role};

use crate::error::Error;
use crate::request::{RequestOp, TxnRequest};
use crate::tls::ConnInfo;

/// What a caller limited to its own leases may do with leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLimits {
    /// Its identity, recorded on the leases it grants.
    pub owner: String,
    /// The keys it may delete by revoking a lease.
    pub keys: Vec<Vec<u8>>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plaintext mode: no identity, no restrictions.
    Unrestricted,
    /// The identity of the caller's client certificate.
    Certified(Arc<Identity>),
    /// TLS mode, but the connection carries no identity (never expected; refused).
    Unknown,
}

/// What a caller wants to do, for the rules that are not about keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// LeaseGrant, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases.
    UseLeases,
    /// MemberList, Status, Alarm GET.
    ReadCluster,
    /// Member changes, Compact, Alarm changes, Defragment, Hash, Snapshot, MoveLeader.
    Administer,
}

/// The rules of one cluster.
#[derive(Debug, Clone)]
pub struct Authorizer {
    /// Plaintext mode: no certificates, no rules.
    open: bool,
    /// Requests refused so far, for metrics.
    denied: Arc<AtomicU64>,
    /// This cluster's name, as in its certificates.
    cluster: String,
    /// What remotes may read: `mesh/v1/<cluster>/`.
    export: Vec<u8>,
}

const MESH: &[u8] = b"mesh/v1/";
const STATUS: &[u8] = b"mesh/status/";

impl Authorizer {
    /// The rules of `cluster`, for callers identified by client certificates.
    pub fn new(cluster: &str) -> Self {
        Self {
            open: false,
            denied: Arc::default(),
            cluster: cluster.to_owned(),
            export: format!("mesh/v1/{cluster}/").into_bytes(),
        }
    }

    /// No rules: the plaintext mode, where nobody has a certificate.
    pub fn open() -> Self {
        Self {
            open: true,
            denied: Arc::default(),
            cluster: String::new(),
            export: Vec::new(),
        }
    }

    /// Who sent a request, from what the TLS layer attached to it. A request without an
    /// identity is refused later unless this is the plaintext mode, so a connection that
    /// somehow skipped the certificate check can do nothing.
    pub fn caller(&self, extensions: &tonic::Extensions) -> Caller {
        if self.open {
            return Caller::Unrestricted;
        }
        match extensions.get::<ConnInfo>() {
            Some(ConnInfo {
                identity: Some(id), ..
            }) => Caller::Certified(Arc::clone(id)),
            _ => Caller::Unknown,
        }
    }

    /// This cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Requests refused so far.
    pub fn denied(&self) -> u64 {
        self.denied.load(Relaxed)
    }

    fn allow(&self, allowed: bool) -> Result<(), Error> {
        if allowed {
            Ok(())
        } else {
            self.denied.fetch_add(1, Relaxed);
            Err(Error::PermissionDenied)
        }
    }

    /// May `caller` read `key..range_end` (etcd's range encoding)?
    pub fn read(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), Error> {
        self.allow(match identity(caller)? {
            None => true,
            Some(id) => match id.role {
                Role::Admin | Role::Apiserver => true,
                Role::Agent => inside(key, range_end, MESH) || inside(key, range_end, STATUS),
                Role::Remote => inside(key, range_end, &self.export),
            },
        })
    }

    /// May `caller` write (put or delete) `key..range_end`?
    pub fn write(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), Error> {
        self.allow(match identity(caller)? {
            None => true,
            Some(id) => match id.role {
                Role::Admin | Role::Apiserver => true,
                Role::Agent => range_end.is_empty() && own_keys(id).iter().any(|k| k == key),
                Role::Remote => false,
            },
        })
    }

    /// May `caller` run `txn`? Every compare and every operation of both branches must be
    /// allowed, so a txn is never allowed for the branch it happens to take.
    pub fn txn(&self, caller: &Caller, txn: &TxnRequest) -> Result<(), Error> {
        for c in &txn.compare {
            self.read(caller, &c.key, &c.range_end)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(r) => self.read(caller, &r.key, &r.range_end)?,
                RequestOp::Put(p) => self.write(caller, &p.key, b"")?,
                RequestOp::DeleteRange(d) => self.write(caller, &d.key, &d.range_end)?,
                RequestOp::Txn(t) => self.txn(caller, t)?,
            }
        }
        Ok(())
    }

    /// The limits on `caller`'s leases: `Ok(None)` when it may use any lease; `Ok(Some(_))`
    /// when it may keep alive, revoke and attach keys to only the leases it granted, and revoke
    /// only those holding keys it may delete. Refused for callers that may not use leases.
    pub fn lease_limits(&self, caller: &Caller) -> Result<Option<LeaseLimits>, Error> {
        self.operation(caller, Operation::UseLeases)?;
        Ok(match identity(caller)? {
            None => None,
            Some(id) => match id.role {
                Role::Admin | Role::Apiserver => None,
                Role::Agent | Role::Remote => Some(LeaseLimits {
                    owner: id.uri(),
                    keys: match id.role {
                        Role::Agent => own_keys(id),
                        _ => Vec::new(),
                    },
                }),
            },
        })
    }

    /// The identity whose leases, watch streams and watchers are counted against the
    /// per-identity bounds: agents' and remotes'; `None` for the trusted roles.
    pub fn limited(&self, caller: &Caller) -> Option<String> {
        match caller {
            Caller::Certified(id) if matches!(id.role, Role::Agent | Role::Remote) => {
                Some(id.uri())
            }
            _ => None,
        }
    }

    /// Refuses (and counts) a caller using a lease it does not own.
    pub fn lease_denied(&self) -> Error {
        self.denied.fetch_add(1, Relaxed);
        Error::PermissionDenied
    }

    /// May `caller` do `op`?
    pub fn operation(&self, caller: &Caller, op: Operation) -> Result<(), Error> {
        self.allow(match identity(caller)? {
            None => true,
            Some(id) => match (id.role, op) {
                (Role::Admin | Role::Apiserver, _) => true,
                (Role::Agent, Operation::UseLeases | Operation::ReadCluster) => true,
                (Role::Agent, Operation::Administer) | (Role::Remote, _) => false,
            },
        })
    }
}

/// The caller's identity; `None` when unrestricted.
fn identity(caller: &Caller) -> Result<Option<&Identity>, Error> {
    match caller {
        Caller::Unrestricted => Ok(None),
        Caller::Certified(id) => Ok(Some(id)),
        Caller::Unknown => Err(Error::PermissionDenied),
    }
}

/// The keys an agent writes: its node key, `mesh/v1/<c>/nodekeys/<n>`, and what it finds
/// unreachable, `mesh/status/reach/<c>/<n>`.
fn own_keys(agent: &Identity) -> Vec<Vec<u8>> {
    vec![
        format!("mesh/v1/{}/nodekeys/{}", agent.cluster, agent.name).into_bytes(),
        format!("mesh/status/reach/{}/{}", agent.cluster, agent.name).into_bytes(),
    ]
}

/// Whether every key of `key..range_end` starts with `prefix` (which ends in `/`).
fn inside(key: &[u8], range_end: &[u8], prefix: &[u8]) -> bool {
    if !key.starts_with(prefix) {
        return false;
    }
    match range_end {
        // A single key.
        [] => true,
        // Every key from `key` on: leaves any prefix.
        [0] => false,
        // An empty range (end at or before the start) reads nothing.
        end if end <= key => true,
        end => end <= prefix_end(prefix).as_slice(),
    }
}

/// The smallest key after every key with `prefix` (its last byte + 1; `/` becomes `0`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    let last = end.last_mut().expect("prefixes are not empty");
    *last += 1;
    end
}

#[cfg(test)]
mod tests;
