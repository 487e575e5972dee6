//! Findings 4, 7 and 9 of the trust review, in the kernel: IPv6 to an enforced pod is dropped;
//! a pod whose identity is not known yet takes only this node's traffic
//! (`--enforce-unknown-pods`); a pod forging another pod's address opens nothing for it, and
//! where the node routes each pod by its own /32 its forged packets are dropped.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
};

use crate::support::*;

/// An IPv4/UDP packet from `src` to `dst` (the kernel fills the IP checksum and length; a zero
/// UDP checksum means none).
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 20 + 8 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// Sends, from `pod`'s namespace, a UDP packet claiming to come from `src`.
fn send_forged(node: &Node, pod: &str, src: SocketAddrV4, dst: SocketAddrV4) {
    let packet = udp_packet(src, dst, b"forged");
    in_netns(&node.pods[pod].ns.path(), || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Raw,
        )
        .expect("raw socket");
        for _ in 0..3 {
            sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &packet,
                &SockaddrIn::from(dst),
                MsgFlags::empty(),
            )
            .expect("sendto");
        }
    });
}

/// Whether `pod`, sending from `port` to `to`, gets an answer within a second.
fn udp_answered(node: &Node, pod: &str, port: u16, to: SocketAddrV4) -> bool {
    in_netns(&node.pods[pod].ns.path(), || {
        let socket = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        (0..3).any(|_| {
            socket.send_to(b"hello", to).expect("send");
            socket.recv_from(&mut buf).is_ok()
        })
    })
}

/// A drop counter; `None` when the agent does not answer or does not export it.
fn counter(node: &Node, name: &str) -> Option<f64> {
    metric(
        &node.metrics()?,
        &format!("raftmesh_agent_drops_total{{reason=\"{name}\"}}"),
    )
}

fn ns_label() -> &'static str {
    "io.kubernetes.pod.namespace=demo"
}

/// The victim is enforced and admits nothing but this node; the others are pods of this
/// cluster with identities of their own.
fn guarded_node(pods: &[(&str, &str)]) -> Node {
    let mut node = Node::new(pods);
    let mut records = vec![cluster(CLUSTER, CLUSTER_ID)];
    records.extend(synced(CLUSTER));
    records.push(identity(
        CLUSTER,
        1 << 16 | 300,
        &["app=victim", ns_label()],
    ));
    for (i, (name, _)) in pods.iter().enumerate() {
        let id = if *name == "victim" {
            1 << 16 | 300
        } else {
            1 << 16 | (400 + i as u32)
        };
        if *name != "new" {
            records.push(ipcache(CLUSTER, node.pods[*name].ip, id));
        }
    }
    records.push(policy_selecting("app", "victim"));
    node.write(records);
    node.serve(&pods.iter().map(|(n, _)| *n).collect::<Vec<_>>());
    node
}

/// A policy in `demo` selecting `key=value` with one rule that admits nobody here.
fn policy_selecting(key: &str, value: &str) -> (mesh_api::Key, Option<mesh_api::Record>) {
    use mesh_api::records::{PolicyRecord, PolicyRule};
    (
        mesh_api::Key::Policy {
            cluster: CLUSTER.to_owned(),
            namespace: "demo".to_owned(),
            name: "guard".to_owned(),
        },
        Some(mesh_api::Record::Policy(PolicyRecord {
            schema: mesh_api::SCHEMA,
            namespace: "demo".to_owned(),
            name: "guard".to_owned(),
            endpoint_selector: [(key.to_owned(), value.to_owned())].into(),
            ingress: vec![PolicyRule {
                from_clusters: vec![],
                from_labels: [("app".to_owned(), "nobody".to_owned())].into(),
                ports: vec![],
            }],
        })),
    )
}

fn wait_attached(node: &Node, interfaces: usize) {
    eventually(
        "policy programs on every pod interface",
        Duration::from_secs(10),
        || {
            (metric(&node.metrics()?, "raftmesh_agent_pod_interfaces")? >= interfaces as f64)
                .then_some(())
        },
    );
}

#[test]
fn a_forged_source_opens_nothing_and_is_dropped_where_the_pod_is_routed() {
    let mut node = guarded_node(&[
        ("victim", "10.244.1.30"),
        ("attacker", "10.244.1.31"),
        ("outsider", "10.244.1.32"),
    ]);
    node.start_agent();
    node.wait_maps("the policy", |t| t.enforced.contains(&(1 << 16 | 300)));
    wait_attached(&node, 3);
    let victim = SocketAddrV4::new(node.pods["victim"].ip, 5353);
    let outsider_ip = node.pods["outsider"].ip;
    // The outsider may not reach the victim…
    assert!(!udp_answered(&node, "outsider", 40000, victim));
    // …and the attacker, forging the victim's address towards the outsider's port, would
    // make the outsider's next packet look like a reply to a flow the victim started.
    send_forged(
        &node,
        "attacker",
        victim,
        SocketAddrV4::new(outsider_ip, 40001),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !udp_answered(&node, "outsider", 40001, victim),
        "a forged flow let the outsider in"
    );
    // With a /32 route to each pod (Cilium, the VPC CNI, Calico) the agent knows the
    // attacker's address, and its forged packets are dropped on the way out.
    let attacker_if = node.host_ifs["attacker"].clone();
    node.ns
        .ip(&[
            "route",
            "add",
            &format!("{}/32", node.pods["attacker"].ip),
            "dev",
            &attacker_if,
        ])
        .expect("a /32 route");
    eventually(
        "the attacker's address known",
        Duration::from_secs(10),
        || {
            let before = counter(&node, "spoofed")?;
            send_forged(
                &node,
                "attacker",
                victim,
                SocketAddrV4::new(outsider_ip, 40002),
            );
            std::thread::sleep(Duration::from_millis(100));
            (counter(&node, "spoofed")? > before).then_some(())
        },
    );
    // Its own address still goes out.
    let mut probe = node.probe_command(
        "attacker",
        &[
            "--tcp",
            &format!("{outsider_ip}:8080"),
            "--timeout-ms",
            "1000",
        ],
    );
    assert!(probe.status().expect("probe").success());
}

