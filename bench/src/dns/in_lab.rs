//! The lab part: a ServiceExport in infra until the name resolves in apps.

use super::*;

/// One lab round: per change, ms from the apply returning.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct LabRound {
    /// Until apps' node-1 agent answers the name with an address.
    pub(super) resolved_ms: Vec<f64>,
    /// Until infra's store has the exported service record (the manifests poll and one pass).
    pub(super) published_ms: Vec<f64>,
    /// From the record in infra's store to the answer: the mesh's own share.
    pub(super) published_to_resolved_ms: Vec<f64>,
}

pub(super) fn summary(ms: &[f64]) -> Option<Percentiles> {
    let mut s = Samples::with_capacity(ms.len());
    for v in ms {
        s.record(Duration::from_secs_f64(v / 1000.0));
    }
    s.summary()
}

/// The lab part's result.
#[derive(Debug, Serialize)]
pub(super) struct LabReport {
    pub(super) changes_per_round: u32,
    pub(super) rounds: Vec<LabRound>,
    /// The address each export resolved to (in the lab's clusterset range).
    pub(super) addresses: Vec<String>,
}

/// Takes the lab down however the run ends.
pub(super) struct LabGuard(Option<Lab>);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            eprintln!("taking the lab down…");
            if let Err(e) = lab.down(&mut |_: &str| {}) {
                eprintln!("lab down: {e:#}");
            }
        }
    }
}

pub(super) async fn lab_phase(args: &DnsArgs, exe_dir: &Path) -> Result<LabReport> {
    let bins = Binaries::find(exe_dir)?;
    let work = tempfile::tempdir()?;
    let opts = UpOptions {
        base: work.path().join("labs"),
        name: "dns".to_owned(),
        spec: LabSpec::default_lab(),
        bins,
        config: work.path().join("config"),
    };
    eprintln!("bringing up the lab (default spec)…");
    let base = opts.base.clone();
    let up =
        tokio::task::spawn_blocking(move || Lab::up(opts, &mut |line: &str| eprintln!("  {line}")))
            .await?;
    let mut guard = match up {
        Ok(lab) => LabGuard(Some(lab)),
        Err(e) => {
            if let Ok(Some(half)) = Lab::open(&base, "dns") {
                let _ = half.down(&mut |_: &str| {});
            }
            return Err(e.context("lab up"));
        }
    };
    let lab = guard.0.as_mut().expect("until dropped");
    measure_lab(args, lab).await
}

/// A UDP socket in network namespace `netns` (created on a thread that entered it; a socket
/// stays in the namespace it was made in), connected to `to`.
pub(super) fn socket_in(netns: &str, to: SocketAddr) -> Result<tokio::net::UdpSocket> {
    let path = lab::netns::path_of(netns);
    let socket = std::thread::spawn(move || -> Result<StdUdpSocket> {
        let ns = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let s = StdUdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))??;
    Ok(tokio::net::UdpSocket::from_std(socket)?)
}

/// The answer `socket`'s server gives to `q` now: its code and A records; `None` without an
/// answer within `wait`.
pub(super) async fn ask(
    socket: &tokio::net::UdpSocket,
    q: &Question,
    id: u16,
    wait: Duration,
) -> Result<Option<(ResponseCode, Vec<Ipv4Addr>)>> {
    let mut wire = q.wire.clone();
    wire[..2].copy_from_slice(&id.to_be_bytes());
    socket.send(&wire).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await else {
            return Ok(None);
        };
        let n = n?;
        let m = Message::from_vec(&buf[..n]).map_err(|e| anyhow!("undecodable answer: {e}"))?;
        if m.metadata.id != id {
            continue;
        }
        let ips = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        return Ok(Some((m.metadata.response_code, ips)));
    }
}

/// Whether `ip` is in the lab's ClusterSetIP range.
pub(super) fn in_lab_clusterset(ip: Ipv4Addr) -> bool {
    let (base, len) = lab::plan::CLUSTERSET_CIDR.split_once('/').expect("a CIDR");
    let base: Ipv4Addr = base.parse().expect("an address");
    let len: u32 = len.parse().expect("a length");
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(base) & mask
}

