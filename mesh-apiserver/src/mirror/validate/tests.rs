use mesh_api::SCHEMA;
use mesh_api::codec::address_bytes;
use mesh_api::records::{
    ClusterRecord, Endpoint, EndpointsRecord, IdentityRecord, IpCacheRecord, NodeRecord,
    ServiceRecord,
};

use super::*;

/// Checks for cluster `infra`, id 2, pods in 10.2.0.0/16.
fn infra() -> Validator {
    Validator::new("infra", 2, vec!["10.2.0.0/16".parse().unwrap()])
}

fn check(key: &str, record: &Record) -> Result<(), Rejection> {
    infra().check(key.as_bytes(), &record.encode())
}

fn identity_record() -> Record {
    Record::Identity(IdentityRecord {
        schema: SCHEMA,
        labels: vec!["app=web".into()],
    })
}

fn ipcache(identity: u32) -> Record {
    Record::IpCache(IpCacheRecord {
        schema: SCHEMA,
        identity,
        node_ip: "192.168.2.1".into(),
        pod: "default/web".into(),
    })
}

#[test]
fn well_formed_records_of_the_remote_pass() {
    check("mesh/v1/infra/identities/131328", &identity_record()).unwrap();
    check("mesh/v1/infra/ipcache/10.2.1.5", &ipcache(0x0002_0100)).unwrap();
    let service = Record::Service(ServiceRecord {
        schema: SCHEMA,
        namespace: "default".into(),
        name: "web".into(),
        ..Default::default()
    });
    check("mesh/v1/infra/services/default/web", &service).unwrap();
    let cluster = Record::Cluster(ClusterRecord {
        schema: SCHEMA,
        name: "infra".into(),
        id: 2,
        pod_cidrs: vec!["10.2.1.0/24".into()],
        ..Default::default()
    });
    check("mesh/v1/infra/cluster", &cluster).unwrap();
}

#[test]
fn keys_outside_the_prefix_or_the_layout_are_rejected() {
    let r = identity_record();
    for key in [
        "mesh/v1/apps/identities/131328",
        "mesh/v1/infra/identities/not-a-number",
        "mesh/v1/infra/bogus/x",
        "mesh/config/remotes/infra",
    ] {
        let e = check(key, &r).unwrap_err();
        assert_eq!(e.reason(), "layout", "{key}: {e}");
    }
    assert_eq!(
        infra()
            .check(b"mesh/v1/infra/\xff", b"")
            .unwrap_err()
            .reason(),
        "layout"
    );
}

#[test]
fn undecodable_values_are_rejected() {
    let e = infra()
        .check(b"mesh/v1/infra/services/default/web", b"\xff\xff\xff")
        .unwrap_err();
    assert_eq!(e.reason(), "value", "{e}");
    // A record of the wrong kind for its key does not decode as the key's kind either.
    let e = check("mesh/v1/infra/identities/131328", &ipcache(0x0002_0100));
    assert!(e.is_err());
}

#[test]
fn identities_of_another_cluster_are_rejected() {
    // Identity 0x0001_0100 is cluster 1's (apps), published under infra's prefix.
    let e = check("mesh/v1/infra/identities/65792", &identity_record()).unwrap_err();
    assert_eq!(e.reason(), "foreign-identity", "{e}");
    let e = check("mesh/v1/infra/ipcache/10.2.1.5", &ipcache(0x0001_0100)).unwrap_err();
    assert_eq!(e.reason(), "foreign-identity", "{e}");
    // Reserved identities carry the cluster id too.
    check("mesh/v1/infra/identities/131073", &identity_record()).unwrap();
    let e = check("mesh/v1/infra/identities/1", &identity_record()).unwrap_err();
    assert_eq!(e.reason(), "foreign-identity", "{e}");
}

