//! Who a certificate speaks for: the SPIFFE-style URI SAN
//! `spiffe://raftmesh/cluster/<cluster>/<role>/<name>`.
//!
//! `<cluster>` is always the cluster whose CA issued the certificate. A certificate carries
//! exactly one such URI; one with none, with two, or with a malformed one identifies nobody
//! and is refused.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::Error;

/// The scheme and trust domain every raftmesh identity starts with.
pub const PREFIX: &str = "spiffe://raftmesh/cluster/";

/// What a certificate holder may do; see ARCHITECTURE.md, "Trust model".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A member of a cluster's API server (Raft peer); name = member.
    Apiserver,
    /// A node agent; name = node.
    Agent,
    /// A person or tool with full access (meshctl); name = who.
    Admin,
    /// Another cluster reading this cluster's exports; name = the reading cluster.
    Remote,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 4] = [Role::Apiserver, Role::Agent, Role::Admin, Role::Remote];

    /// The role's path segment in the URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Apiserver => "apiserver",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Remote => "remote",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::BadRole { role: s.to_owned() })
    }
}

/// A parsed raftmesh identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The issuing cluster.
    pub cluster: String,
    /// What the holder is.
    pub role: Role,
    /// Member, node, person or reading cluster, by role.
    pub name: String,
}

impl Identity {
    /// An identity after checking that `cluster` and `name` are valid names.
    pub fn new(cluster: &str, role: Role, name: &str) -> Result<Self, Error> {
        check_name("cluster", cluster)?;
        check_name("name", name)?;
        Ok(Self {
            cluster: cluster.to_owned(),
            role,
            name: name.to_owned(),
        })
    }

    /// The URI SAN that carries it.
    pub fn uri(&self) -> String {
        format!("{PREFIX}{}/{}/{}", self.cluster, self.role, self.name)
    }

    /// The identity in a certificate (DER): its one raftmesh URI SAN.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::BadCertificate {
            reason: e.to_string(),
        })?;
        raftmesh_uri(&cert)?.parse()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(uri: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BadIdentity {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = uri
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(&format!("does not start with {PREFIX}")))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [cluster, role, name] = parts.as_slice() else {
            return Err(bad("expected <cluster>/<role>/<name> after the prefix"));
        };
        let role = role
            .parse::<Role>()
            .map_err(|_| bad(&format!("unknown role {role:?}")))?;
        Identity::new(cluster, role, name).map_err(|e| bad(&e.to_string()))
    }
}

/// The certificate's one `spiffe://raftmesh/…` URI SAN (leaf identities and CA cluster names
/// both live there).
pub(crate) fn raftmesh_uri<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, Error> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| Error::BadCertificate {
            reason: e.to_string(),
        })?;
    let found: Vec<&str> = sans
        .iter()
        .flat_map(|ext| &ext.value.general_names)
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://raftmesh/") => Some(*uri),
            _ => None,
        })
        .collect();
    match found.as_slice() {
        [uri] => Ok(uri),
        [] => Err(Error::NoIdentity),
        _ => Err(Error::BadIdentity {
            uri: found.join(", "),
            reason: "more than one raftmesh URI SAN".to_owned(),
        }),
    }
}

/// Cluster, member, node and person names: a DNS-1123 subdomain (what Kubernetes allows for
/// node names), so every name can also appear in a key path and a DNS SAN.
pub fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
