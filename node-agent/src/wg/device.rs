//! The WireGuard interface, through wireguard-control: the kernel module over generic
//! netlink where it exists, otherwise a userspace implementation (boringtun) over its UAPI
//! socket in `/var/run/wireguard/<interface>.sock`.
//!
//! The userspace daemon is started by the agent, detached, so it outlives an agent restart
//! just as a kernel interface does: traffic keeps flowing while the agent is down, and a
//! restarted agent adopts the interface's peers.
//!
//! Whether the kernel has WireGuard is found out by creating the interface, never by looking
//! for `/sys/module/wireguard`: where WireGuard is a loadable module (EKS AL2023, Bottlerocket),
//! the kernel loads it on demand when the first `wireguard` link is created (the module's
//! `rtnl-link-wireguard` alias), so the directory is absent until then.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use super::key::KeyPair;
use super::peers::{Applied, KEEPALIVE_SECS, Plan, PublicKey};

/// Where the userspace implementations keep their sockets.
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// A failure configuring the interface.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interface name is not one (at most 15 bytes, no `/`).
    #[error("{0:?} is not an interface name (1 to 15 bytes, no '/' or whitespace)")]
    Name(String),
    /// Starting the userspace implementation.
    #[error("starting {program} for {interface}: {reason}")]
    Start {
        /// The program.
        program: String,
        /// The interface.
        interface: String,
        /// Why.
        reason: String,
    },
    /// The kernel refused to create a WireGuard interface (no module, or not allowed).
    #[error(
        "creating the WireGuard interface {interface} in the kernel: {source} (no wireguard module? use --wg-backend userspace or auto)"
    )]
    Kernel {
        /// The interface.
        interface: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A request to the interface.
    #[error("{op} on {interface}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The interface.
        interface: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The userspace implementation to run.
#[derive(Debug, Clone)]
pub struct Userspace {
    /// Its program (`boringtun-cli`, looked up in `PATH`).
    pub program: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Someone else runs it (a container of its own beside the agent's, so it lives on while
    /// the agent restarts): the agent waits for its socket and never starts it.
    pub external: bool,
}

/// Which backend to use.
#[derive(Debug, Clone)]
pub enum Choice {
    /// The kernel's.
    Kernel,
    /// This userspace implementation.
    Userspace(Userspace),
    /// The kernel's if its interface can be created, else this userspace implementation.
    Auto(Userspace),
}

/// One WireGuard interface.
#[derive(Debug, Clone)]
pub struct Interface {
    name: InterfaceName,
    text: String,
    backend: Backend,
    userspace: Option<Userspace>,
    /// With `auto` before [`Interface::resolve`]: the implementation to fall back to.
    fallback: Option<Userspace>,
}

/// A peer as the interface reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its configuration.
    pub applied: Applied,
    /// Where its last packets came from (or the configured endpoint).
    pub endpoint: Option<SocketAddr>,
    /// Bytes received.
    pub rx: u64,
    /// Bytes sent.
    pub tx: u64,
}

impl Interface {
    /// The interface `name`. With [`Choice::Auto`] it is the userspace one if its socket
    /// exists (a daemon from an earlier start), else the kernel's until
    /// [`Interface::resolve`] finds out.
    pub fn new(name: &str, choice: Choice) -> Result<Interface, Error> {
        if name.is_empty()
            || name.len() > 15
            || name.contains('/')
            || name.chars().any(char::is_whitespace)
        {
            return Err(Error::Name(name.to_owned()));
        }
        let parsed: InterfaceName = name.parse().map_err(|_| Error::Name(name.to_owned()))?;
        let mut interface = Interface {
            name: parsed,
            text: name.to_owned(),
            backend: Backend::Kernel,
            userspace: None,
            fallback: None,
        };
        match choice {
            Choice::Kernel => {}
            Choice::Userspace(u) => interface.use_userspace(u),
            Choice::Auto(u) => {
                if std::os::unix::net::UnixStream::connect(interface.socket()).is_ok() {
                    interface.use_userspace(u);
                } else {
                    interface.fallback = Some(u);
                }
            }
        }
        Ok(interface)
    }

    fn use_userspace(&mut self, u: Userspace) {
        self.backend = Backend::Userspace;
        self.userspace = Some(u);
        self.fallback = None;
    }

    /// Settles the backend before the agent starts: the kernel's interface is created if it
    /// does not exist (the kernel loads the module on demand). If the kernel refuses, `auto`
    /// falls back to userspace and returns the kernel's answer; `kernel` fails with it.
    pub fn resolve(&mut self) -> Result<Option<String>, Error> {
        if self.is_userspace() || super::route::index(&self.text).is_some() {
            return Ok(None);
        }
        match super::route::create_wireguard(&self.text) {
            Ok(()) => {
                self.fallback = None;
                Ok(None)
            }
            Err(source) => match self.fallback.take() {
                Some(u) => {
                    self.use_userspace(u);
                    Ok(Some(source.to_string()))
                }
                None => Err(Error::Kernel {
                    interface: self.text.clone(),
                    source,
                }),
            },
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.text
    }

    /// Whether it is the userspace backend.
    pub fn is_userspace(&self) -> bool {
        self.userspace.is_some()
    }

    /// `kernel` or `userspace`.
    pub fn backend_name(&self) -> &'static str {
        if self.is_userspace() {
            "userspace"
        } else {
            "kernel"
        }
    }

    /// The userspace implementation's program, with that backend.
    pub fn userspace_program(&self) -> Option<&Path> {
        self.userspace.as_ref().map(|u| u.program.as_path())
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            op,
            interface: self.text.clone(),
            source,
        }
    }

    fn socket(&self) -> PathBuf {
        Path::new(UAPI_DIR).join(format!("{}.sock", self.text))
    }

    /// Whether the interface exists and answers.
    pub fn exists(&self) -> bool {
        match self.backend {
            Backend::Userspace => std::os::unix::net::UnixStream::connect(self.socket()).is_ok(),
            _ => super::route::index(&self.text).is_some(),
        }
    }

    /// Makes sure the interface exists with `key` and `port`, and is up with `mtu`. Returns
    /// whether it was created (and so holds no peers). An external userspace daemon is waited
    /// for up to `patience`.
    pub fn ensure(
        &self,
        key: &KeyPair,
        port: u16,
        mtu: u32,
        patience: Duration,
    ) -> Result<bool, Error> {
        let created = !self.exists();
        if created && let Some(u) = &self.userspace {
            if u.external {
                self.wait_for_socket(u, patience)?;
            } else {
                self.start(u)?;
            }
        }
        // Setting the same key and port again keeps the peers and their sessions.
        DeviceUpdate::new()
            .set_private_key(Key(key.private().0))
            .set_listen_port(port)
            .apply(&self.name, self.backend)
            .map_err(self.io("setting the key and port"))?;
        let index = super::route::index(&self.text).ok_or_else(|| Error::Io {
            op: "finding the link",
            interface: self.text.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        super::route::link_up(index, mtu).map_err(self.io("setting the link up"))?;
        Ok(created)
    }

    /// Waits up to `patience` for an external daemon's socket.
    fn wait_for_socket(&self, u: &Userspace, patience: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + patience;
        while !self.exists() {
            if Instant::now() >= deadline {
                return Err(Error::Start {
                    program: u.program.display().to_string(),
                    interface: self.text.clone(),
                    reason: format!(
                        "no daemon answers on {} (--wg-userspace-daemon external: it runs beside the agent, e.g. the DaemonSet's wireguard container)",
                        self.socket().display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs the userspace implementation (it daemonizes) and waits for its socket.
    fn start(&self, u: &Userspace) -> Result<(), Error> {
        let fail = |reason: String| Error::Start {
            program: u.program.display().to_string(),
            interface: self.text.clone(),
            reason,
        };
        std::fs::create_dir_all(UAPI_DIR).map_err(|e| fail(format!("{UAPI_DIR}: {e}")))?;
        // A socket left by a daemon that died would make the new one fail to bind.
        let _ = std::fs::remove_file(self.socket());
        let status = Command::new(&u.program)
            .arg("--disable-drop-privileges")
            .args(["--threads", "2"])
            .arg("--log")
            .arg(&u.log)
            .arg(&self.text)
            .env("WG_SUDO", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| {
                fail(if e.kind() == std::io::ErrorKind::NotFound {
                    "not found: install it (cargo install boringtun-cli) or give --wg-userspace-program"
                        .to_owned()
                } else {
                    e.to_string()
                })
            })?;
        if !status.success() {
            return Err(fail(format!("{status}; see {}", u.log.display())));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.exists() {
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "no socket at {} after 10 s; see {}",
                    self.socket().display(),
                    u.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Reads the peers and their counters.
    pub fn read(&self) -> Result<BTreeMap<PublicKey, PeerStatus>, Error> {
        if self.is_userspace() {
            // Read over the UAPI socket ourselves: wireguard-control would start another
            // implementation for a missing socket, and prints boringtun's extra fields to
            // stdout.
            return read_uapi(&self.socket()).map_err(self.io("reading"));
        }
        let device = Device::get(&self.name, self.backend).map_err(self.io("reading"))?;
        Ok(device
            .peers
            .into_iter()
            .map(|p| {
                let status = PeerStatus {
                    applied: Applied {
                        endpoint: match p.config.endpoint {
                            Some(SocketAddr::V4(v4)) => Some(v4),
                            _ => None,
                        },
                        allowed: p
                            .config
                            .allowed_ips
                            .iter()
                            .filter_map(|a| match a.address {
                                IpAddr::V4(v4) => Some((v4, a.cidr)),
                                IpAddr::V6(_) => None,
                            })
                            .collect(),
                        keepalive: p.config.persistent_keepalive_interval.filter(|k| *k != 0),
                    },
                    endpoint: p.config.endpoint,
                    rx: p.stats.rx_bytes,
                    tx: p.stats.tx_bytes,
                };
                (p.config.public_key.0, status)
            })
            .collect())
    }

    /// Applies `plan` in one request.
    pub fn apply(&self, plan: &Plan) -> Result<(), Error> {
        if plan.is_empty() {
            return Ok(());
        }
        if self.is_userspace() && !self.exists() {
            return Err(self.io("configuring peers")(
                std::io::ErrorKind::NotConnected.into(),
            ));
        }
        let mut update = DeviceUpdate::new();
        for (key, peer) in &plan.upsert {
            let mut b = PeerConfigBuilder::new(&Key(*key))
                .replace_allowed_ips()
                .set_persistent_keepalive_interval(KEEPALIVE_SECS);
            if let Some(e) = peer.endpoint {
                b = b.set_endpoint(SocketAddr::V4(e));
            }
            for (ip, len) in &peer.allowed {
                b = b.add_allowed_ip(IpAddr::V4(*ip), *len);
            }
            update = update.add_peer(b);
        }
        for key in &plan.remove {
            update = update.remove_peer_by_key(&Key(*key));
        }
        update
            .apply(&self.name, self.backend)
            .map_err(self.io("configuring peers"))
    }

    /// Deletes the interface (which stops a userspace daemon). Returns whether it existed.
    pub fn delete(&self) -> Result<bool, Error> {
        if !self.exists() {
            let _ = std::fs::remove_file(self.socket());
            return Ok(false);
        }
        if let Some(index) = super::route::index(&self.text) {
            super::route::delete_link(index).map_err(self.io("deleting the link"))?;
        }
        if self.is_userspace() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_file(self.socket());
            let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{}.name", self.text)));
        }
        Ok(true)
    }
}

/// `get=1` over a UAPI socket (<https://www.wireguard.com/xplatform/>): the peers.
fn read_uapi(socket: &Path) -> std::io::Result<BTreeMap<PublicKey, PeerStatus>> {
    use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
    let invalid = |what: &str| std::io::Error::new(ErrorKind::InvalidData, what.to_owned());
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"get=1\n\n")?;
    let mut peers = BTreeMap::new();
    let mut current: Option<(PublicKey, PeerStatus)> = None;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| invalid(&line))?;
        match key {
            "public_key" => {
                peers.extend(current.take());
                let mut k = [0u8; 32];
                hex_decode(value, &mut k).ok_or_else(|| invalid("public_key"))?;
                current = Some((
                    k,
                    PeerStatus {
                        applied: Applied {
                            endpoint: None,
                            allowed: Default::default(),
                            keepalive: None,
                        },
                        endpoint: None,
                        rx: 0,
                        tx: 0,
                    },
                ));
            }
            "errno" if value != "0" => {
                return Err(std::io::Error::other(format!("UAPI errno {value}")));
            }
            _ => {
                let Some((_, p)) = current.as_mut() else {
                    continue; // interface fields
                };
                match key {
                    "endpoint" => {
                        p.endpoint = value.parse().ok();
                        p.applied.endpoint = match p.endpoint {
                            Some(SocketAddr::V4(v4)) => Some(v4),
                            _ => None,
                        };
                    }
                    "allowed_ip" => {
                        if let Some((ip, len)) = value.split_once('/')
                            && let (Ok(ip), Ok(len)) = (ip.parse(), len.parse())
                        {
                            p.applied.allowed.insert((ip, len));
                        }
                    }
                    "persistent_keepalive_interval" => {
                        p.applied.keepalive = value.parse().ok().filter(|k| *k != 0);
                    }
                    "rx_bytes" => p.rx = value.parse().unwrap_or(0),
                    "tx_bytes" => p.tx = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    peers.extend(current);
    Ok(peers)
}

fn hex_decode(text: &str, out: &mut [u8; 32]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(())
}

/// A stand-in endpoint for display when none is known.
pub fn endpoint_text(e: Option<SocketAddrV4>) -> String {
    e.map_or_else(|| "(none)".to_owned(), |e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What boringtun 0.7 answers to `get=1`, with the field wireguard-control prints.
    const GET: &str = "own_public_key=84d74fcb851f9580746fd3462b65e25e5e50d544b18d5d928430f95bf40e3015\n\
        listen_port=51871\n\
        public_key=0101010101010101010101010101010101010101010101010101010101010101\n\
        endpoint=192.168.2.1:51871\n\
        allowed_ip=10.2.1.0/24\n\
        allowed_ip=10.2.9.0/24\n\
        rx_bytes=1140\n\
        tx_bytes=864\n\
        persistent_keepalive_interval=25\n\
        public_key=0202020202020202020202020202020202020202020202020202020202020202\n\
        persistent_keepalive_interval=0\n\
        errno=0\n\n";

    fn serve(answer: &'static str) -> (tempfile::TempDir, PathBuf) {
        use std::io::{Read as _, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 7];
            s.read_exact(&mut req).unwrap();
            assert_eq!(&req, b"get=1\n\n");
            s.write_all(answer.as_bytes()).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn reads_peers_over_uapi() {
        let (_dir, path) = serve(GET);
        let peers = read_uapi(&path).unwrap();
        assert_eq!(peers.len(), 2);
        let p = &peers[&[1u8; 32]];
        assert_eq!(p.rx, 1140);
        assert_eq!(p.tx, 864);
        assert_eq!(p.applied.keepalive, Some(25));
        assert_eq!(
            p.applied.endpoint,
            Some("192.168.2.1:51871".parse().unwrap())
        );
        assert_eq!(
            p.applied
                .allowed
                .iter()
                .map(|(a, l)| format!("{a}/{l}"))
                .collect::<Vec<_>>(),
            ["10.2.1.0/24", "10.2.9.0/24"]
        );
        let q = &peers[&[2u8; 32]];
        assert_eq!(
            (q.rx, q.applied.keepalive, q.applied.endpoint),
            (0, None, None)
        );
    }

    #[test]
    fn an_error_answer_is_an_error() {
        let (_dir, path) = serve("errno=13\n\n");
        assert!(read_uapi(&path).is_err());
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(Interface::new("raftmesh0", Choice::Kernel).is_ok());
        for bad in ["", "sixteen-chars-xx", "a/b", "a b"] {
            assert!(Interface::new(bad, Choice::Kernel).is_err(), "{bad:?}");
        }
    }
}
