//! Member and cluster identities, and etcd's `--initial-cluster` syntax.
//!
//! As in etcd, a member id is a hash of the member's peer URLs and the cluster token, so
//! every member computes the same ids from the same `--initial-cluster` without talking; a
//! member added later gets an id salted with the time of the MemberAdd, and learns it from
//! the cluster when it starts (see `server.rs`). The cluster id is a hash of the initial
//! voters' ids.

use std::collections::BTreeMap;

use crate::raft_types::{Member, NodeId};

/// 64-bit FNV-1a: a stable hash, the same in every build and on every machine.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The id of a member with these peer URLs in the cluster `token`; `salt` is empty for
/// initial members and the time of the MemberAdd for added ones. Never 0.
pub fn member_id(peer_urls: &[String], token: &str, salt: &[u8]) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    fnv1a(&[joined.as_bytes(), token.as_bytes(), salt]).max(1)
}

/// The cluster id of a cluster whose first membership has these voters.
pub fn cluster_id_of(voters: impl Iterator<Item = NodeId>) -> u64 {
    let mut ids: Vec<NodeId> = voters.collect();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a(&[&bytes]).max(1)
}

/// A bad `--initial-cluster` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitialClusterError {
    /// An element is not `name=url`.
    #[error("--initial-cluster: {element:?} is not name=url")]
    Malformed {
        /// The element.
        element: String,
    },
    /// The same peer URL is listed for two members.
    #[error("--initial-cluster: peer URL {url} is listed twice")]
    DuplicateUrl {
        /// The URL.
        url: String,
    },
    /// The list is empty.
    #[error("--initial-cluster is empty")]
    Empty,
}

/// Parses `name1=url1,name1=url2,name2=url3`: a member may have several URLs.
pub fn parse_initial_cluster(
    value: &str,
    token: &str,
) -> Result<BTreeMap<NodeId, Member>, InitialClusterError> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for element in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, url)) = element.split_once('=') else {
            return Err(InitialClusterError::Malformed {
                element: element.to_owned(),
            });
        };
        if name.is_empty() || url.is_empty() {
            return Err(InitialClusterError::Malformed {
                element: element.to_owned(),
            });
        }
        if !seen.insert(url.to_owned()) {
            return Err(InitialClusterError::DuplicateUrl {
                url: url.to_owned(),
            });
        }
        by_name
            .entry(name.to_owned())
            .or_default()
            .push(url.to_owned());
    }
    if by_name.is_empty() {
        return Err(InitialClusterError::Empty);
    }
    Ok(by_name
        .into_iter()
        .map(|(name, peer_urls)| {
            let id = member_id(&peer_urls, token, b"");
            (id, Member { name, peer_urls })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = member_id(&["http://a:1".into(), "http://b:2".into()], "t", b"");
        let b = member_id(&["http://b:2".into(), "http://a:1".into()], "t", b"");
        assert_eq!(a, b);
        assert_ne!(
            a,
            member_id(&["http://a:1".into(), "http://b:2".into()], "u", b"")
        );
        assert_eq!(fnv1a(&[b"abc"]), fnv1a(&[b"abc"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn initial_cluster_parsing() {
        let m =
            parse_initial_cluster("n1=http://127.0.0.1:1,n2=http://127.0.0.1:2", "tok").unwrap();
        assert_eq!(m.len(), 2);
        assert!(
            m.values()
                .any(|x| x.name == "n1" && x.peer_urls == ["http://127.0.0.1:1"])
        );
        assert_eq!(
            parse_initial_cluster("n1", "t"),
            Err(InitialClusterError::Malformed {
                element: "n1".into()
            })
        );
        assert_eq!(
            parse_initial_cluster("a=u,b=u", "t"),
            Err(InitialClusterError::DuplicateUrl { url: "u".into() })
        );
        assert_eq!(
            parse_initial_cluster("", "t"),
            Err(InitialClusterError::Empty)
        );
    }
}
