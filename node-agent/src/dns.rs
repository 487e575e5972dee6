//! `clusterset.local` DNS for the Multi-Cluster Services API, served by the agent
//! (`--dns-listen`) from its in-memory view of the imports: no store read per query.
//!
//! Names, after the MCS DNS specification (KEP-1645, "DNS"; the zone is `--dns-zone`):
//!
//! | name | type | answer |
//! |---|---|---|
//! | `<svc>.<ns>.svc.<zone>` | A | the ClusterSetIP; headless: the ready endpoints of every exporting cluster (NXDOMAIN when none is ready) |
//! | `<host>.<cluster>.<svc>.<ns>.svc.<zone>` | A | that endpoint of a headless import (`<host>` is its hostname, else its address with dashes) |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV | per named port: the service name (ClusterSetIP) or each endpoint's name (headless) |
//! | `<svc>.<ns>.svc.<zone>` | SRV | every named port's records, as CoreDNS answers it |
//! | `dns-version.<zone>` | TXT | `1.0.0` |
//! | `<zone>` | SOA | the zone's |
//!
//! A name not exported anywhere is NXDOMAIN; a name that exists without records of the asked
//! type (AAAA while IPv6 is not served, the names between the zone and a service) is an empty
//! answer; both carry the SOA, whose minimum (the negative TTL) is the records' TTL, so a
//! client sees an export appear or go within [`TTL`] seconds of the agent learning of it.
//! Names outside the zone are REFUSED: the agent is no resolver.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use mesh_api::clusterset::ImportType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::{MeshState, endpoint_flags};

/// The TTL of every record and of negative answers, in seconds: short, so a change reaches
/// clients within seconds (CoreDNS's `kubernetes` plugin defaults to 5 as well).
pub const TTL: u32 = 5;

/// The zone served when `--dns-zone` is not given.
pub const DEFAULT_ZONE: &str = "clusterset.local";

/// The MCS DNS specification version served (`dns-version.<zone>`).
pub const SPEC_VERSION: &str = "1.0.0";

/// One endpoint of a headless import.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pod {
    /// Its cluster.
    cluster: Box<str>,
    /// Its hostname, or its address with dashes.
    host: Box<str>,
    /// Its address.
    ip: Ipv4Addr,
    /// Its slice's ports: name, protocol (lowercase), number.
    ports: Vec<(Box<str>, &'static str, u16)>,
}

/// What DNS knows of one import.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The ClusterSetIP (none for headless imports, or without a range).
    ip: Option<Ipv4Addr>,
    /// Headless.
    headless: bool,
    /// The import's named ports: name, protocol (lowercase), number.
    ports: Vec<(String, &'static str, u16)>,
    /// Headless: the ready endpoints of every exporting cluster.
    pods: Vec<Pod>,
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR, NXDOMAIN or REFUSED.
    pub code: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The SOA, for negative answers.
    pub soa: Option<Record>,
}

/// The served zone: every import's entry, updated in place as imports change.
#[derive(Debug)]
pub struct Zone {
    origin: Name,
    /// By `<svc>.<ns>`.
    entries: RwLock<HashMap<String, Entry>>,
}

impl Zone {
    /// An empty zone named `origin` (e.g. `clusterset.local`).
    pub fn new(origin: &str) -> Result<Zone, String> {
        let mut origin =
            Name::from_str(origin).map_err(|e| format!("{origin:?} is not a DNS name: {e}"))?;
        origin.set_fqdn(true);
        Ok(Zone {
            origin: origin.to_lowercase(),
            entries: RwLock::new(HashMap::new()),
        })
    }