#[test]
fn a_pod_whose_identity_is_unknown_takes_only_this_node() {
    let mut node = guarded_node(&[("client", "10.244.1.40"), ("new", "10.244.1.41")]);
    // This node's address is its host identity (kubelet probes come from it).
    node.write(vec![node_record("n1", "10.244.0.1")]);
    node.start_agent();
    node.wait_maps("the client's identity", |t| {
        t.ipcache.keys().any(|p| p.ip == node.pods["client"].ip)
            && t.ipcache
                .keys()
                .any(|p| p.ip == Ipv4Addr::new(10, 244, 0, 1))
    });
    wait_attached(&node, 2);
    let new_pod = format!("{}:8080", node.pods["new"].ip);
    let args = ["--tcp", new_pod.as_str(), "--timeout-ms", "1000"];
    let ok = |lines: &[serde_json::Value]| lines.iter().all(|l| l["ok"] == true);
    eventually(
        "the new pod awaits its identity",
        Duration::from_secs(10),
        || {
            (metric(&node.metrics()?, "raftmesh_agent_pods_awaiting_identity")? >= 1.0)
                .then_some(())
        },
    );
    assert!(!ok(&node.probe("client", &args)), "another pod reached it");
    assert!(counter(&node, "awaiting_identity").expect("exported") >= 1.0);
    // This node (kubelet) does.
    let mut host = node.ns.command(sibling("mesh-echo"));
    host.arg("probe").args(args);
    assert!(
        node.cgroup.wrap(&host).status().expect("probe").success(),
        "this node is refused"
    );
    // Its identity published: not selected by any policy, it takes everyone.
    node.write(vec![ipcache(CLUSTER, node.pods["new"].ip, 1 << 16 | 500)]);
    eventually("the new pod reachable", Duration::from_secs(10), || {
        ok(&node.probe("client", &args)).then_some(())
    });
}

#[test]
fn without_enforce_unknown_pods_an_unknown_pod_takes_everyone() {
    let mut node = guarded_node(&[("client", "10.244.1.40"), ("new", "10.244.1.41")]);
    node.spawn_agent(&["--enforce-unknown-pods=false"]);
    node.wait_maps("the client's identity", |t| {
        t.ipcache.keys().any(|p| p.ip == node.pods["client"].ip)
    });
    wait_attached(&node, 2);
    let new_pod = format!("{}:8080", node.pods["new"].ip);
    let lines = node.probe("client", &["--tcp", &new_pod, "--timeout-ms", "1000"]);
    assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
}

#[test]
fn ipv6_to_an_enforced_pod_is_dropped() {
    let mut node = guarded_node(&[
        ("victim", "10.244.1.30"),
        ("open", "10.244.1.33"),
        ("client", "10.244.1.34"),
    ]);
    for (i, pod) in ["victim", "open", "client"].iter().enumerate() {
        let addr = format!("fd00:244::{}/64", i + 10);
        node.pods[*pod]
            .ns
            .ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])
            .expect("an IPv6 address");
        let mut serve = node.pods[*pod].ns.command(sibling("mesh-echo"));
        serve.args(["serve", "--name", pod, "--tcp6", "8086"]);
        node.workloads.push(
            lab::process::Process::spawn(serve, Some(&node.log(&format!("echo6-{pod}"))))
                .expect("echo6"),
        );
    }
    node.start_agent();
    node.wait_maps("the policy", |t| t.enforced.contains(&(1 << 16 | 300)));
    wait_attached(&node, 3);
    let probe6 = |to: &str| {
        let target = format!("[{to}]:8086");
        node.probe("client", &["--tcp", &target, "--timeout-ms", "1000"])
            .iter()
            .all(|l| l["ok"] == true)
    };
    // On a bridge the node has no route per pod: what is behind an interface is learned from
    // the IPv4 packets delivered to it (a kubelet probe, any connection). Until then a pod of
    // unknown identity takes no IPv6 (--enforce-unknown-pods).
    let open4 = format!("{}:8080", node.pods["open"].ip);
    let first = node.probe("client", &["--tcp", &open4, "--timeout-ms", "1000"]);
    assert!(first.iter().all(|l| l["ok"] == true), "{first:?}");
    // IPv6 works between pods no policy selects…
    eventually("IPv6 to an unselected pod", Duration::from_secs(10), || {
        probe6("fd00:244::11").then_some(())
    });
    // …and never reaches the enforced one: no rule can name an IPv6 peer.
    assert!(!probe6("fd00:244::10"), "IPv6 reached an enforced pod");
    assert!(counter(&node, "ipv6_denied").expect("exported") >= 1.0);
}
