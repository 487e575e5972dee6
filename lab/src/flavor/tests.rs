use super::*;

#[test]
fn pod_interfaces_are_named_as_each_platform_names_them() {
    assert_eq!(Flavor::Plain.host_if("apps", "demo", "echo-1", 2), "lxc2");
    let talos = Flavor::Talos.host_if("apps", "demo", "echo-1", 0);
    assert!(talos.starts_with("veth") && talos.len() == 12, "{talos}");
    let eks = Flavor::Eks.host_if("infra", "demo", "echo-1", 0);
    assert!(eks.starts_with("eni") && eks.len() == 14, "{eks}");
    // Stable, and different for another pod.
    assert_eq!(eks, Flavor::Eks.host_if("infra", "demo", "echo-1", 5));
    assert_ne!(eks, Flavor::Eks.host_if("infra", "demo", "echo-2", 0));
}

#[test]
fn cgroups_follow_the_kubelet_drivers() {
    let node = Path::new("/cg/lab/apps/node-1");
    assert_eq!(Flavor::Plain.agent_cgroup_root(node), node.join("pods"));
    assert_eq!(
        Flavor::Plain.pod_cgroup(node, "client"),
        node.join("pods/client")
    );
    assert_eq!(Flavor::Plain.agent_cgroup(node), node.join("agent"));
    assert_eq!(Flavor::Talos.agent_cgroup_root(node), node);
    assert_eq!(
        Flavor::Talos.pod_cgroup(node, "client"),
        node.join("kubepods/besteffort/podclient/echo")
    );
    assert_eq!(
        Flavor::Eks.pod_cgroup(node, "echo-1"),
        node.join(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podecho_1.slice/cri-containerd-echo.scope"
        )
    );
    // The agent's own cgroup is below its root on Kubernetes nodes, and never a pod's.
    assert!(Flavor::Eks.agent_cgroup(node).starts_with(node));
    assert_ne!(
        Flavor::Talos.agent_cgroup(node),
        Flavor::Talos.pod_cgroup(node, "raftmesh-agent")
    );
}

#[test]
fn masquerade_rules_are_the_cnis() {
    assert!(
        Flavor::Plain
            .masquerade("10.1.1.0/24", "10.1.0.0/16", &[], "192.168.1.1")
            .is_none()
    );
    let (program, flannel) = Flavor::Talos
        .masquerade("10.1.1.0/24", "10.1.0.0/16", &[], "192.168.1.1")
        .unwrap();
    assert_eq!(program, "nft");
    assert!(
        flannel.contains("type nat hook postrouting priority srcnat;"),
        "{flannel}"
    );
    assert!(
        flannel.contains("ip saddr 10.1.1.0/24 ip daddr 10.1.0.0/16 return"),
        "{flannel}"
    );
    assert!(
        flannel.contains("ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"),
        "{flannel}"
    );
    let vpc = ["192.168.2.0/24".to_owned(), "10.2.0.0/16".to_owned()];
    let (program, aws) = Flavor::Eks
        .masquerade("10.2.1.0/24", "10.2.0.0/16", &vpc, "192.168.2.1")
        .unwrap();
    assert_eq!(program, "iptables-restore");
    assert!(
        aws.starts_with("*nat\n:AWS-SNAT-CHAIN-0 - [0:0]\n"),
        "{aws}"
    );
    assert!(
        aws.contains(
            "-A AWS-SNAT-CHAIN-0 -d 10.2.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN"
        ),
        "{aws}"
    );
    assert!(
        aws.contains("! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 192.168.2.1 --random-fully"),
        "{aws}"
    );
    assert!(aws.ends_with("COMMIT\n"));
}

#[test]
fn only_eks_nodes_lack_pod_cidrs_and_tcx() {
    assert!(Flavor::Plain.node_pod_cidr() && Flavor::Talos.node_pod_cidr());
    assert!(!Flavor::Eks.node_pod_cidr());
    assert_eq!(Flavor::Eks.agent_args(), ["--policy-attach", "tc"]);
    assert!(Flavor::Talos.agent_args().is_empty());
    assert!(Flavor::Eks.secondary_eni(1) && !Flavor::Eks.secondary_eni(0));
    assert!(!Flavor::Talos.secondary_eni(1));
}
