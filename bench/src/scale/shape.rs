//! What each synthetic remote holds, and how it changes.
//!
//! Remote `r` (0 ≤ r < 255) is cluster `r000`…`r254` with id `r + 2` (the local cluster is 1)
//! and pod CIDR `10.r.0.0/16`. Its node `n` has address `100.64.r.n+1` (shared address space:
//! not special, unique across clusters) and pod CIDR `10.r.n.0/24`. Endpoint `e` runs on node
//! `e mod nodes` at host `e div nodes + 1` and belongs to service `e mod services`
//! (`bench/svc-r-s`), whose endpoints are cut into slices of at most 100, as Kubernetes cuts
//! EndpointSlices. Every service has its own identity `(id << 16) | (256 + s)`, and every
//! endpoint its ipcache entry. A probe service `bench/probe-r` has two endpoints on node 0;
//! the benchmark flips the second one's readiness to time propagation.
//!
//! The records are the publisher's shapes (`mesh_api` types, reserved identities from the
//! publisher's own table), with the six `synced/` markers last, and pass the mirror's checks
//! (tested below with `mesh_apiserver::mirror::validate::Validator`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, ensure};
use mesh_api::records::*;
use mesh_api::{Key, Kind, Record, SCHEMA};
use mesh_apiserver::publish::convert::{Settings, reserved_identities};

/// Namespace of every synthetic service.
pub const NAMESPACE: &str = "bench";
/// Endpoints per slice, as Kubernetes' EndpointSlice controller cuts them.
const PER_SLICE: usize = 100;
/// Hosts of a node's /24 that regular endpoints may use; 250 and 251 of node 0 are the probe's.
const HOSTS: u8 = 249;
/// Most remotes (the second octet of their pod CIDR, and cluster ids up to 256).
pub const MAX_REMOTES: usize = 255;

/// How big each remote is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Nodes per remote (at most 250).
    pub nodes: u32,
    /// Endpoints per remote, over all its services.
    pub endpoints: u32,
    /// Services per remote.
    pub services: u32,
}

impl Shape {
    /// Refuses shapes the address plan cannot hold.
    pub fn check(&self) -> Result<()> {
        ensure!(
            (1..=250).contains(&self.nodes),
            "--nodes: 1 to 250 per remote"
        );
        ensure!(self.services >= 1, "--services: at least 1");
        ensure!(
            self.endpoints >= self.services,
            "--endpoints: at least one per service"
        );
        ensure!(
            self.endpoints.div_ceil(self.nodes) <= u32::from(HOSTS),
            "--endpoints: at most {HOSTS} per node"
        );
        Ok(())
    }

    /// Keys one remote holds.
    pub fn keys(&self) -> usize {
        let slices: usize = (0..self.services)
            .map(|s| self.endpoints_of(s).div_ceil(PER_SLICE))
            .sum();
        // cluster, nodes, 8 reserved + 1 per service + probe identities, ipcache of every
        // endpoint and both probe pods, services and probe, slices and the probe's, markers.
        1 + self.nodes as usize
            + 8
            + self.services as usize
            + 1
            + self.endpoints as usize
            + 2
            + self.services as usize
            + 1
            + slices
            + 1
            + Kind::SYNCED.len()
    }

    fn endpoints_of(&self, s: u32) -> usize {
        (0..self.endpoints)
            .filter(|e| e % self.services == s)
            .count()
    }
}

/// Remote `r`'s cluster name.
pub fn name(r: usize) -> String {
    format!("r{r:03}")
}

/// Remote `r`'s cluster id.
pub fn id(r: usize) -> u32 {
    r as u32 + 2
}

/// Remote `r`'s pod CIDR.
pub fn pod_cidr(r: usize) -> String {
    format!("10.{r}.0.0/16")
}

/// Name of remote `r`'s service `s`.
pub fn service(r: usize, s: u32) -> String {
    format!("svc-{r}-{s}")
}

/// Name of remote `r`'s probe service.
pub fn probe(r: usize) -> String {
    format!("probe-{r}")
}

fn node_ip(r: usize, n: u32) -> String {
    format!("100.64.{r}.{}", n + 1)
}

fn pod_ip(r: usize, n: u32, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, r as u8, n as u8, host)
}