#[test]
fn addresses_and_cidrs_outside_the_pod_cidrs_are_rejected() {
    let e = check("mesh/v1/infra/ipcache/10.1.1.5", &ipcache(0x0002_0100)).unwrap_err();
    assert_eq!(e.reason(), "foreign-address", "{e}");
    let slice = |ip: &str| {
        Record::Endpoints(EndpointsRecord {
            schema: SCHEMA,
            endpoints: vec![Endpoint {
                addresses: vec![address_bytes(ip.parse().unwrap())],
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    check("mesh/v1/infra/endpoints/default/web/a", &slice("10.2.3.4")).unwrap();
    let e = check("mesh/v1/infra/endpoints/default/web/a", &slice("10.1.3.4")).unwrap_err();
    assert_eq!(e.reason(), "foreign-address", "{e}");
    let node = |cidr: &str| {
        Record::Node(NodeRecord {
            schema: SCHEMA,
            name: "n1".into(),
            pod_cidrs: vec![cidr.into()],
            ..Default::default()
        })
    };
    check("mesh/v1/infra/nodes/n1", &node("10.2.7.0/24")).unwrap();
    for bad in ["10.1.0.0/24", "10.0.0.0/8", "garbage"] {
        let e = check("mesh/v1/infra/nodes/n1", &node(bad)).unwrap_err();
        assert_eq!(e.reason(), "foreign-address", "{bad}: {e}");
    }
}

#[test]
fn a_cluster_record_claiming_another_name_or_id_is_rejected() {
    for (name, id) in [("apps", 2), ("infra", 1)] {
        let r = Record::Cluster(ClusterRecord {
            schema: SCHEMA,
            name: name.into(),
            id,
            ..Default::default()
        });
        let e = check("mesh/v1/infra/cluster", &r).unwrap_err();
        assert_eq!(e.reason(), "foreign-cluster", "{e}");
    }
}

#[test]
fn oversized_records_are_rejected_before_anything_else() {
    let big = vec![b'x'; MAX_RECORD_BYTES];
    let e = infra()
        .check(b"mesh/v1/infra/services/default/web", &big)
        .unwrap_err();
    assert_eq!(e.reason(), "too-large", "{e}");
}

/// Finding 2 of the trust review: node addresses no node can have, and a pod mapped to a
/// reserved identity (its cluster's nodes').
#[test]
fn special_node_addresses_and_reserved_pod_identities_are_rejected() {
    let node = |internal: &str, external: &str| {
        Record::Node(NodeRecord {
            schema: SCHEMA,
            name: "infra-1".into(),
            internal_ips: vec![internal.into()],
            external_ips: vec![external.into()],
            pod_cidrs: vec!["10.2.1.0/24".into()],
            ..Default::default()
        })
    };
    let key = "mesh/v1/infra/nodes/infra-1";
    check(key, &node("192.168.2.1", "203.0.113.1")).unwrap();
    for (internal, external) in [
        ("127.0.0.1", "203.0.113.1"),
        ("192.168.2.1", "169.254.169.254"),
        ("224.0.0.1", "203.0.113.1"),
        ("0.0.0.0", "203.0.113.1"),
        ("192.168.2.1", "ff02::1"),
        ("not-an-ip", "203.0.113.1"),
    ] {
        let r = check(key, &node(internal, external)).expect_err(internal);
        assert_eq!(r.reason(), "node-address", "{internal} {external}: {r}");
    }
    let r = check("mesh/v1/infra/ipcache/10.2.1.5", &ipcache(2 << 16 | 6)).unwrap_err();
    assert_eq!(r.reason(), "reserved-identity");
}

/// Finding 1 of the trust review: a remote's records are bounded by kind, so rewriting them
/// cannot grow every member's history by half a megabyte a write (a node key needs ~100 B).
#[test]
fn values_are_bounded_by_kind() {
    let nodekey = |boot_id_bytes: usize| {
        Record::NodeKey(mesh_api::records::NodeKeyRecord {
            schema: SCHEMA,
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            listen_port: 51871,
            boot_id: "b".repeat(boot_id_bytes),
            probe_port: 0,
        })
    };
    let key = "mesh/v1/infra/nodekeys/infra-1";
    check(key, &nodekey(36)).unwrap();
    let r = check(key, &nodekey(1400 << 10)).unwrap_err();
    assert_eq!(r.reason(), "too-large", "{r}");
    let r = check(key, &nodekey(2 << 10)).unwrap_err();
    assert!(r.to_string().contains("(1024)"), "{r}");
    let identity = |label_bytes: usize| {
        Record::Identity(IdentityRecord {
            schema: SCHEMA,
            labels: vec![format!("app={}", "x".repeat(label_bytes))],
        })
    };
    let key = "mesh/v1/infra/identities/131328";
    check(key, &identity(32 << 10)).unwrap();
    assert_eq!(
        check(key, &identity(65 << 10)).unwrap_err().reason(),
        "too-large"
    );
}

#[test]
fn an_endpoint_hostname_must_be_a_dns_label() {
    let slice = |hostname: &str| {
        Record::Endpoints(EndpointsRecord {
            schema: SCHEMA,
            endpoints: vec![Endpoint {
                addresses: vec![address_bytes("10.2.3.4".parse().unwrap())],
                ready: true,
                hostname: hostname.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    for good in ["", "db-0", "a"] {
        check("mesh/v1/infra/endpoints/default/db/a", &slice(good)).unwrap();
    }
    // A dot would let a remote publish a name under another service or cluster.
    for bad in ["db-0.apps", "Db", "-x", &"a".repeat(64), "x y"] {
        let e = check("mesh/v1/infra/endpoints/default/db/a", &slice(bad)).unwrap_err();
        assert!(e.to_string().contains("DNS-1123 label"), "{bad}: {e}");
    }
}
