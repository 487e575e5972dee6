use super::*;

fn every_key() -> Vec<Key> {
    let c = || "apps".to_owned();
    vec![
        Key::Cluster { cluster: c() },
        Key::Node {
            cluster: c(),
            node: "ip-10-0-0-1.ec2.internal".into(),
        },
        Key::NodeKey {
            cluster: c(),
            node: "node-1".into(),
        },
        Key::Identity {
            cluster: c(),
            id: 0x0001_0100,
        },
        Key::IpCache {
            cluster: c(),
            ip: "10.1.2.3".parse().unwrap(),
        },
        Key::IpCache {
            cluster: c(),
            ip: "fd00::1".parse().unwrap(),
        },
        Key::Service {
            cluster: c(),
            namespace: "default".into(),
            name: "web".into(),
        },
        Key::Endpoints {
            cluster: c(),
            namespace: "default".into(),
            service: "web".into(),
            slice: "web-x7k2p".into(),
        },
        Key::Policy {
            cluster: c(),
            namespace: "prod".into(),
            name: "allow-infra".into(),
        },
        Key::Synced {
            cluster: c(),
            kind: Kind::Endpoints,
        },
        Key::RemoteConfig {
            cluster: "infra".into(),
        },
        Key::RemoteStatus {
            cluster: "infra".into(),
        },
        Key::RemoteCurrent {
            cluster: "infra".into(),
        },
        Key::NodeReach {
            cluster: c(),
            node: "node-1".into(),
        },
    ]
}

#[test]
fn every_key_round_trips_and_sits_under_its_prefix() {
    for key in every_key() {
        let text = key.to_string();
        assert_eq!(text.parse::<Key>().unwrap(), key, "{text}");
        if let Some(kind) = key.kind() {
            assert!(text.starts_with(&cluster_prefix("apps")), "{text}");
            assert!(text.starts_with(&kind_prefix("apps", kind)), "{text}");
        }
    }
    assert_eq!(
        Key::Endpoints {
            cluster: "apps".into(),
            namespace: "default".into(),
            service: "web".into(),
            slice: "web-1".into()
        }
        .to_string(),
        "mesh/v1/apps/endpoints/default/web/web-1"
    );
}

#[test]
fn keys_off_the_layout_are_refused() {
    for bad in [
        "mesh/v2/apps/cluster",
        "mesh/v1/apps",
        "mesh/v1/apps/",
        "mesh/v1/Apps/cluster",
        "mesh/v1/apps/cluster/x",
        "mesh/v1/apps/widgets/x",
        "mesh/v1/apps/nodes/",
        "mesh/v1/apps/nodes/a/b",
        "mesh/v1/apps/services/default",
        "mesh/v1/apps/endpoints/default/web",
        "mesh/v1/apps/identities/01",
        "mesh/v1/apps/identities/4294967296",
        "mesh/v1/apps/ipcache/10.1.2",
        "mesh/v1/apps/ipcache/fd00:0::1",
        "mesh/v1/apps/synced/cluster",
        "mesh/config/remotes/",
        "mesh/status/remotes/a/b",
        "mesh/status/reach/apps",
        "mesh/status/reach/apps/",
        "mesh/status/reach/apps/node-1/x",
        "mesh/status/reach/Apps/node-1",
    ] {
        assert!(bad.parse::<Key>().is_err(), "{bad} was accepted");
    }
}

#[test]
fn prefix_end_covers_exactly_the_prefix() {
    assert_eq!(prefix_end("mesh/v1/apps/"), b"mesh/v1/apps0".to_vec());
    assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
}
