//! mesh-echo: the lab's workload and its client.
//!
//! `mesh-echo serve --name NAME [--tcp PORT]… [--udp PORT]… [--tcp6 PORT]…` answers every TCP
//! connection and every UDP datagram with NAME (a TCP connection gets `NAME\n`; the client
//! closes it); `--tcp6` listens on IPv6 (`[::]`).
//!
//! `mesh-echo probe (--tcp | --udp | --udp-connected) ADDR:PORT [--count N] [--interval-ms MS]
//! [--timeout-ms MS] [--until FILE]` makes N attempts (or until FILE exists) and prints one
//! JSON line per attempt — `{"ok":true,"reply":"NAME","peer":"ADDR:PORT"}` or
//! `{"ok":false,"error":"…"}` — where `peer` is what getpeername (TCP, connected UDP) or
//! recvfrom (UDP) said, so socket load balancing's address rewrites show. ADDR may be a host
//! name: each attempt then resolves it first (getaddrinfo, as a client connecting by name
//! does), takes the first IPv4 address and says which (`"addr"`). `--connect-only`
//! (TCP) closes right after connect; `--summary` prints one line at the end instead:
//! `{"attempts":N,"failures":F,"p50_us":…,"p90_us":…,"p99_us":…,"per_second":…}`. Exits 0
//! when every attempt succeeded, 1 otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  mesh-echo serve --name NAME [--tcp PORT]... [--udp PORT]... [--tcp6 PORT]...\n  mesh-echo probe (--tcp|--udp|--udp-connected) ADDR:PORT [--count N] [--interval-ms MS] [--timeout-ms MS] [--until FILE] [--connect-only] [--summary]"
    );
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("probe") => probe(&args[1..]),
        _ => usage(),
    }
}

fn serve(args: &[String]) -> ExitCode {
    let mut name = None;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next();
        match (a.as_str(), value) {
            ("--name", Some(v)) => name = Some(v.clone()),
            ("--tcp", Some(v)) => match v.parse::<u16>() {
                Ok(p) => tcp.push(("0.0.0.0", p)),
                Err(_) => return usage(),
            },
            ("--tcp6", Some(v)) => match v.parse::<u16>() {
                Ok(p) => tcp.push(("::", p)),
                Err(_) => return usage(),
            },
            ("--udp", Some(v)) => match v.parse::<u16>() {
                Ok(p) => udp.push(p),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let Some(name) = name else { return usage() };
    let mut threads = Vec::new();
    for (host, port) in tcp {
        let listener = match TcpListener::bind((host, port)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mesh-echo: tcp {port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.clone();
        threads.push(thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let name = name.clone();
                // The client closes first (after the reply line), so the TIME_WAIT state stays
                // on its side: a server closing first would collect one per connection and
                // stall clients that reuse a port within a minute.
                thread::spawn(move || {
                    let mut conn = conn;
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = conn.write_all(format!("{name}\n").as_bytes());
                    let mut sink = [0u8; 256];
                    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                });
            }
        }));
    }
    for port in udp {
        let socket = match UdpSocket::bind(("0.0.0.0", port)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mesh-echo: udp {port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.clone();
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), from);
            }
        }));
    }
    eprintln!("mesh-echo: serving as {name}");
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

#[derive(Clone, Copy)]
enum Mode {
    Tcp,
    Udp,
    UdpConnected,
}

