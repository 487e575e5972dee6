//! The in-process part: the agent's state and zone, the query mix, the load generator and its
//! checks.

use super::*;

/// The in-process part's settings.
#[derive(Debug, Clone)]
pub(super) struct InProcess {
    pub(super) dnsmasq: PathBuf,
    pub(super) services: u32,
    pub(super) clients: u32,
    pub(super) duration: Duration,
    pub(super) rounds: u32,
    pub(super) nxdomain_percent: u32,
    pub(super) seed: u64,
}

/// What a correct answer to a question is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expect {
    /// NOERROR with exactly these A records (sorted).
    Addresses(Vec<Ipv4Addr>),
    /// NXDOMAIN.
    NxDomain,
}

/// One A question, encoded once (its id is patched per query), and its correct answer.
#[derive(Debug, Clone)]
pub(super) struct Question {
    pub(super) name: String,
    pub(super) wire: Vec<u8>,
    pub(super) expect: Expect,
}

impl Question {
    pub(super) fn new(name: String, expect: Expect) -> Result<Question> {
        let mut qname = Name::from_str(&name).map_err(|e| anyhow!("{name}: {e}"))?;
        qname.set_fqdn(true);
        let mut m = Message::new(0, MessageType::Query, OpCode::Query);
        // As a pod's stub resolver asks.
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(qname, RecordType::A));
        Ok(Question {
            wire: m.to_vec().map_err(|e| anyhow!("encoding {name}: {e}"))?,
            name,
            expect,
        })
    }
}

/// The names asked for: every import (existing) and names that do not exist.
#[derive(Debug)]
pub(super) struct Mix {
    pub(super) present: Vec<Question>,
    pub(super) absent: Vec<Question>,
    pub(super) nxdomain_percent: u64,
}

impl Mix {
    /// A random question: an absent name `nxdomain_percent` of the time.
    pub(super) fn pick(&self, rng: &mut u64) -> &Question {
        let roll = xorshift(rng);
        if roll % 100 < self.nxdomain_percent {
            &self.absent[(roll / 100) as usize % self.absent.len()]
        } else {
            &self.present[(roll / 100) as usize % self.present.len()]
        }
    }

    pub(super) fn headless(&self) -> usize {
        self.present
            .iter()
            .filter(|q| matches!(&q.expect, Expect::Addresses(a) if a.len() > 1))
            .count()
    }
}