    /// Brings the entries of `names` (`namespace/name`) up to date with `state`.
    pub fn update<'a>(&self, state: &MeshState, names: impl IntoIterator<Item = &'a String>) {
        let fresh: Vec<(String, Option<Entry>)> = names
            .into_iter()
            .filter_map(|full| {
                let (ns, name) = full.split_once('/')?;
                Some((format!("{name}.{ns}"), entry(state, full)))
            })
            .collect();
        let mut entries = self
            .entries
            .write()
            .expect("the zone's lock is never poisoned");
        for (key, e) in fresh {
            match e {
                Some(e) => entries.insert(key, e),
                None => entries.remove(&key),
            };
        }
    }

    /// Rebuilds every entry from `state`.
    pub fn replace(&self, state: &MeshState) {
        let fresh: HashMap<String, Entry> = state
            .clusterset
            .imports
            .keys()
            .filter_map(|full| {
                let (ns, name) = full.split_once('/')?;
                Some((format!("{name}.{ns}"), entry(state, full)?))
            })
            .collect();
        *self
            .entries
            .write()
            .expect("the zone's lock is never poisoned") = fresh;
    }

    /// How many imports the zone names.
    pub fn len(&self) -> usize {
        self.entries.read().expect("never poisoned").len()
    }

    /// Whether the zone names no import.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn record(&self, name: Name, rdata: RData) -> Record {
        Record::from_rdata(name, TTL, rdata)
    }

    fn soa(&self) -> Record {
        let mname = Name::from_ascii("ns.dns").and_then(|n| n.append_domain(&self.origin));
        let rname = Name::from_ascii("hostmaster").and_then(|n| n.append_domain(&self.origin));
        let soa = SOA::new(
            mname.unwrap_or_else(|_| self.origin.clone()),
            rname.unwrap_or_else(|_| self.origin.clone()),
            1,
            TTL as i32,
            TTL as i32,
            86_400,
            TTL,
        );
        self.record(self.origin.clone(), RData::SOA(soa))
    }

    fn negative(&self, code: ResponseCode) -> Answer {
        Answer {
            code,
            answers: Vec::new(),
            soa: Some(self.soa()),
        }
    }

    fn name(&self, labels: &[&str]) -> Name {
        let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .expect("labels of the zone are valid");
        name.set_fqdn(false);
        name.append_domain(&self.origin)
            .expect("a served name fits DNS's length limit")
    }

    /// The answer to `qname`/`qtype` (`qname` lowercase, as hickory hands it over).
    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Answer {
        if !self.origin.zone_of(qname) {
            return Answer {
                code: ResponseCode::Refused,
                answers: Vec::new(),
                soa: None,
            };
        }
        let depth = usize::from(qname.num_labels() - self.origin.num_labels());
        let labels: Vec<String> = qname
            .iter()
            .take(depth)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let entries = self.entries.read().expect("never poisoned");
        let no_data = || self.negative(ResponseCode::NoError);
        let nx = || self.negative(ResponseCode::NXDomain);
        let found = |answers: Vec<Record>| {
            if answers.is_empty() {
                no_data()
            } else {
                Answer {
                    code: ResponseCode::NoError,
                    answers,
                    soa: None,
                }
            }
        };
        match labels.as_slice() {
            [] => match qtype {
                RecordType::SOA => found(vec![self.soa()]),
                _ => no_data(),
            },
            ["dns-version"] => match qtype {
                RecordType::TXT => found(vec![self.record(
                    qname.clone(),
                    RData::TXT(TXT::new(vec![SPEC_VERSION.to_owned()])),
                )]),
                _ => no_data(),
            },
            ["svc"] if !entries.is_empty() => no_data(),
            [ns, "svc"]
                if entries
                    .keys()
                    .any(|k| k.rsplit_once('.').is_some_and(|(_, n)| n == *ns)) =>
            {
                no_data()
            }
            [svc, ns, "svc"] => {
                let Some(e) = entries.get(&format!("{svc}.{ns}")) else {
                    return nx();
                };
                match qtype {
                    RecordType::A if e.headless => {
                        if e.pods.is_empty() {
                            return nx();
                        }
                        let mut ips: Vec<Ipv4Addr> = e.pods.iter().map(|p| p.ip).collect();
                        ips.sort();
                        ips.dedup();
                        found(
                            ips.into_iter()
                                .map(|ip| self.record(qname.clone(), RData::A(A(ip))))
                                .collect(),
                        )
                    }
                    RecordType::A => found(
                        e.ip.into_iter()
                            .map(|ip| self.record(qname.clone(), RData::A(A(ip))))
                            .collect(),
                    ),
                    RecordType::SRV => {
                        // Every named port's records, each (port, target) once: `tcp` and
                        // `udp` on one number are one record, as CoreDNS answers and the
                        // conformance suite expects.
                        let mut all = Vec::new();
                        let mut seen = std::collections::BTreeSet::new();
                        for (port, proto, _) in &e.ports {
                            for r in self.srv(qname, svc, ns, e, port, proto) {
                                if seen.insert(r.data.to_string()) {
                                    all.push(r);
                                }
                            }
                        }
                        found(all)
                    }
                    _ => no_data(),
                }
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(e) = entries.get(&format!("{svc}.{ns}")) else {
                    return nx();
                };
                let (port, proto) = (&port[1..], &proto[1..]);
                if !e.ports.iter().any(|(n, p, _)| n == port && *p == proto) {
                    return nx();
                }
                match qtype {
                    RecordType::SRV => found(self.srv(qname, svc, ns, e, port, proto)),
                    _ => no_data(),
                }
            }
            [cluster, svc, ns, "svc"] => match entries.get(&format!("{svc}.{ns}")) {
                Some(e) if e.pods.iter().any(|p| &*p.cluster == *cluster) => no_data(),
                _ => nx(),
            },
            [host, cluster, svc, ns, "svc"] => {
                let Some(e) = entries.get(&format!("{svc}.{ns}")) else {
                    return nx();
                };
                let pods: Vec<&Pod> = e
                    .pods
                    .iter()
                    .filter(|p| &*p.cluster == *cluster && &*p.host == *host)
                    .collect();
                if pods.is_empty() {
                    return nx();
                }
                match qtype {
                    RecordType::A => found(
                        pods.iter()
                            .map(|p| self.record(qname.clone(), RData::A(A(p.ip))))
                            .collect(),
                    ),
                    _ => no_data(),
                }
            }
            _ => nx(),
        }
    }

    /// The SRV records of port `port`/`proto` of import `svc.ns`, owned by `qname`.
    fn srv(
        &self,
        qname: &Name,
        svc: &str,
        ns: &str,
        e: &Entry,
        port: &str,
        proto: &str,
    ) -> Vec<Record> {
        if !e.headless {
            let Some((_, _, number)) = e.ports.iter().find(|(n, p, _)| n == port && *p == proto)
            else {
                return Vec::new();
            };
            let target = self.name(&[svc, ns, "svc"]);
            return vec![self.record(qname.clone(), RData::SRV(SRV::new(0, 100, *number, target)))];
        }
        let mut out: Vec<(Name, u16)> = e
            .pods
            .iter()
            .filter_map(|p| {
                let (_, _, number) = p
                    .ports
                    .iter()
                    .find(|(n, pr, _)| &**n == port && *pr == proto)?;
                Some((self.name(&[&p.host, &p.cluster, svc, ns, "svc"]), *number))
            })
            .collect();
        out.sort();
        out.dedup();
        out.into_iter()
            .map(|(target, number)| {
                self.record(qname.clone(), RData::SRV(SRV::new(0, 100, number, target)))
            })
            .collect()
    }
}

