//! Security identities: a `u32` whose high 16 bits are the cluster id and whose low 16 bits
//! are the identity's number within that cluster.
//!
//! Numbers below [`FIRST_LOCAL_ID`] are reserved. Those in use ([`RESERVED`], numbered as
//! Cilium numbers them) mean the same thing in every cluster, so their labels are defined
//! here, by every reader, and never taken from a record: a remote cannot give its
//! `remote-node` identity the labels of one of our namespaces.

/// The label every pod identity carries for the pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// The first number that is not reserved (1..=255 are).
pub const FIRST_LOCAL_ID: u32 = 256;

/// The prefix of a reserved identity's label.
pub const RESERVED_PREFIX: &str = "reserved:";

/// Local number of `reserved:host` (this node, from its own pods' point of view).
pub const HOST: u16 = 1;
/// Local number of `reserved:world`.
pub const WORLD: u16 = 2;
/// Local number of `reserved:remote-node` (another node of the identity's cluster).
pub const REMOTE_NODE: u16 = 6;

/// The reserved identities in use, with the one label each stands for.
pub const RESERVED: [(u16, &str); 8] = [
    (HOST, "reserved:host"),
    (WORLD, "reserved:world"),
    (3, "reserved:unmanaged"),
    (4, "reserved:health"),
    (5, "reserved:init"),
    (REMOTE_NODE, "reserved:remote-node"),
    (7, "reserved:kube-apiserver"),
    (8, "reserved:ingress"),
];

/// The identity numbered `local` in cluster `cluster_id`.
pub fn identity(cluster_id: u16, local: u16) -> u32 {
    u32::from(cluster_id) << 16 | u32::from(local)
}

/// The cluster id an identity carries.
pub fn cluster_of(identity: u32) -> u16 {
    (identity >> 16) as u16
}

/// Whether `identity`'s number is in the reserved range.
pub fn is_reserved(identity: u32) -> bool {
    identity & 0xffff < FIRST_LOCAL_ID
}

/// The label of reserved identity `identity`, if it is one in use.
pub fn reserved_label(identity: u32) -> Option<&'static str> {
    RESERVED
        .iter()
        .find(|(n, _)| u32::from(*n) == identity & 0xffff)
        .map(|(_, label)| *label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_numbers_are_below_the_first_local_id_and_labelled_once() {
        for (n, label) in RESERVED {
            let id = identity(7, n);
            assert!(is_reserved(id), "{label}");
            assert_eq!(cluster_of(id), 7);
            assert_eq!(reserved_label(id), Some(label));
            assert!(label.starts_with(RESERVED_PREFIX));
        }
        assert!(!is_reserved(identity(7, 256)));
        assert_eq!(reserved_label(identity(7, 9)), None, "reserved but unused");
        assert_eq!(reserved_label(identity(7, 256 + 6)), None);
    }
}