/// The agent's view of `services` imports exported by `infra` (the records it would list from
/// its store), with the state's clusterset computed as the agent does.
pub(super) fn mesh_state(services: u32) -> MeshState {
    let mut state = MeshState::default();
    let mut revision = 0i64;
    let mut put = |state: &mut MeshState, key: Key, record: Record| {
        revision += 1;
        state.apply(&key.to_string(), Some(&record.encode()), revision);
    };
    put(
        &mut state,
        Key::Cluster {
            cluster: OWN_CLUSTER.to_owned(),
        },
        Record::Cluster(ClusterRecord {
            schema: SCHEMA,
            name: OWN_CLUSTER.to_owned(),
            id: 1,
            clusterset_cidr: CLUSTERSET_CIDR.to_owned(),
            ..Default::default()
        }),
    );
    put(
        &mut state,
        Key::Cluster {
            cluster: EXPORTER.to_owned(),
        },
        Record::Cluster(ClusterRecord {
            schema: SCHEMA,
            name: EXPORTER.to_owned(),
            id: 2,
            clusterset_cidr: CLUSTERSET_CIDR.to_owned(),
            ..Default::default()
        }),
    );
    for i in 0..services {
        let (namespace, name) = service_name(i);
        let headless = i % HEADLESS_EVERY == HEADLESS_EVERY - 1;
        put(
            &mut state,
            Key::Service {
                cluster: EXPORTER.to_owned(),
                namespace: namespace.clone(),
                name: name.clone(),
            },
            Record::Service(ServiceRecord {
                schema: SCHEMA,
                namespace: namespace.clone(),
                name: name.clone(),
                cluster_ips: if headless {
                    Vec::new()
                } else {
                    vec![Ipv4Addr::from(0x0a64_0000 + i).to_string()]
                },
                ports: vec![Port {
                    name: "http".to_owned(),
                    port: 80,
                    protocol: "TCP".to_owned(),
                }],
                global: true,
                shared: true,
                exported: true,
                export_created: i64::from(i) + 1,
                headless,
                ..Default::default()
            }),
        );
        if headless {
            put(
                &mut state,
                Key::Endpoints {
                    cluster: EXPORTER.to_owned(),
                    namespace,
                    service: name,
                    slice: "a".to_owned(),
                },
                Record::Endpoints(EndpointsRecord {
                    schema: SCHEMA,
                    ports: vec![Port {
                        name: "http".to_owned(),
                        port: 8080,
                        protocol: "TCP".to_owned(),
                    }],
                    endpoints: headless_endpoints(i)
                        .into_iter()
                        .enumerate()
                        .map(|(e, ip)| Endpoint {
                            addresses: vec![ip.octets().to_vec()],
                            ready: true,
                            serving: true,
                            hostname: format!("pod-{e}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            );
        }
    }
    state.refresh_clusterset(OWN_CLUSTER);
    state
}

/// Service `i`'s namespace and name.
pub(super) fn service_name(i: u32) -> (String, String) {
    (format!("team-{}", i % NAMESPACES), format!("svc-{i}"))
}

/// The ready endpoints of headless service `i` (sorted).
pub(super) fn headless_endpoints(i: u32) -> Vec<Ipv4Addr> {
    (0..HEADLESS_ENDPOINTS)
        .map(|e| Ipv4Addr::from(0x0a02_0000 + i * 4 + e + 1))
        .collect()
}

/// Every name of `state`'s imports with its correct answer, and `ABSENT_NAMES` names that do
/// not exist (in existing namespaces).
pub(super) fn mix(state: &MeshState, services: u32, nxdomain_percent: u32) -> Result<Mix> {
    let mut present = Vec::with_capacity(services as usize);
    for i in 0..services {
        let (ns, name) = service_name(i);
        let full = format!("{ns}/{name}");
        ensure!(
            state.clusterset.imports.contains_key(&full),
            "{full} is not imported"
        );
        let expect = if i % HEADLESS_EVERY == HEADLESS_EVERY - 1 {
            headless_endpoints(i)
        } else {
            vec![
                *state
                    .clusterset
                    .ips
                    .get(&full)
                    .with_context(|| format!("{full} has no ClusterSetIP"))?,
            ]
        };
        present.push(Question::new(
            format!("{name}.{ns}.svc.{DEFAULT_ZONE}"),
            Expect::Addresses(expect),
        )?);
    }
    let absent = (0..ABSENT_NAMES)
        .map(|j| {
            Question::new(
                format!("absent-{j}.team-{}.svc.{DEFAULT_ZONE}", j % NAMESPACES),
                Expect::NxDomain,
            )
        })
        .collect::<Result<_>>()?;
    Ok(Mix {
        present,
        absent,
        nxdomain_percent: u64::from(nxdomain_percent),
    })
}

/// How a server's answers are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// Against the question's correct answer.
    Answers,
    /// The floor: the question itself, sent back as a response.
    Echo,
}

/// Decodes an answer to query `id` of `q`: `Ok(None)` when it answers another query (a late
/// answer to one that timed out), an error when it is wrong.
pub(super) fn judge(
    bytes: &[u8],
    id: u16,
    q: &Question,
    check: Check,
) -> Result<Option<ResponseCode>> {
    let m = Message::from_vec(bytes).map_err(|e| anyhow!("{}: undecodable answer: {e}", q.name))?;
    if m.metadata.id != id {
        return Ok(None);
    }
    ensure!(
        m.metadata.message_type == MessageType::Response,
        "{}: not a response",
        q.name
    );
    let code = m.metadata.response_code;
    if check == Check::Echo {
        return Ok(Some(code));
    }
    let mut got: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    got.sort();
    let right = match &q.expect {
        Expect::NxDomain => code == ResponseCode::NXDomain && got.is_empty(),
        Expect::Addresses(want) => code == ResponseCode::NoError && got == *want,
    };
    ensure!(
        right,
        "wrong answer for {}: {code} {got:?}, expected {:?}",
        q.name,
        q.expect
    );
    Ok(Some(code))
}

/// Asks `target` every question once, in order, and checks every answer: both servers know
/// every name before they are timed.
pub(super) fn verify_all(target: &Target, mix: &Mix) -> Result<usize> {
    let socket = StdUdpSocket::bind("127.0.0.1:0")?;
    socket.connect(target.addr)?;
    socket.set_read_timeout(Some(QUERY_TIMEOUT))?;
    let mut buf = [0u8; 4096];
    let mut asked = 0;
    for (i, q) in mix.present.iter().chain(&mix.absent).enumerate() {
        let id = i as u16;
        let mut wire = q.wire.clone();
        wire[..2].copy_from_slice(&id.to_be_bytes());
        socket.send(&wire)?;
        loop {
            let n = socket
                .recv(&mut buf)
                .with_context(|| format!("{}: {} unanswered", target.label, q.name))?;
            if judge(&buf[..n], id, q, target.check)
                .with_context(|| target.label)?
                .is_some()
            {
                break;
            }
        }
        asked += 1;
    }
    Ok(asked)
}

/// One measurement of one server.
#[derive(Debug, Clone, Serialize)]
pub(super) struct LoadRun {
    pub(super) queries_per_second: f64,
    /// Answers to queries sent in the measured window.
    pub(super) answered: u64,
    /// Of which NXDOMAIN.
    pub(super) nxdomain: u64,
    /// Queries unanswered within `QUERY_TIMEOUT`.
    pub(super) timeouts: u64,
    /// Answers that arrived after their query timed out.
    pub(super) late: u64,
    pub(super) latency: Percentiles,
    /// The server's CPU time in the window per answered query.
    pub(super) server_cpu_us_per_query: Option<f64>,
}

/// One client socket's tally.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) samples: Samples,
    pub(super) answered: u64,
    pub(super) nxdomain: u64,
    pub(super) timeouts: u64,
    pub(super) late: u64,
}

/// One client: a socket with one query outstanding at a time, until `end`; records the
/// queries sent from `from` on.
pub(super) async fn client(
    target: Target,
    mix: Arc<Mix>,
    mut rng: u64,
    from: Instant,
    end: Instant,
) -> Result<Tally> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(target.addr).await?;
    let mut tally = Tally::default();
    let mut buf = [0u8; 4096];
    let mut wire = Vec::with_capacity(128);
    let mut id = (rng & 0xffff) as u16;
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(tally);
        }
        let q = mix.pick(&mut rng);
        id = id.wrapping_add(1);
        wire.clear();
        wire.extend_from_slice(&q.wire);
        wire[..2].copy_from_slice(&id.to_be_bytes());
        socket.send(&wire).await?;
        let counted = sent >= from;
        let deadline = tokio::time::Instant::from_std(sent + QUERY_TIMEOUT);
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => {
                    tally.timeouts += u64::from(counted);
                    break;
                }
                Ok(n) => {
                    let n = n?;
                    let Some(code) =
                        judge(&buf[..n], id, q, target.check).with_context(|| target.label)?
                    else {
                        tally.late += 1;
                        continue;
                    };
                    if counted {
                        tally.samples.record(sent.elapsed());
                        tally.answered += 1;
                        tally.nxdomain += u64::from(code == ResponseCode::NXDomain);
                    }
                    break;
                }
            }
        }
    }
}