/// One slice: its key, identity, and endpoints as (address, node).
#[derive(Debug, Clone)]
struct Slice {
    key: Key,
    identity: u32,
    endpoints: Vec<(Ipv4Addr, u32, bool)>,
}

/// A write to a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put a key.
    Put(String, Vec<u8>),
    /// Delete a key.
    Delete(String),
}

/// One remote's records, kept as a model so that changes stay consistent (a replaced pod's
/// ipcache entry goes with it; every node keeps its addresses unique).
#[derive(Debug, Clone)]
pub struct Remote {
    r: usize,
    shape: Shape,
    slices: Vec<Slice>,
    /// Per node, the hosts in use.
    used: Vec<BTreeSet<u8>>,
    rng: u64,
}

impl Remote {
    /// Remote `r` of `shape`; `seed` drives its changes.
    pub fn new(r: usize, shape: Shape, seed: u64) -> Self {
        assert!(r < MAX_REMOTES);
        let id = id(r);
        let mut used = vec![BTreeSet::new(); shape.nodes as usize];
        let mut slices = Vec::new();
        for s in 0..shape.services {
            let endpoints: Vec<(Ipv4Addr, u32, bool)> = (0..shape.endpoints)
                .filter(|e| e % shape.services == s)
                .map(|e| {
                    let n = e % shape.nodes;
                    let host = (e / shape.nodes + 1) as u8;
                    used[n as usize].insert(host);
                    (pod_ip(r, n, host), n, true)
                })
                .collect();
            for (k, chunk) in endpoints.chunks(PER_SLICE).enumerate() {
                slices.push(Slice {
                    key: Key::Endpoints {
                        cluster: name(r),
                        namespace: NAMESPACE.into(),
                        service: service(r, s),
                        slice: format!("{}-{k}", service(r, s)),
                    },
                    identity: (id << 16) | (256 + s),
                    endpoints: chunk.to_vec(),
                });
            }
        }
        // The probe: the last slice, two endpoints on node 0 at hosts the others never use.
        slices.push(Slice {
            key: Key::Endpoints {
                cluster: name(r),
                namespace: NAMESPACE.into(),
                service: probe(r),
                slice: probe(r),
            },
            identity: (id << 16) | (256 + shape.services),
            endpoints: vec![
                (pod_ip(r, 0, HOSTS + 1), 0, true),
                (pod_ip(r, 0, HOSTS + 2), 0, true),
            ],
        });
        Self {
            r,
            shape,
            slices,
            used,
            rng: seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> String {
        name(self.r)
    }

    /// Every record, the `synced/` markers last.
    pub fn records(&self) -> Vec<(String, Vec<u8>)> {
        let r = self.r;
        let cluster = name(r);
        let mut out = vec![(
            Key::Cluster {
                cluster: cluster.clone(),
            }
            .to_string(),
            Record::Cluster(ClusterRecord {
                schema: SCHEMA,
                name: cluster.clone(),
                id: id(r),
                pod_cidrs: vec![pod_cidr(r)],
                service_cidrs: vec!["172.20.0.0/16".into()],
                ..Default::default()
            })
            .encode(),
        )];
        for n in 0..self.shape.nodes {
            out.push((
                Key::Node {
                    cluster: cluster.clone(),
                    node: format!("node-{n}"),
                }
                .to_string(),
                Record::Node(NodeRecord {
                    schema: SCHEMA,
                    name: format!("node-{n}"),
                    internal_ips: vec![node_ip(r, n)],
                    pod_cidrs: vec![format!("10.{r}.{n}.0/24")],
                    ..Default::default()
                })
                .encode(),
            ));
        }
        let settings = Settings {
            cluster: cluster.clone(),
            cluster_id: id(r) as u16,
        };
        out.extend(
            reserved_identities(&settings)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.encode())),
        );
        for (s, slice) in self.slices.iter().enumerate() {
            let Key::Endpoints { service: svc, .. } = &slice.key else {
                unreachable!("slices have endpoint keys")
            };
            let first_of_service = s == 0
                || !matches!(&self.slices[s - 1].key, Key::Endpoints { service, .. } if service == svc);
            if first_of_service {
                out.push(self.identity(slice.identity, svc));
                out.push(crate::agent::global_service(&cluster, svc, vec![]));
            }
            for &(ip, n, _) in &slice.endpoints {
                out.push(self.ipcache(ip, n, slice.identity));
            }
            out.push(self.slice(slice));
        }
        for kind in Kind::SYNCED {
            out.push((
                Key::Synced {
                    cluster: cluster.clone(),
                    kind,
                }
                .to_string(),
                Record::Synced(SyncedRecord { schema: SCHEMA }).encode(),
            ));
        }
        out
    }

