//! Record builders for the unit tests: a mesh described in a few lines.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use mesh_api::records::*;
use mesh_api::remote::RemoteStatusRecord;
use mesh_api::{Key, Kind, Record, SCHEMA};
use prost::Message;

use crate::desired::{Limits, Local};
use crate::state::{MeshState, Touched};

/// A node `apps-1` of cluster `apps`; remotes are stale after 30 s.
pub fn local() -> Local {
    Local {
        cluster: "apps".to_owned(),
        node: "apps-1".to_owned(),
        stale_after_ms: 30_000,
        limits: Limits::default(),
    }
}

/// A mesh under construction.
#[derive(Debug, Default)]
pub struct Mesh {
    pub state: MeshState,
    /// The store's revision, one more with every change.
    pub revision: i64,
    /// Each key's create revision, as the store keeps it across updates.
    pub created: BTreeMap<String, i64>,
}

/// An endpoint: address, ready, serving, terminating.
pub type Ep = (&'static str, bool, bool, bool);

pub fn ready(ip: &'static str) -> Ep {
    (ip, true, true, false)
}

pub fn draining(ip: &'static str) -> Ep {
    (ip, false, true, true)
}

pub fn not_ready(ip: &'static str) -> Ep {
    (ip, false, false, false)
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Mesh {
    pub fn put(&mut self, key: Key, record: Record) -> Touched {
        self.revision += 1;
        let key = key.to_string();
        let created = *self.created.entry(key.clone()).or_insert(self.revision);
        self.state.apply(&key, Some(&record.encode()), created)
    }

    pub fn delete(&mut self, key: Key) -> Touched {
        self.revision += 1;
        let key = key.to_string();
        self.created.remove(&key);
        self.state.apply(&key, None, 0)
    }

    /// A cluster record alone (no synced marker: a partial view).
    pub fn cluster_record(&mut self, name: &str, id: u32) -> Touched {
        self.cluster_cidrs(name, id, &[], &[])
    }

    /// A cluster record with pod and service CIDRs.
    pub fn cluster_cidrs(
        &mut self,
        name: &str,
        id: u32,
        pods: &[&str],
        services: &[&str],
    ) -> Touched {
        let strings = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        self.put(
            Key::Cluster {
                cluster: name.to_owned(),
            },
            Record::Cluster(ClusterRecord {
                schema: SCHEMA,
                name: name.to_owned(),
                id,
                pod_cidrs: strings(pods),
                service_cidrs: strings(services),
                ..Default::default()
            }),
        )
    }

    /// A cluster record and every synced marker.
    pub fn cluster(&mut self, name: &str, id: u32) -> &mut Self {
        self.cluster_record(name, id);
        for kind in Kind::SYNCED {
            self.put(
                Key::Synced {
                    cluster: name.to_owned(),
                    kind,
                },
                Record::Synced(SyncedRecord { schema: SCHEMA }),
            );
        }
        self
    }

    /// Service `ns/name` in `cluster`: ports `http` 80/TCP and `dns` 53/UDP.
    pub fn service(
        &mut self,
        cluster: &str,
        name: &str,
        vips: &[&str],
        global: bool,
        shared: bool,
        affinity: Affinity,
    ) -> &mut Self {
        let (ns, svc) = name.split_once('/').expect("ns/name");
        self.put(
            Key::Service {
                cluster: cluster.to_owned(),
                namespace: ns.to_owned(),
                name: svc.to_owned(),
            },
            Record::Service(ServiceRecord {
                schema: SCHEMA,
                namespace: ns.to_owned(),
                name: svc.to_owned(),
                cluster_ips: vips.iter().map(|s| (*s).to_owned()).collect(),
                ports: vec![port("http", 80, "TCP"), port("dns", 53, "UDP")],
                global,
                shared,
                affinity: affinity as i32,
                ..Default::default()
            }),
        );
        self
    }

    /// Service `ns/name` of `cluster` exported (a `ServiceExport` created at `created`), not
    /// headless, at `vips` (none: a cluster exporting pods only through the import), ports
    /// `http` 80/TCP and `dns` 53/UDP.
    pub fn exported(
        &mut self,
        cluster: &str,
        name: &str,
        vips: &[&str],
        created: i64,
    ) -> &mut Self {
        self.export_with(
            cluster,
            name,
            vips,
            created,
            false,
            vec![port("http", 80, "TCP"), port("dns", 53, "UDP")],
        )
    }

    /// An exported service with its headlessness and ports given.
    pub fn export_with(
        &mut self,
        cluster: &str,
        name: &str,
        vips: &[&str],
        created: i64,
        headless: bool,
        ports: Vec<Port>,
    ) -> &mut Self {
        let (ns, svc) = name.split_once('/').expect("ns/name");
        self.put(
            Key::Service {
                cluster: cluster.to_owned(),
                namespace: ns.to_owned(),
                name: svc.to_owned(),
            },
            Record::Service(ServiceRecord {
                schema: SCHEMA,
                namespace: ns.to_owned(),
                name: svc.to_owned(),
                cluster_ips: vips.iter().map(|s| (*s).to_owned()).collect(),
                ports,
                global: true,
                shared: true,
                exported: true,
                export_created: created,
                headless,
                ..Default::default()
            }),
        );
        self
    }

    /// This test's cluster `name` with a ClusterSetIP range (and every synced marker).
    pub fn cluster_in_clusterset(&mut self, name: &str, id: u32, range: &str) -> &mut Self {
        self.cluster(name, id);
        self.put(
            Key::Cluster {
                cluster: name.to_owned(),
            },
            Record::Cluster(ClusterRecord {
                schema: SCHEMA,
                name: name.to_owned(),
                id,
                clusterset_cidr: range.to_owned(),
                ..Default::default()
            }),
        );
        self
    }

    /// A slice whose endpoints carry hostnames: `(ip, hostname)`, all ready; port `http`.
    pub fn named_slice(
        &mut self,
        cluster: &str,
        name: &str,
        slice: &str,
        target: u32,
        eps: &[(&str, &str)],
    ) -> &mut Self {
        let (ns, svc) = name.split_once('/').expect("ns/name");
        self.put(
            Key::Endpoints {
                cluster: cluster.to_owned(),
                namespace: ns.to_owned(),
                service: svc.to_owned(),
                slice: slice.to_owned(),
            },
            Record::Endpoints(EndpointsRecord {
                schema: SCHEMA,
                ports: vec![port("http", target, "TCP")],
                endpoints: eps
                    .iter()
                    .map(|(ip, hostname)| Endpoint {
                        addresses: vec![address(ip)],
                        ready: true,
                        serving: true,
                        hostname: (*hostname).to_owned(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        );
        self
    }

    /// A global, shared service without affinity at one cluster IP.
    pub fn global(&mut self, cluster: &str, name: &str, vip: &str) -> &mut Self {
        self.service(cluster, name, &[vip], true, true, Affinity::None)
    }

    /// A slice of `ns/name` in `cluster` whose `http` port is `target` (and `dns` 5353).
    pub fn slice(
        &mut self,
        cluster: &str,
        name: &str,
        slice: &str,
        target: u32,
        eps: &[Ep],
    ) -> &mut Self {
        let (ns, svc) = name.split_once('/').expect("ns/name");
        self.put(
            Key::Endpoints {
                cluster: cluster.to_owned(),
                namespace: ns.to_owned(),
                service: svc.to_owned(),
                slice: slice.to_owned(),
            },
            Record::Endpoints(EndpointsRecord {
                schema: SCHEMA,
                ports: vec![port("http", target, "TCP"), port("dns", 5353, "UDP")],
                endpoints: eps
                    .iter()
                    .map(|(ip, ready, serving, terminating)| Endpoint {
                        addresses: vec![address(ip)],
                        ready: *ready,
                        serving: *serving,
                        terminating: *terminating,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        );
        self
    }

    pub fn node(&mut self, cluster: &str, node: &str, internal_ip: &str) -> &mut Self {
        self.node_with(cluster, node, internal_ip, None, &[])
    }

    /// A node with its InternalIP, an optional ExternalIP and pod CIDRs.
    pub fn node_with(
        &mut self,
        cluster: &str,
        node: &str,
        internal_ip: &str,
        external_ip: Option<&str>,
        pod_cidrs: &[&str],
    ) -> &mut Self {
        self.put(
            Key::Node {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
            },
            Record::Node(NodeRecord {
                schema: SCHEMA,
                name: node.to_owned(),
                internal_ips: vec![internal_ip.to_owned()],
                external_ips: external_ip.into_iter().map(str::to_owned).collect(),
                pod_cidrs: pod_cidrs.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            }),
        );
        self
    }

    /// `node`'s WireGuard key: [`test_key`]`(seed)`, listening on `port`; its agent answers
    /// reachability probes on `port + 1`.
    pub fn nodekey(&mut self, cluster: &str, node: &str, seed: u8, port: u32) -> &mut Self {
        self.put(
            Key::NodeKey {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
            },
            Record::NodeKey(NodeKeyRecord {
                schema: SCHEMA,
                public_key: crate::wg::key::encode(&test_key(seed)),
                listen_port: port,
                boot_id: "boot".to_owned(),
                probe_port: port + 1,
            }),
        );
        self
    }

    /// A pod address with its identity and the address of its node.
    pub fn pod_on(&mut self, cluster: &str, ip: &str, identity: u32, node_ip: &str) -> &mut Self {
        self.put(
            Key::IpCache {
                cluster: cluster.to_owned(),
                ip: ip.parse().expect("ip"),
            },
            Record::IpCache(IpCacheRecord {
                schema: SCHEMA,
                identity,
                node_ip: node_ip.to_owned(),
                ..Default::default()
            }),
        );
        self
    }

    pub fn identity(&mut self, cluster: &str, id: u32, labels: &[&str]) -> &mut Self {
        let mut labels: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        labels.sort();
        self.put(
            Key::Identity {
                cluster: cluster.to_owned(),
                id,
            },
            Record::Identity(IdentityRecord {
                schema: SCHEMA,
                labels,
            }),
        );
        self
    }

    pub fn pod(&mut self, cluster: &str, ip: &str, identity: u32) -> &mut Self {
        self.put(
            Key::IpCache {
                cluster: cluster.to_owned(),
                ip: ip.parse().expect("ip"),
            },
            Record::IpCache(IpCacheRecord {
                schema: SCHEMA,
                identity,
                ..Default::default()
            }),
        );
        self
    }

    pub fn policy(
        &mut self,
        cluster: &str,
        name: &str,
        selector: &[(&str, &str)],
        ingress: Vec<PolicyRule>,
    ) -> &mut Self {
        let (ns, n) = name.split_once('/').expect("ns/name");
        self.put(
            Key::Policy {
                cluster: cluster.to_owned(),
                namespace: ns.to_owned(),
                name: n.to_owned(),
            },
            Record::Policy(PolicyRecord {
                schema: SCHEMA,
                namespace: ns.to_owned(),
                name: n.to_owned(),
                endpoint_selector: labels(selector),
                ingress,
            }),
        );
        self
    }

    /// The mirror status of `cluster`.
    pub fn remote_status(&mut self, cluster: &str, connected: bool, current_at_ms: i64) -> Touched {
        let record = RemoteStatusRecord {
            schema: SCHEMA,
            connected,
            current_at_ms,
            ..Default::default()
        };
        self.revision += 1;
        self.state.apply(
            &format!("mesh/status/remotes/{cluster}"),
            Some(&record.encode_to_vec()),
            self.revision,
        )
    }
}

pub fn rule(clusters: &[&str], from: &[(&str, &str)], ports: &[(u32, &str)]) -> PolicyRule {
    PolicyRule {
        from_clusters: clusters.iter().map(|s| (*s).to_owned()).collect(),
        from_labels: labels(from),
        ports: ports
            .iter()
            .map(|(port, protocol)| PolicyPort {
                port: *port,
                protocol: (*protocol).to_owned(),
            })
            .collect(),
    }
}

pub fn port(name: &str, port: u32, protocol: &str) -> Port {
    Port {
        name: name.to_owned(),
        port,
        protocol: protocol.to_owned(),
    }
}

pub fn address(ip: &str) -> Vec<u8> {
    match ip.parse::<std::net::IpAddr>().expect("ip") {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ipv4")
}

/// A distinct, fake public key.
pub fn test_key(seed: u8) -> [u8; 32] {
    [seed; 32]
}