/// Measures `target` with `clients` sockets on one current-thread runtime (this thread) for
/// `WARMUP` + `duration`.
pub(super) fn measure(
    target: &Target,
    mix: &Arc<Mix>,
    clients: u32,
    duration: Duration,
    seed: u64,
) -> Result<LoadRun> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let from = Instant::now() + WARMUP;
        let end = from + duration;
        // The server's CPU time over the measured window, read on the clients' thread.
        let cpu = {
            let stat = target.stat.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
                let before = cpu_ticks(&stat);
                tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
                Some(cpu_ticks(&stat)? - before?)
            })
        };
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let rng = (seed ^ 0x9e37_79b9_7f4a_7c15)
                    .wrapping_mul(u64::from(c) + 1)
                    .max(1);
                tokio::spawn(client(target.clone(), mix.clone(), rng, from, end))
            })
            .collect();
        let mut all = Tally::default();
        for t in tasks {
            let t = t.await??;
            all.samples.merge(t.samples);
            all.answered += t.answered;
            all.nxdomain += t.nxdomain;
            all.timeouts += t.timeouts;
            all.late += t.late;
        }
        let ticks = cpu.await?;
        let latency = all
            .samples
            .summary()
            .with_context(|| format!("{}: no answers", target.label))?;
        Ok(LoadRun {
            queries_per_second: all.answered as f64 / duration.as_secs_f64(),
            answered: all.answered,
            nxdomain: all.nxdomain,
            timeouts: all.timeouts,
            late: all.late,
            latency,
            server_cpu_us_per_query: ticks
                .filter(|_| all.answered > 0)
                .map(|t| t as f64 / TICKS_PER_SECOND * 1e6 / all.answered as f64),
        })
    })
}

/// One server's measurements.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ServerRuns {
    pub(super) server: &'static str,
    pub(super) version: String,
    /// Questions asked once each and checked before the timed runs (0: the floor).
    pub(super) verified_names: usize,
    pub(super) runs: Vec<LoadRun>,
}

impl ServerRuns {
    pub(super) fn range(&self, f: impl Fn(&LoadRun) -> f64) -> (f64, f64) {
        self.runs
            .iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    }
}

/// The in-process part's result.
#[derive(Debug, Serialize)]
pub(super) struct InProcessReport {
    pub(super) services: u32,
    pub(super) headless: usize,
    pub(super) absent_names: u32,
    pub(super) clients: u32,
    pub(super) duration_s: f64,
    pub(super) rounds: u32,
    pub(super) nxdomain_percent: u32,
    pub(super) seed: u64,
    /// Building the state and the zone from the records.
    pub(super) build_ms: f64,
    /// Floor, dnsmasq, raftmesh.
    pub(super) servers: Vec<ServerRuns>,
}