    fn identity(&self, id: u32, service: &str) -> (String, Vec<u8>) {
        (
            Key::Identity {
                cluster: self.name(),
                id,
            }
            .to_string(),
            Record::Identity(IdentityRecord {
                schema: SCHEMA,
                labels: vec![format!("app={service}")],
            })
            .encode(),
        )
    }

    fn ipcache(&self, ip: Ipv4Addr, n: u32, identity: u32) -> (String, Vec<u8>) {
        (
            Key::IpCache {
                cluster: self.name(),
                ip: IpAddr::V4(ip),
            }
            .to_string(),
            Record::IpCache(IpCacheRecord {
                schema: SCHEMA,
                identity,
                node_ip: node_ip(self.r, n),
                pod: format!("{NAMESPACE}/pod-{}", ip.to_string().replace('.', "-")),
            })
            .encode(),
        )
    }

    fn slice(&self, slice: &Slice) -> (String, Vec<u8>) {
        let mut nodes: Vec<u32> = slice.endpoints.iter().map(|e| e.1).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let record = EndpointsRecord {
            schema: SCHEMA,
            nodes: nodes.iter().map(|n| format!("node-{n}")).collect(),
            ports: vec![Port {
                name: "http".into(),
                port: 8080,
                protocol: "TCP".into(),
            }],
            endpoints: slice
                .endpoints
                .iter()
                .map(|&(ip, n, ready)| Endpoint {
                    addresses: vec![ip.octets().to_vec()],
                    node: nodes.binary_search(&n).unwrap_or(0) as u32,
                    ready,
                    serving: ready,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        (slice.key.to_string(), Record::Endpoints(record).encode())
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: a fixed seed gives the same changes every run.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pod replaced by a new one on the same node: its ipcache entry goes, the new one's
    /// comes, and its slice is rewritten. The number of endpoints stays the same.
    pub fn replace_pod(&mut self) -> Vec<Op> {
        let regular = self.slices.len() - 1;
        let s = (self.next() % regular as u64) as usize;
        let k = (self.next() % self.slices[s].endpoints.len() as u64) as usize;
        let (old, n, ready) = self.slices[s].endpoints[k];
        let used = &mut self.used[n as usize];
        let start = (self.rng % u64::from(HOSTS)) as u8;
        let host = (0..HOSTS)
            .map(|i| (start + i) % HOSTS + 1)
            .find(|h| !used.contains(h))
            .unwrap_or(old.octets()[3]);
        used.remove(&old.octets()[3]);
        used.insert(host);
        let new = pod_ip(self.r, n, host);
        self.slices[s].endpoints[k] = (new, n, ready);
        let identity = self.slices[s].identity;
        let gone = Key::IpCache {
            cluster: self.name(),
            ip: IpAddr::V4(old),
        };
        let (key, value) = self.ipcache(new, n, identity);
        let mut ops = Vec::with_capacity(3);
        if old != new {
            ops.push(Op::Delete(gone.to_string()));
        }
        ops.push(Op::Put(key, value));
        let (key, value) = self.slice(&self.slices[s]);
        ops.push(Op::Put(key, value));
        ops
    }

    /// The slots the agents program for each of this remote's services in order, then for its
    /// probe: every endpoint of a service (all are ready), the probe's ready ones.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.shape.services as usize + 1];
        for (i, slice) in self.slices.iter().enumerate() {
            let k = if i + 1 == self.slices.len() {
                self.shape.services as usize
            } else {
                match &slice.key {
                    Key::Endpoints { service, .. } => service
                        .rsplit('-')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    _ => 0,
                }
            };
            counts[k] += slice.endpoints.iter().filter(|e| e.2).count();
        }
        counts
    }

    /// Flips the probe's second endpoint; returns the write and the ready endpoints after it.
    pub fn toggle_probe(&mut self) -> (Op, usize) {
        let probe = self.slices.last_mut().expect("the probe slice");
        probe.endpoints[1].2 = !probe.endpoints[1].2;
        let ready = probe.endpoints.iter().filter(|e| e.2).count();
        let (key, value) = self.slice(self.slices.last().expect("the probe slice"));
        (Op::Put(key, value), ready)
    }
}

/// The local cluster's manifests: a global Service (with a selector no local pod matches) of
/// every remote service's name and of every probe, so the agents program their remote
/// backends. VIPs in `172.21.0.0/16`, in the order services are listed.
pub fn local_manifests(remotes: usize, shape: Shape) -> String {
    use std::fmt::Write as _;
    let mut y = String::new();
    let names = (0..remotes).flat_map(|r| {
        (0..shape.services)
            .map(move |s| service(r, s))
            .chain(std::iter::once(probe(r)))
    });
    for (i, name) in names.enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}, annotations: {{mesh.raftmesh.io/global: \"true\"}}}}\nspec: {{selector: {{app: {name}}}, clusterIP: {}, ports: [{{name: http, port: 80}}]}}\n",
            local_vip(i)
        );
    }
    y
}

/// The VIP of the `i`th local service of [`local_manifests`].
pub fn local_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 21, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// The VIP of remote `r`'s probe in the local cluster.
pub fn probe_vip(r: usize, shape: Shape) -> Ipv4Addr {
    local_vip(r * (shape.services as usize + 1) + shape.services as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::cidr::Cidr;
    use mesh_apiserver::mirror::validate::Validator;

    const SHAPE: Shape = Shape {
        nodes: 10,
        endpoints: 250,
        services: 3,
    };

    fn validator(r: usize) -> Validator {
        Validator::new(&name(r), id(r), vec![pod_cidr(r).parse::<Cidr>().unwrap()])
    }

    #[test]
    fn every_record_passes_the_mirrors_checks_and_the_markers_come_last() {
        for r in [0, 7, 254] {
            let records = Remote::new(r, SHAPE, 1).records();
            assert_eq!(records.len(), SHAPE.keys());
            let v = validator(r);
            for (k, value) in &records {
                v.check(k.as_bytes(), value)
                    .unwrap_or_else(|e| panic!("{k}: {e:?}"));
            }
            let keys: BTreeSet<&String> = records.iter().map(|(k, _)| k).collect();
            assert_eq!(keys.len(), records.len(), "duplicate keys");
            assert!(
                records[records.len() - Kind::SYNCED.len()..]
                    .iter()
                    .all(|(k, _)| k.contains("/synced/"))
            );
        }
    }

    #[test]
    fn changes_keep_the_endpoints_valid_unique_and_counted() {
        let mut remote = Remote::new(3, SHAPE, 42);
        let v = validator(3);
        for _ in 0..5_000 {
            for op in remote.replace_pod() {
                if let Op::Put(k, value) = op {
                    v.check(k.as_bytes(), &value)
                        .unwrap_or_else(|e| panic!("{k}: {e:?}"));
                }
            }
        }
        let addresses: Vec<Ipv4Addr> = remote
            .slices
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.0))
            .collect();
        let unique: BTreeSet<&Ipv4Addr> = addresses.iter().collect();
        assert_eq!(addresses.len(), SHAPE.endpoints as usize + 2);
        assert_eq!(unique.len(), addresses.len());
        assert_eq!(remote.records().len(), SHAPE.keys());
        assert_eq!(remote.toggle_probe().1, 1);
        assert_eq!(remote.toggle_probe().1, 2);
    }

    #[test]
    fn the_same_seed_makes_the_same_changes() {
        let mut a = Remote::new(5, SHAPE, 9);
        let mut b = Remote::new(5, SHAPE, 9);
        for _ in 0..100 {
            assert_eq!(a.replace_pod(), b.replace_pod());
        }
    }

    #[test]
    fn addresses_never_collide_across_remotes_and_shapes_are_checked() {
        assert_ne!(node_ip(1, 0), node_ip(0, 1));
        assert!(SHAPE.check().is_ok());
        let big = Shape {
            nodes: 2,
            endpoints: 1_000,
            services: 1,
        };
        assert!(big.check().is_err());
        assert_eq!(probe_vip(0, SHAPE), local_vip(3));
        let manifests = local_manifests(2, SHAPE);
        assert_eq!(manifests.matches("kind: Service").count(), 8);
        assert!(manifests.contains(&format!("clusterIP: {}", probe_vip(1, SHAPE))));
    }
}
