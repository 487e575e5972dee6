//! The three servers measured: the floor (a UDP echo), the agent's DNS server in-process, and
//! dnsmasq as its own process; each stopped on drop.

use super::*;

/// A server measured: where it listens and where its CPU time is read.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) label: &'static str,
    pub(super) addr: SocketAddr,
    /// `/proc/…/stat` of the server's thread or process.
    pub(super) stat: PathBuf,
    pub(super) check: Check,
}

pub(super) use crate::procfs::cpu_ticks;

/// A port on 127.0.0.1 free for UDP at the time of asking (the servers bind it themselves;
/// they retry on a race).
pub(super) fn free_port() -> Result<u16> {
    Ok(StdUdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The floor: a thread sending every datagram back with the QR bit set, until dropped.
pub(super) struct Echo {
    pub(super) target: Target,
    pub(super) stop: Arc<std::sync::atomic::AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    pub(super) fn start() -> Result<Echo> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let socket = StdUdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("dns-echo".to_owned())
                .spawn(move || {
                    let _ = tid_tx.send(nix::unistd::gettid().as_raw());
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, from)) = socket.recv_from(&mut buf) else {
                            continue;
                        };
                        if n >= 12 {
                            buf[2] |= 0x80;
                            let _ = socket.send_to(&buf[..n], from);
                        }
                    }
                })?
        };
        let tid = tid_rx.recv()?;
        Ok(Echo {
            target: Target {
                label: "UDP echo (floor)",
                addr,
                stat: PathBuf::from(format!("/proc/self/task/{tid}/stat")),
                check: Check::Echo,
            },
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The agent's DNS server (`node_agent::dns::serve`) on a current-thread runtime on its own
/// thread, as the agent runs it; stopped when dropped.
pub(super) struct AgentDns {
    pub(super) target: Target,
    pub(super) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentDns {
    pub(super) fn start(zone: Arc<Zone>) -> Result<AgentDns> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(SocketAddr, i32)>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("agent-dns".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut registry = prometheus_client::registry::Registry::default();
                    let metrics = DnsMetrics::register(&mut registry);
                    let mut last = None;
                    for _ in 0..10 {
                        let addr = match free_port() {
                            Ok(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                            Err(e) => {
                                last = Some(e);
                                continue;
                            }
                        };
                        match node_agent::dns::serve(addr, zone.clone(), metrics.clone()).await {
                            Ok(server) => {
                                let tid = nix::unistd::gettid().as_raw();
                                let _ = ready_tx.send(Ok((addr, tid)));
                                let _ = stop_rx.await;
                                drop(server);
                                return;
                            }
                            // Another process took the port between asking and binding.
                            Err(e) => last = Some(e.into()),
                        }
                    }
                    let _ = ready_tx.send(Err(last
                        .unwrap_or_else(|| anyhow!("no port"))
                        .context("binding the agent's DNS server")));
                });
            })?;
        let (addr, tid) = ready_rx.recv()??;
        Ok(AgentDns {
            target: Target {
                label: "raftmesh node agent",
                addr,
                stat: PathBuf::from(format!("/proc/self/task/{tid}/stat")),
                check: Check::Answers,
            },
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for AgentDns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// dnsmasq in the foreground serving the same names as host records; killed when dropped.
pub(super) struct Dnsmasq {
    pub(super) target: Target,
    pub(super) child: Child,
    pub(super) version: String,
    /// Holds the hosts file and the log.
    pub(super) _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub(super) fn start(program: &Path, mix: &Mix) -> Result<Dnsmasq> {
        let dir = tempfile::tempdir()?;
        let hosts = dir.path().join("clusterset.hosts");
        let mut text = String::new();
        for q in &mix.present {
            if let Expect::Addresses(ips) = &q.expect {
                for ip in ips {
                    let _ = writeln!(text, "{ip} {}", q.name);
                }
            }
        }
        std::fs::write(&hosts, text)?;
        let probe = mix.present.first().context("no names")?;
        let mut last = anyhow!("dnsmasq did not start");
        for _ in 0..3 {
            let port = free_port()?;
            let log = std::fs::File::create(dir.path().join("dnsmasq.log"))?;
            let mut child = Command::new(program)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                ])
                .arg(format!("--addn-hosts={}", hosts.display()))
                .arg(format!("--port={port}"))
                .args([
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    // Names in the zone that are not host records: NXDOMAIN, never forwarded.
                    "--local=/clusterset.local/",
                    // No cache of forwarded answers (there are none); host records are always
                    // held in memory.
                    "--cache-size=0",
                    // The agent's TTL.
                    "--local-ttl=5",
                    "--log-facility=-",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", program.display()))?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            match wait_answering(addr, probe, &mut child) {
                Ok(()) => {
                    let pid = child.id();
                    return Ok(Dnsmasq {
                        target: Target {
                            label: "dnsmasq",
                            addr,
                            stat: PathBuf::from(format!("/proc/{pid}/stat")),
                            check: Check::Answers,
                        },
                        child,
                        // "Dnsmasq version 2.90  Copyright (c) …": the version alone.
                        version: crate::machine::version_of(program)
                            .split("  ")
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                        _dir: dir,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log =
                        std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
                    last = e.context(format!("dnsmasq on port {port}: {}", log.trim()));
                }
            }
        }
        Err(last)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` answers `probe` (5 s at most), or `child` exits.
pub(super) fn wait_answering(addr: SocketAddr, probe: &Question, child: &mut Child) -> Result<()> {
    let socket = StdUdpSocket::bind("127.0.0.1:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1500];
    let mut id = 0u16;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status})");
        }
        id = id.wrapping_add(1);
        let mut wire = probe.wire.clone();
        wire[..2].copy_from_slice(&id.to_be_bytes());
        socket.send(&wire)?;
        if let Ok(n) = socket.recv(&mut buf)
            && judge(&buf[..n], id, probe, Check::Answers)?.is_some()
        {
            return Ok(());
        }
    }
    bail!("no answer within 5 s")
}