pub(super) fn in_process(s: &InProcess) -> Result<InProcessReport> {
    eprintln!(
        "building the agent's state and zone: {} imported services…",
        s.services
    );
    let started = Instant::now();
    let state = mesh_state(s.services);
    let zone = Arc::new(Zone::new(DEFAULT_ZONE).map_err(|e| anyhow!(e))?);
    zone.replace(&state);
    let build_ms = started.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        zone.len() == s.services as usize,
        "the zone names {} imports, not {}",
        zone.len(),
        s.services
    );
    let mix = Arc::new(mix(&state, s.services, s.nxdomain_percent)?);
    drop(state);

    let echo = Echo::start()?;
    let agent = AgentDns::start(zone)?;
    let dnsmasq = Dnsmasq::start(&s.dnsmasq, &mix)?;
    let mut servers = Vec::new();
    for (target, version) in [
        (&echo.target, String::new()),
        (&dnsmasq.target, dnsmasq.version.clone()),
        (
            &agent.target,
            "node_agent::dns, this build (commit above)".to_owned(),
        ),
    ] {
        let verified = if target.check == Check::Answers {
            let n = verify_all(target, &mix)?;
            eprintln!("{}: all {n} names answered correctly", target.label);
            n
        } else {
            0
        };
        servers.push(ServerRuns {
            server: target.label,
            version,
            verified_names: verified,
            runs: Vec::new(),
        });
    }
    let targets = [&echo.target, &dnsmasq.target, &agent.target];
    for round in 0..s.rounds {
        for (i, target) in targets.iter().enumerate() {
            let run = measure(
                target,
                &mix,
                s.clients,
                s.duration,
                s.seed.wrapping_add(u64::from(round)),
            )?;
            eprintln!(
                "  round {}/{}: {}: {:.0} queries/s, p50 {:.3} ms, p99 {:.3} ms, {} timeouts",
                round + 1,
                s.rounds,
                target.label,
                run.queries_per_second,
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.timeouts
            );
            servers[i].runs.push(run);
        }
    }
    drop((echo, dnsmasq, agent));
    Ok(InProcessReport {
        services: s.services,
        headless: mix.headless(),
        absent_names: ABSENT_NAMES,
        clients: s.clients,
        duration_s: s.duration.as_secs_f64(),
        rounds: s.rounds,
        nxdomain_percent: s.nxdomain_percent,
        seed: s.seed,
        build_ms,
        servers,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 2: ServiceExport in infra → the name resolves in apps (the lab).

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_imports_every_service_with_its_answer() {
        let state = mesh_state(250);
        let mix = mix(&state, 250, 10).unwrap();
        assert_eq!(mix.present.len(), 250);
        assert_eq!(mix.headless(), 2);
        assert_eq!(mix.absent.len(), ABSENT_NAMES as usize);
        // Every ClusterSetIP is distinct.
        let mut ips: Vec<Ipv4Addr> = state.clusterset.ips.values().copied().collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 248);
    }

    #[test]
    fn a_wrong_answer_is_an_error() {
        let q = Question::new(
            "a.b.svc.clusterset.local".to_owned(),
            Expect::Addresses(vec![Ipv4Addr::new(198, 18, 0, 1)]),
        )
        .unwrap();
        // The query itself, echoed: right for the floor, wrong (no address) for a server.
        let mut echo = q.wire.clone();
        echo[..2].copy_from_slice(&7u16.to_be_bytes());
        echo[2] |= 0x80;
        assert_eq!(
            judge(&echo, 7, &q, Check::Echo).unwrap(),
            Some(ResponseCode::NoError)
        );
        assert!(judge(&echo, 7, &q, Check::Answers).is_err());
        // An answer to another query is not judged.
        assert_eq!(judge(&echo, 8, &q, Check::Answers).unwrap(), None);
    }

    /// A short load against the agent's server: every answer checked (the run fails on a
    /// wrong one); nothing about how fast.
    #[test]
    fn the_agent_answers_the_load_correctly() {
        let state = mesh_state(300);
        let zone = Arc::new(Zone::new(DEFAULT_ZONE).unwrap());
        zone.replace(&state);
        let mix = Arc::new(mix(&state, 300, 20).unwrap());
        let agent = AgentDns::start(zone).unwrap();
        assert_eq!(verify_all(&agent.target, &mix).unwrap(), 300 + 1000);
        let run = measure(&agent.target, &mix, 2, Duration::from_millis(300), 3).unwrap();
        assert!(run.answered > 0);
        assert!(run.nxdomain > 0);
        let echo = Echo::start().unwrap();
        let floor = measure(&echo.target, &mix, 2, Duration::from_millis(300), 3).unwrap();
        assert!(floor.answered > 0);
    }
}