pub(super) async fn measure_lab(args: &DnsArgs, lab: &mut Lab) -> Result<LabReport> {
    let apps = lab.state.spec.cluster("apps").context("apps")?.clone();
    let node = lab
        .plan
        .nodes(&apps)
        .into_iter()
        .find(|n| n.name == "node-1")
        .context("apps/node-1")?;
    let dns = SocketAddr::from((node.ip, lab::plan::DNS_PORT));
    let socket = socket_in(&node.netns, dns)?;
    let name = |k: u32| format!("bench-{k}.demo.svc.{DEFAULT_ZONE}");

    // The agent answers (NXDOMAIN for a name not exported yet) before the first change.
    let first = Question::new(name(0), Expect::NxDomain)?;
    let deadline = Instant::now() + args.patience;
    let mut id = 0u16;
    loop {
        id = id.wrapping_add(1);
        if let Some((code, _)) = ask(&socket, &first, id, Duration::from_millis(200)).await? {
            ensure!(
                code == ResponseCode::NXDomain,
                "apps/node-1's agent answered {code} for {} before it was exported",
                first.name
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "apps/node-1's agent does not answer DNS at {dns}"
        );
    }

    // When each bench service's exported record reached infra's store.
    let published: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let prefix = Key::Service {
        cluster: "infra".to_owned(),
        namespace: "demo".to_owned(),
        name: "bench-".to_owned(),
    }
    .to_string();
    let endpoint = {
        let (index, c) = lab::plan::indexed(&lab.state.spec)
            .find(|(_, c)| c.name == "infra")
            .context("infra")?;
        let m = lab.plan.members(index, c);
        format!("https://{}:2379", m.first().context("a member")?.host_ip)
    };
    let watch = AbortOnDrop(tokio::spawn(watch_published(
        endpoint,
        lab.pki_dir("infra"),
        prefix,
        published.clone(),
    )));

    let mut rng = args.seed.max(1);
    let mut rounds = Vec::new();
    let mut addresses = Vec::new();
    let mut k = 0u32;
    for round in 0..args.lab_rounds {
        let mut r = LabRound::default();
        for _ in 0..args.lab_changes {
            k += 1;
            tokio::time::sleep(Duration::from_millis(xorshift(&mut rng) % 1000)).await;
            let service = format!("bench-{k}");
            let mut spec = lab.state.spec.clone();
            spec.clusters
                .iter_mut()
                .find(|c| c.name == "infra")
                .context("infra")?
                .services
                .push(ServiceSpec {
                    name: service.clone(),
                    namespace: "demo".to_owned(),
                    global: false,
                    shared: true,
                    affinity: "none".to_owned(),
                    exported: true,
                    headless: false,
                    selector: BTreeMap::from([("app".to_owned(), "echo".to_owned())]),
                    ports: vec![PortSpec {
                        name: "tcp".to_owned(),
                        port: 80,
                        target_port: 8080,
                        protocol: "TCP".to_owned(),
                    }],
                });
            lab.apply(spec)?;
            let began = Instant::now();
            let q = Question::new(name(k), Expect::NxDomain)?;
            let (resolved, ip) = loop {
                let tick = Instant::now();
                id = id.wrapping_add(1);
                if let Some((code, ips)) = ask(&socket, &q, id, args.lab_poll).await?
                    && code == ResponseCode::NoError
                    && let Some(ip) = ips.first()
                {
                    break (Instant::now(), *ip);
                }
                ensure!(
                    began.elapsed() < args.patience,
                    "{} did not resolve within {} s of its export",
                    q.name,
                    args.patience.as_secs()
                );
                tokio::time::sleep_until(tokio::time::Instant::from_std(tick + args.lab_poll))
                    .await;
            };
            ensure!(
                in_lab_clusterset(ip),
                "{} resolved to {ip}, outside the lab's clusterset range {}",
                q.name,
                lab::plan::CLUSTERSET_CIDR
            );
            let at = loop {
                if let Some(at) = published.lock().expect("not poisoned").get(&service) {
                    break *at;
                }
                ensure!(
                    began.elapsed() < args.patience,
                    "infra's store never showed demo/{service} exported"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            r.resolved_ms.push(ms(resolved - began));
            r.published_ms.push(ms(at.saturating_duration_since(began)));
            r.published_to_resolved_ms
                .push(ms(resolved.saturating_duration_since(at)));
            addresses.push(ip.to_string());
        }
        let p = summary(&r.resolved_ms).expect("changes");
        eprintln!(
            "  lab round {}/{}: export → resolves p50 {:.0} ms, p99 {:.0} ms",
            round + 1,
            args.lab_rounds,
            p.p50_ms,
            p.p99_ms
        );
        rounds.push(r);
    }
    drop(watch);
    Ok(LabReport {
        changes_per_round: args.lab_changes,
        rounds,
        addresses,
    })
}

/// Aborts a task when dropped (before the lab goes down under it).
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches `prefix` in a cluster's store as its admin and notes when each service first shows
/// up exported; reconnects if the watch ends.
pub(super) async fn watch_published(
    endpoint: String,
    pki: PathBuf,
    prefix: String,
    published: Arc<Mutex<BTreeMap<String, Instant>>>,
) {
    loop {
        if let Err(e) = watch_once(&endpoint, &pki, &prefix, &published).await {
            eprintln!("  (watch on {endpoint}: {e:#}; again)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(super) async fn watch_once(
    endpoint: &str,
    pki: &Path,
    prefix: &str,
    published: &Mutex<BTreeMap<String, Instant>>,
) -> Result<()> {
    let settings = Settings::timeouts(Duration::from_secs(2), Some(Duration::from_secs(5)))
        .keep_alive(Duration::from_secs(1), Duration::from_secs(1), false);
    let mut client =
        mesh_client::member(endpoint, Some(&PkiDir::new(pki).admin()), &settings).await?;
    let note = |key: &str, value: &[u8]| {
        if let Ok((Key::Service { name, .. }, Record::Service(s))) = Record::decode_at(key, value)
            && s.exported
        {
            published
                .lock()
                .expect("not poisoned")
                .entry(name)
                .or_insert_with(Instant::now);
        }
    };
    crate::propagation::on_every_put(&mut client, prefix, note).await
}
