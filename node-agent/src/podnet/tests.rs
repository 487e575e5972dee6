use super::*;

fn link(index: u32, name: &str, kind: Option<&str>, peer_elsewhere: bool) -> Link {
    Link {
        index,
        name: name.into(),
        kind: kind.map(str::to_owned),
        peer_elsewhere,
        master: None,
        has_ipv4: false,
    }
}

fn route(dst: &str, len: u8, oif: u32) -> Route {
    Route {
        dst: (dst.parse().unwrap(), len),
        oif: Some(oif),
        via_gateway: false,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A Talos node (Flannel): ens3 is the NIC, cni0 the bridge with the pods' veth ports,
/// flannel.1 the VXLAN device, cilium-style veth pairs inside the host namespace are not pods.
fn talos() -> (Vec<Link>, Vec<Route>) {
    let mut ens3 = link(2, "ens3", None, false);
    ens3.has_ipv4 = true;
    let mut cni0 = link(4, "cni0", Some("bridge"), false);
    cni0.has_ipv4 = true;
    let mut flannel = link(3, "flannel.1", Some("vxlan"), false);
    flannel.has_ipv4 = true;
    let mut a = link(5, "veth3f2a9c1e", Some("veth"), true);
    a.master = Some(4);
    let mut b = link(6, "veth91bd0e77", Some("veth"), true);
    b.master = Some(4);
    let links = vec![
        link(1, "lo", None, false),
        ens3,
        flannel,
        cni0,
        a,
        b,
        // A veth pair inside the host namespace (cilium_host/cilium_net): not a pod's.
        link(7, "cilium_host", Some("veth"), false),
    ];
    let routes = vec![
        Route {
            dst: (ip("0.0.0.0"), 0),
            oif: Some(2),
            via_gateway: true,
        },
        route("10.244.0.0", 24, 4),
        route("10.244.1.0", 24, 3),
        route("192.168.1.0", 24, 2),
    ];
    (links, routes)
}

/// An EKS node (VPC CNI): eth0 and the secondary ENI eth1 are NICs, pods hang off eni…
/// point-to-point veths with /32 routes in the main table.
fn eks() -> (Vec<Link>, Vec<Route>) {
    let mut eth0 = link(2, "eth0", None, false);
    eth0.has_ipv4 = true;
    let mut eth1 = link(3, "eth1", None, false);
    eth1.has_ipv4 = true;
    let links = vec![
        link(1, "lo", None, false),
        eth0,
        eth1,
        link(8, "eni5a3f2c9d1b0", Some("veth"), true),
        link(9, "enib41c7e2a99f", Some("veth"), true),
    ];
    let routes = vec![
        route("10.0.12.34", 32, 8),
        route("10.0.40.7", 32, 9),
        route("10.0.0.0", 16, 2),
    ];
    (links, routes)
}

#[test]
fn pod_interfaces_are_found_whatever_their_name() {
    let (links, _) = talos();
    let found = pod_interfaces(&links, true, &[]);
    assert_eq!(
        found,
        [
            ("veth3f2a9c1e".to_owned(), 5),
            ("veth91bd0e77".to_owned(), 6)
        ]
        .into()
    );
    let (links, _) = eks();
    let found: Vec<String> = pod_interfaces(&links, true, &[])
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(found, ["eni5a3f2c9d1b0", "enib41c7e2a99f"]);
}

#[test]
fn an_addressed_veth_is_the_node_uplink_not_a_pod() {
    // A node that is itself a container (kind, the lab): its eth0 is a veth to elsewhere.
    let mut eth0 = link(2, "eth0", Some("veth"), true);
    eth0.has_ipv4 = true;
    assert!(pod_interfaces(&[eth0.clone()], true, &[]).is_empty());
    // A prefix names what discovery leaves out; without discovery, prefixes alone.
    assert_eq!(pod_interfaces(&[eth0], true, &["eth".to_owned()]).len(), 1);
    let (links, _) = talos();
    assert!(pod_interfaces(&links, false, &[]).is_empty());
    let named = pod_interfaces(&links, false, &["veth3".to_owned()]);
    assert_eq!(named, [("veth3f2a9c1e".to_owned(), 5)].into());
}

#[test]
fn pods_behind_an_enforced_bridge_or_veth_are_enforced() {
    let (links, routes) = talos();
    let pods: BTreeSet<Ipv4Addr> = [ip("10.244.0.5"), ip("10.244.0.6")].into();
    assert!(unenforced(&pods, &routes, &links, &[5, 6].into()).is_empty());
    let (links, routes) = eks();
    let pods: BTreeSet<Ipv4Addr> = [ip("10.0.12.34"), ip("10.0.40.7")].into();
    assert!(unenforced(&pods, &routes, &links, &[8, 9].into()).is_empty());
}

#[test]
fn a_bridge_port_without_the_programs_leaves_its_bridge_s_pods_unenforced() {
    let (links, routes) = talos();
    let pods: BTreeSet<Ipv4Addr> = [ip("10.244.0.5")].into();
    let got = unenforced(&pods, &routes, &links, &[5].into());
    assert_eq!(
        got[&ip("10.244.0.5")],
        "behind bridge cni0, whose ports veth91bd0e77 have no policy programs"
    );
}

#[test]
fn a_pod_routed_elsewhere_is_unenforced_with_the_reason() {
    let (mut links, mut routes) = eks();
    // Attaching failed on one eni; another pod is routed through a dummy device; a third has
    // no route of its own (the node's range through eth0 is not a pod's link).
    links.push(link(10, "dummy0", Some("dummy"), false));
    routes.push(route("10.0.50.1", 32, 10));
    let pods: BTreeSet<Ipv4Addr> = [
        ip("10.0.12.34"),
        ip("10.0.40.7"),
        ip("10.0.50.1"),
        ip("172.16.0.1"),
    ]
    .into();
    let got = unenforced(&pods, &routes, &links, &[8].into());
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [
            (
                ip("10.0.40.7"),
                "routed via enib41c7e2a99f (veth), which has no policy programs".to_owned()
            ),
            (
                ip("10.0.50.1"),
                "routed via dummy0 (dummy), which has no policy programs".to_owned()
            ),
            (ip("172.16.0.1"), "no route to it".to_owned()),
        ]
    );
    let (links, routes) = talos();
    let got = unenforced(&[ip("10.244.9.9")].into(), &routes, &links, &[5, 6].into());
    assert_eq!(
        got[&ip("10.244.9.9")],
        "routed through a gateway out of ens3 (not a pod of this node's links)"
    );
}