fn probe(args: &[String]) -> ExitCode {
    let mut target: Option<(Mode, String)> = None;
    let mut count = 1u64;
    let mut interval = Duration::ZERO;
    let mut timeout = Duration::from_secs(2);
    let mut until: Option<PathBuf> = None;
    let mut connect_only = false;
    let mut summary = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--connect-only" => {
                connect_only = true;
                continue;
            }
            "--summary" => {
                summary = true;
                continue;
            }
            _ => {}
        }
        let Some(v) = it.next() else { return usage() };
        let mode = match a.as_str() {
            "--tcp" => Some(Mode::Tcp),
            "--udp" => Some(Mode::Udp),
            "--udp-connected" => Some(Mode::UdpConnected),
            _ => None,
        };
        if let Some(mode) = mode {
            if !v.contains(':') {
                return usage();
            }
            target = Some((mode, v.clone()));
            continue;
        }
        let n: Option<u64> = v.parse().ok();
        match (a.as_str(), n) {
            ("--count", Some(n)) => count = n,
            ("--interval-ms", Some(n)) => interval = Duration::from_millis(n),
            ("--timeout-ms", Some(n)) => timeout = Duration::from_millis(n),
            ("--until", _) => {
                until = Some(PathBuf::from(v));
                count = u64::MAX;
            }
            _ => return usage(),
        }
    }
    let Some((mode, target)) = target else {
        return usage();
    };
    let literal: Option<SocketAddr> = target.parse().ok();
    let mut failures = 0u64;
    let mut attempts = 0u64;
    let mut micros: Vec<u64> = Vec::new();
    let began = Instant::now();
    while attempts < count {
        if until.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        attempts += 1;
        let started = Instant::now();
        let resolved = match literal {
            Some(addr) => Ok(addr),
            None => resolve(&target),
        };
        let (result, addr) = match resolved {
            Err(e) => (Err(e), None),
            Ok(addr) => (attempt(mode, addr, timeout, connect_only), Some(addr)),
        };
        let took = started.elapsed().as_micros() as u64;
        let line = match result {
            Ok((reply, peer)) => {
                micros.push(took);
                let mut line =
                    json!({"ok": true, "reply": reply, "peer": peer.to_string(), "micros": took});
                if literal.is_none()
                    && let Some(addr) = addr
                {
                    line["addr"] = json!(addr.to_string());
                }
                line
            }
            Err(e) => {
                failures += 1;
                json!({"ok": false, "error": e.to_string(), "micros": took})
            }
        };
        if !summary {
            println!("{line}");
        }
        if !interval.is_zero() {
            thread::sleep(interval);
        }
    }
    if summary {
        let elapsed = began.elapsed().as_secs_f64();
        micros.sort_unstable();
        let pct = |p: f64| {
            micros
                .get(((micros.len() as f64 * p) as usize).min(micros.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{}",
            json!({
                "attempts": attempts,
                "failures": failures,
                "p50_us": pct(0.50),
                "p90_us": pct(0.90),
                "p99_us": pct(0.99),
                "per_second": attempts as f64 / elapsed,
            })
        );
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One attempt at `addr`.
fn attempt(
    mode: Mode,
    addr: SocketAddr,
    timeout: Duration,
    connect_only: bool,
) -> std::io::Result<(String, SocketAddr)> {
    match mode {
        Mode::Tcp if connect_only => TcpStream::connect_timeout(&addr, timeout)
            .and_then(|c| Ok((String::new(), c.peer_addr()?))),
        Mode::Tcp => tcp_once(addr, timeout),
        Mode::Udp => udp_once(addr, timeout, false),
        Mode::UdpConnected => udp_once(addr, timeout, true),
    }
}

/// The first IPv4 address of `host:port` (getaddrinfo).
fn resolve(target: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    target
        .to_socket_addrs()
        .map_err(|e| std::io::Error::new(e.kind(), format!("resolving {target}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("resolving {target}: no IPv4 address"),
            )
        })
}

fn tcp_once(addr: SocketAddr, timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let peer = conn.peer_addr()?;
    let mut reply = String::new();
    BufReader::new(&mut conn).read_line(&mut reply)?;
    if !reply.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before a reply line",
        ));
    }
    Ok((reply.trim().to_owned(), peer))
}

fn udp_once(
    addr: SocketAddr,
    timeout: Duration,
    connected: bool,
) -> std::io::Result<(String, SocketAddr)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2048];
    if connected {
        socket.connect(addr)?;
        socket.send(b"ping")?;
        let n = socket.recv(&mut buf)?;
        let peer = socket.peer_addr()?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), peer))
    } else {
        socket.send_to(b"ping", addr)?;
        let (n, from) = socket.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    }
}