fn proto_label(proto: &str) -> Option<&'static str> {
    match proto {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

/// The entry of import `full` (`namespace/name`), if it is imported.
fn entry(state: &MeshState, full: &str) -> Option<Entry> {
    let import = state.clusterset.imports.get(full)?;
    let headless = import.type_ == ImportType::Headless;
    let ports = import
        .ports
        .iter()
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| Some((p.name.clone(), proto_label(&p.protocol)?, p.port)))
        .collect();
    let mut pods = Vec::new();
    if headless {
        for (cluster, c) in &state.clusters {
            if c.services.get(full).is_none_or(|s| s.export.is_none()) {
                continue;
            }
            for slice in c.slices_of(full) {
                let hostnames: BTreeMap<Ipv4Addr, &str> =
                    slice.hostnames.iter().map(|(ip, h)| (*ip, &**h)).collect();
                let ports: Vec<(Box<str>, &'static str, u16)> = slice
                    .ports
                    .iter()
                    .filter(|p| !p.name.is_empty())
                    .filter_map(|p| {
                        let proto = proto_label(crate::maps::protocol_name(p.proto))?;
                        Some((p.name.clone(), proto, p.port))
                    })
                    .collect();
                for (ip, flags) in &slice.endpoints {
                    if flags & endpoint_flags::READY == 0 {
                        continue;
                    }
                    let host = hostnames
                        .get(ip)
                        .map_or_else(|| ip.to_string().replace('.', "-"), |h| (*h).to_owned());
                    pods.push(Pod {
                        cluster: cluster.as_str().into(),
                        host: host.into(),
                        ip: *ip,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    Some(Entry {
        ip: state.clusterset.ips.get(full).copied(),
        headless,
        ports,
        pods,
    })
}

/// `type` and `result` labels of a query.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// The record type asked for (`A`, `SRV`, …).
    pub r#type: String,
    /// `answered`, `no_data`, `nxdomain`, `refused`, `malformed`.
    pub result: String,
}

/// The DNS server's metrics.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    queries: Family<QueryLabels, Counter>,
    seconds: Histogram,
}

impl DnsMetrics {
    /// Registers `dns_queries_total` and `dns_query_seconds` (prefixed `raftmesh_agent_` by the registry).
    pub fn register(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics {
            queries: Family::default(),
            seconds: Histogram::new([
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025,
            ]),
        };
        registry.register(
            "dns_queries",
            "clusterset DNS queries answered, by record type and result",
            m.queries.clone(),
        );
        registry.register(
            "dns_query_seconds",
            "time to answer a clusterset DNS query, from its decoding to its answer being queued",
            m.seconds.clone(),
        );
        m
    }
}

/// The hickory-server request handler over a [`Zone`].
#[derive(Debug, Clone)]
pub struct Handler {
    zone: Arc<Zone>,
    metrics: DnsMetrics,
}

impl Handler {
    /// Answers from `zone`, counting into `metrics`.
    pub fn new(zone: Arc<Zone>, metrics: DnsMetrics) -> Handler {
        Handler { zone, metrics }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let builder = MessageResponseBuilder::from_message_request(request);
        let (qtype, result, sent) = match request.request_info() {
            Err(_) => {
                metadata.response_code = ResponseCode::FormErr;
                let sent = response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await;
                ("none".to_owned(), "malformed", sent)
            }
            Ok(info) => {
                let qtype = info.query.query_type();
                let qname: Name = info.query.name().clone().into();
                let answer = self.zone.answer(&qname, qtype);
                metadata.response_code = answer.code;
                metadata.authoritative = answer.code != ResponseCode::Refused;
                let result = match (answer.code, answer.answers.is_empty()) {
                    (ResponseCode::NoError, false) => "answered",
                    (ResponseCode::NoError, true) => "no_data",
                    (ResponseCode::NXDomain, _) => "nxdomain",
                    _ => "refused",
                };
                let sent = response_handle
                    .send_response(builder.build(
                        metadata,
                        answer.answers.iter(),
                        std::iter::empty(),
                        answer.soa.iter(),
                        std::iter::empty(),
                    ))
                    .await;
                (qtype.to_string(), result, sent)
            }
        };
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                r#type: qtype,
                result: result.to_owned(),
            })
            .inc();
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS answer failed");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                Header {
                    metadata,
                    counts: HeaderCounts::default(),
                }
                .into()
            }
        }
    }
}

/// Serves `zone` on UDP and TCP at `addr` until the process ends.
pub async fn serve(
    addr: std::net::SocketAddr,
    zone: Arc<Zone>,
    metrics: DnsMetrics,
) -> std::io::Result<hickory_server::Server<Handler>> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let mut server = hickory_server::Server::new(Handler::new(zone, metrics));
    server.register_socket(udp);
    server.register_listener(tcp, std::time::Duration::from_secs(5), 64 << 10);
    Ok(server)
}

#[cfg(test)]
mod tests;
