use super::*;

#[test]
fn uri_round_trips() {
    let id = Identity::new("apps", Role::Remote, "infra").unwrap();
    assert_eq!(id.uri(), "spiffe://raftmesh/cluster/apps/remote/infra");
    assert_eq!(id.uri().parse::<Identity>().unwrap(), id);
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
    }
}

#[test]
fn malformed_uris_are_refused() {
    for uri in [
        "spiffe://raftmesh/cluster/apps/agent",
        "spiffe://raftmesh/cluster/apps/agent/n1/extra",
        "spiffe://raftmesh/cluster/apps/root/n1",
        "spiffe://other/cluster/apps/agent/n1",
        "spiffe://raftmesh/cluster//agent/n1",
        "spiffe://raftmesh/cluster/Apps/agent/n1",
        "spiffe://raftmesh/cluster/apps/agent/-n1",
        "spiffe://raftmesh/cluster/apps/agent/n1..x",
        "https://raftmesh/cluster/apps/agent/n1",
    ] {
        assert!(uri.parse::<Identity>().is_err(), "{uri} was accepted");
    }
}

#[test]
fn names_follow_dns_1123() {
    for ok in ["a", "node-1", "ip-10-0-0-1.ec2.internal", "0abc"] {
        check_name("name", ok).unwrap();
    }
    for bad in ["", "A", "a_b", "a/b", "-a", "a-", "a..b", &"a".repeat(254)] {
        assert!(check_name("name", bad).is_err(), "{bad:?} was accepted");
    }
}
