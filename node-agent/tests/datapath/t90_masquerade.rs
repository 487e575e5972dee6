//! The masquerade exemption (`wg::masq`) against each place a CNI's masquerade can live:
//! iptables-nft (the VPC CNI, Flannel before Talos 1.14, ip-masq-agent), iptables-legacy
//! (older nodes), and a native nftables table at `srcnat` (Flannel's nftables mode, Talos
//! 1.14+). A pod's connection through a node to another cluster's pod arrives from the node's
//! address while only the CNI's rule is there, and from the pod's own once the exemption is
//! written; the table reads back as written (`nft -j`), and deleting it brings the masquerade
//! back.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use lab::netns::Netns;
use node_agent::wg::masq::{Exemption, Nft};

use crate::support::in_netns;

/// `client` (a pod, 10.1.1.10) ── `node` (10.1.1.1 | 192.168.1.1, forwarding) ── `server`
/// (another cluster's pod, 10.2.1.10, reached through 192.168.1.2).
struct Path3 {
    client: Netns,
    node: Netns,
    server: Netns,
}

impl Path3 {
    fn new() -> Path3 {
        let id = lab::unique("mq");
        let client = Netns::new(&format!("{id}-c")).expect("netns");
        let node = Netns::new(&format!("{id}-n")).expect("netns");
        let server = Netns::new(&format!("{id}-s")).expect("netns");
        lab::netns::pod_link(&node, "pod0", None, &client, "10.1.1.10/24", "10.1.1.1")
            .expect("client link");
        node.address("pod0", "10.1.1.1/24").expect("address");
        lab::netns::pod_link(&node, "up0", None, &server, "192.168.1.2/24", "192.168.1.1")
            .expect("server link");
        node.address("up0", "192.168.1.1/24").expect("address");
        server
            .ip(&["addr", "add", "10.2.1.10/32", "dev", "eth0"])
            .expect("server pod address");
        node.ip(&["route", "add", "10.2.0.0/16", "via", "192.168.1.2"])
            .expect("route");
        let out = node
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .output()
            .expect("sysctl");
        assert!(out.status.success(), "{out:?}");
        Path3 {
            client,
            node,
            server,
        }
    }

    /// The source address the server sees for a connection from the client.
    fn seen_source(&self) -> Ipv4Addr {
        let server = self.server.path();
        let listener = in_netns(&server, || {
            TcpListener::bind("10.2.1.10:0").expect("listen")
        });
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::thread::spawn(move || {
            let (mut conn, peer) = listener.accept().expect("accept");
            let mut buf = [0u8; 1];
            let _ = conn.read(&mut buf);
            peer
        });
        let client = self.client.path();
        let conn = in_netns(&client, move || {
            let target = SocketAddr::from(([10, 2, 1, 10], port));
            TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect")
        });
        drop(conn);
        match accepted.join().expect("accept thread") {
            SocketAddr::V4(v4) => *v4.ip(),
            other => panic!("{other}"),
        }
    }

    /// Runs `f` on a thread inside the node's namespace (the nft it spawns runs there).
    fn on_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.node.path(), f)
    }
}

/// A CNI's masquerade of the pod network's traffic to anywhere else, in `backend`.
fn masquerade(node: &Netns, backend: &str) {
    let out = match backend {
        "nftables" => {
            let mut child = node
                .command("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("nft");
            std::io::Write::write_all(
                child.stdin.as_mut().expect("stdin"),
                b"table ip flannel-ipv4 {\n chain postrtg {\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n }\n}\n",
            )
            .expect("write");
            child.wait_with_output().expect("nft")
        }
        iptables => node
            .command(iptables)
            .args(["-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.1.0.0/16"])
            .args([
                "!",
                "-d",
                "224.0.0.0/4",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ])
            .output()
            .expect("iptables"),
    };
    assert!(out.status.success(), "{backend}: {out:?}");
}

#[test]
fn the_exemption_beats_masquerade_in_iptables_nft_iptables_legacy_and_nftables() {
    for backend in ["iptables-nft", "iptables-legacy", "nftables"] {
        let path = Path3::new();
        let node_ip: Ipv4Addr = "192.168.1.1".parse().unwrap();
        let pod_ip: Ipv4Addr = "10.1.1.10".parse().unwrap();
        assert_eq!(path.seen_source(), pod_ip, "{backend}: before any rule");
        masquerade(&path.node, backend);
        assert_eq!(
            path.seen_source(),
            node_ip,
            "{backend}: the CNI's masquerade"
        );

        let nft = Nft::new(std::path::Path::new("nft"));
        let exemption = Exemption::new(
            [("10.1.1.0".parse().unwrap(), 24)],
            [
                ("10.2.1.10".parse().unwrap(), 32),
                ("10.3.0.0".parse().unwrap(), 16),
            ],
        );
        path.on_node(|| nft.apply(&exemption)).expect("apply");
        assert_eq!(path.seen_source(), pod_ip, "{backend}: exempted");
        let (read, exempted) = path
            .on_node(|| nft.read())
            .expect("read")
            .expect("the table as written");
        assert_eq!(read, exemption, "{backend}");
        assert!(exempted >= 1, "{backend}: the rule counted no connection");
        // Written again, the same: one table, one rule (idempotent).
        path.on_node(|| nft.apply(&exemption)).expect("apply again");
        let listed = path
            .node
            .command("nft")
            .args(["list", "ruleset"])
            .output()
            .expect("nft list");
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert_eq!(listed.matches("table ip raftmesh").count(), 1, "{listed}");
        assert_eq!(listed.matches("snat to ip saddr").count(), 1, "{listed}");

        assert!(path.on_node(|| nft.remove()).expect("remove"));
        assert_eq!(path.on_node(|| nft.read()).expect("read"), None);
        assert_eq!(path.seen_source(), node_ip, "{backend}: masqueraded again");
        assert!(!path.on_node(|| nft.remove()).expect("remove twice"));
    }
}
