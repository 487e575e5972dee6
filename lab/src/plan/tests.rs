use std::collections::BTreeSet;

use super::*;

#[test]
fn addresses_follow_the_layout() {
    let spec = LabSpec::default_lab();
    let plan = Plan::new(3);
    let infra = spec.cluster("infra").unwrap();
    let members = plan.members(1, infra);
    assert_eq!(members[0].ip, Ipv4Addr::new(192, 168, 2, 101));
    assert_eq!(members[2].host_ip, Ipv4Addr::new(198, 18, 3, 35));
    assert_eq!(members[0].netns, "rl3-infra-m1");
    let nodes = plan.nodes(infra);
    assert_eq!(nodes[1].ip, Ipv4Addr::new(192, 168, 2, 2));
    assert_eq!(nodes[1].pod_net, Ipv4Addr::new(10, 2, 2, 0));
    assert_eq!(nodes[1].wg_if, "rl3c2n2");
    assert_eq!(plan.host_range(), (Ipv4Addr::new(198, 18, 3, 0), 24));
    assert_eq!(Plan::new(300).host_ip(), Ipv4Addr::new(198, 19, 44, 1));
    assert_eq!(Plan::vip(infra, 1), Ipv4Addr::new(10, 255, 2, 11));
}

#[test]
fn pods_get_the_next_address_of_their_node() {
    let spec = LabSpec::default_lab();
    let plan = Plan::new(0);
    let pods = plan.pods(spec.cluster("infra").unwrap());
    let by_name = |n: &str| pods.iter().find(|p| p.spec.name == n).unwrap();
    // infra: echo-1 on node-1; echo-2, client, db on node-2.
    assert_eq!(by_name("echo-1").ip, Ipv4Addr::new(10, 2, 1, 10));
    assert_eq!(by_name("echo-2").ip, Ipv4Addr::new(10, 2, 2, 10));
    assert_eq!(by_name("client").ip, Ipv4Addr::new(10, 2, 2, 11));
    assert_eq!(by_name("db").ip, Ipv4Addr::new(10, 2, 2, 12));
    // infra is an EKS-flavored cluster: its pods' host interfaces are the VPC CNI's `eni…`,
    // unique on their node; odd slots are on the secondary ENI.
    assert!(
        by_name("db").host_if.starts_with("eni"),
        "{}",
        by_name("db").host_if
    );
    assert_ne!(by_name("db").host_if, by_name("client").host_if);
    assert_eq!((by_name("client").slot, by_name("db").slot), (1, 2));
    let mut plain = spec.cluster("infra").unwrap().clone();
    plain.flavor = crate::flavor::Flavor::Plain;
    let pods = plan.pods(&plain);
    assert_eq!(
        pods.iter().find(|p| p.spec.name == "db").unwrap().host_if,
        "lxc2"
    );
}

#[test]
fn nothing_is_shared_between_slots_or_clusters() {
    // Every address and name of the largest lab is unique, and names fit their limits.
    let mut text = String::from("clusters:\n");
    for i in 1..=15 {
        text.push_str(&format!(
            "- {{name: c{i}, id: {}, members: 7, nodes: 50}}\n",
            235 + i
        ));
    }
    let spec = LabSpec::parse(&text).unwrap();
    let mut ips = BTreeSet::new();
    let mut names = BTreeSet::new();
    for slot in [0, 511] {
        let plan = Plan::new(slot);
        for (i, c) in indexed(&spec) {
            for m in plan.members(i, c) {
                assert!(ips.insert((slot, m.ip)) && ips.insert((slot, m.host_ip)));
                assert!(names.insert(m.netns));
            }
            for n in plan.nodes(c) {
                assert!(ips.insert((slot, n.ip)));
                assert!(n.wg_if.len() <= 15, "{}", n.wg_if);
                assert!(names.insert(n.wg_if.clone()) && names.insert(n.netns));
            }
        }
        assert!(plan.host_if().len() <= 15);
    }
}

#[test]
fn selectors_match_namespace_and_every_label() {
    let spec = LabSpec::default_lab();
    let apps = spec.cluster("apps").unwrap();
    let pods = Plan::new(0).pods(apps);
    let echo = &apps.services[0];
    let names: Vec<&str> = selected(echo, &pods)
        .iter()
        .map(|p| p.spec.name.as_str())
        .collect();
    assert_eq!(names, ["echo-1", "echo-2"]);
    let mut other_ns = echo.clone();
    other_ns.namespace = "prod".into();
    assert!(selected(&other_ns, &pods).is_empty());
}
