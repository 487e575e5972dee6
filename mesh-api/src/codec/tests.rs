use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;
use crate::records::{Endpoint, PolicyPort, PolicyRule};

/// The slice the crate docs measure: 100 ready IPv4 endpoints over 10 nodes in 3 zones.
fn slice_of_100() -> EndpointsRecord {
    let nodes: Vec<String> = (1..=10)
        .map(|n| format!("ip-10-0-{n}-17.ec2.internal"))
        .collect();
    let zones: Vec<String> = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
        .map(String::from)
        .to_vec();
    EndpointsRecord {
        schema: SCHEMA,
        ports: vec![Port {
            name: "http".into(),
            port: 8080,
            protocol: "TCP".into(),
        }],
        endpoints: (0..100u32)
            .map(|i| Endpoint {
                addresses: vec![address_bytes(
                    Ipv4Addr::new(10, 1, (i / 10) as u8, (i * 7 % 250) as u8 + 2).into(),
                )],
                node: i % 10 + 1,
                zone: i % 3 + 1,
                ready: true,
                serving: true,
                terminating: false,
                ..Default::default()
            })
            .collect(),
        nodes,
        zones,
    }
}

#[test]
fn a_slice_of_100_endpoints_has_the_size_the_docs_state() {
    let bytes = Record::Endpoints(slice_of_100()).encode();
    assert_eq!(
        bytes.len(),
        SLICE_100_BYTES,
        "update SLICE_100_BYTES and the crate docs"
    );
}

fn every_record() -> Vec<Record> {
    vec![
        Record::Cluster(ClusterRecord {
            schema: SCHEMA,
            name: "apps".into(),
            id: 7,
            pod_cidrs: vec!["10.1.0.0/16".into()],
            service_cidrs: vec!["10.96.0.0/12".into()],
            api_endpoints: vec!["https://apps.example:2379".into()],
            ca_fingerprint: "ab".repeat(32),
            ..Default::default()
        }),
        Record::Node(NodeRecord {
            schema: SCHEMA,
            name: "node-1".into(),
            internal_ips: vec!["10.0.0.1".into()],
            external_ips: vec![],
            pod_cidrs: vec!["10.1.1.0/24".into()],
            labels: BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]),
            zone: "z1".into(),
        }),
        Record::NodeKey(NodeKeyRecord {
            schema: SCHEMA,
            public_key: "k".into(),
            listen_port: 51820,
            boot_id: "b".into(),
            probe_port: 51821,
        }),
        Record::Identity(IdentityRecord {
            schema: SCHEMA,
            labels: vec!["app=web".into()],
        }),
        Record::IpCache(IpCacheRecord {
            schema: SCHEMA,
            identity: 0x0007_0100,
            node_ip: "10.0.0.1".into(),
            pod: "default/web-1".into(),
        }),
        Record::Service(ServiceRecord {
            schema: SCHEMA,
            namespace: "default".into(),
            name: "web".into(),
            cluster_ips: vec!["10.96.0.10".into()],
            ports: vec![Port {
                name: "http".into(),
                port: 80,
                protocol: "TCP".into(),
            }],
            global: true,
            shared: true,
            affinity: Affinity::Local as i32,
            ..Default::default()
        }),
        Record::Endpoints(slice_of_100()),
        Record::Policy(PolicyRecord {
            schema: SCHEMA,
            namespace: "prod".into(),
            name: "allow".into(),
            endpoint_selector: BTreeMap::from([("app".into(), "db".into())]),
            ingress: vec![PolicyRule {
                from_clusters: vec!["infra".into()],
                from_labels: BTreeMap::from([("app".into(), "web".into())]),
                ports: vec![PolicyPort {
                    port: 5432,
                    protocol: "TCP".into(),
                }],
            }],
        }),
        Record::Synced(SyncedRecord { schema: SCHEMA }),
    ]
}

#[test]
fn every_record_round_trips_and_encodes_deterministically() {
    for record in every_record() {
        let bytes = record.encode();
        assert_eq!(Record::decode(record.kind(), &bytes).unwrap(), record);
        assert_eq!(record.clone().encode(), bytes, "{:?}", record.kind());
    }
}

#[test]
fn records_of_a_newer_schema_or_without_one_are_refused() {
    let newer = Record::Synced(SyncedRecord { schema: SCHEMA + 1 }).encode();
    assert_eq!(
        Record::decode(Kind::Synced, &newer),
        Err(DecodeError::NewerSchema {
            kind: Kind::Synced,
            schema: SCHEMA + 1
        })
    );
    assert_eq!(
        Record::decode(Kind::Identity, &[]),
        Err(DecodeError::NoSchema {
            kind: Kind::Identity
        })
    );
    assert!(matches!(
        Record::decode(Kind::Node, b"\xff\xff\xff"),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn decode_at_checks_the_key() {
    let rec = Record::Identity(IdentityRecord {
        schema: SCHEMA,
        labels: vec!["a=b".into()],
    });
    let (key, got) = Record::decode_at("mesh/v1/apps/identities/65792", &rec.encode()).unwrap();
    assert_eq!(
        key,
        Key::Identity {
            cluster: "apps".into(),
            id: 65792
        }
    );
    assert_eq!(got, rec);
    assert!(matches!(
        Record::decode_at("mesh/config/remotes/x", b""),
        Err(DecodeError::NotARecord { .. })
    ));
    assert!(matches!(
        Record::decode_at("mesh/v1/apps/bogus/x", b""),
        Err(DecodeError::Key(_))
    ));
}

#[test]
fn people_see_addresses_and_names_not_indexes() {
    let json = Record::Endpoints(slice_of_100()).to_json();
    let first = &json["endpoints"][0];
    assert_eq!(first["addresses"][0], "10.1.0.2");
    assert_eq!(first["node"], "ip-10-0-1-17.ec2.internal");
    assert_eq!(first["zone"], "eu-west-1a");
    assert_eq!(json["ports"][0]["port"], 8080);
    let svc = every_record()
        .into_iter()
        .find(|r| r.kind() == Kind::Service)
        .unwrap();
    assert_eq!(svc.to_json()["affinity"], "local");
    assert_eq!(address(&[1, 2, 3]), "<3 bytes>");
    assert_eq!(
        address(&address_bytes("fd00::1".parse().unwrap())),
        "fd00::1"
    );
}
