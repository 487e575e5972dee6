//! Network namespaces and the links between them, built with iproute2: the one implementation,
//! both owned ([`Netns`], deleted on drop: tests and the harness) and by name ([`create`],
//! [`command_in`], [`veth`]: a `meshctl lab` instance, whose namespaces outlive the command).

use std::path::PathBuf;
use std::process::Command;

use crate::run;

/// A named network namespace (`ip netns add`), deleted on drop with every interface in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` with its loopback up.
    pub fn new(name: &str) -> anyhow::Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        ip_in(&self.name, args)
    }

    /// A command that runs `program` inside the namespace. Only the network namespace is
    /// entered (`nsenter --net`), not a new mount namespace as `ip netns exec` makes, so
    /// bpffs and cgroup mounts stay visible.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// Adds `addr` (CIDR) to `dev` and brings it up.
    pub fn address(&self, dev: &str, addr: &str) -> anyhow::Result<()> {
        self.ip(&["addr", "add", addr, "dev", dev])?;
        self.ip(&["link", "set", dev, "up"])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Creates a bridge `name` in `ns` with `addr` (CIDR), up.
pub fn bridge(ns: &Netns, name: &str, addr: &str) -> anyhow::Result<()> {
    ns.ip(&["link", "add", name, "type", "bridge"])?;
    ns.address(name, addr)
}

/// Connects pod namespace `pod` to `host` with a veth pair: `host_if` in `host` (attached to
/// `bridge` when given, up) and `eth0` in `pod` with `addr` (CIDR) and a default route via
/// `gateway`.
pub fn pod_link(
    host: &Netns,
    host_if: &str,
    bridge: Option<&str>,
    pod: &Netns,
    addr: &str,
    gateway: &str,
) -> anyhow::Result<()> {
    veth(host.name(), host_if, bridge, pod.name(), addr, gateway)
}

// By name: namespaces that outlive this process (a `meshctl lab` instance's) have no guard.

/// `/run/netns/<name>`.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Creates namespace `name` with its loopback up; nothing deletes it (see [`Netns`] for that).
pub fn create(name: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// `ip -n <name> args…`.
pub fn ip_in(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-n", name];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// A command that runs `program` inside namespace `name`. Only the network namespace is
/// entered (`nsenter --net`), not a new mount namespace as `ip netns exec` makes, so bpffs and
/// cgroup mounts stay visible.
pub fn command_in(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", path_of(name).display()))
        .arg("--")
        .arg(program);
    c
}

/// A veth pair from namespace `host` (`host_if`, attached to `bridge` when given, up) to `eth0`
/// in namespace `inner`, with `addr` (CIDR) and a default route via `gateway` there.
pub fn veth(
    host: &str,
    host_if: &str,
    bridge: Option<&str>,
    inner: &str,
    addr: &str,
    gateway: &str,
) -> anyhow::Result<()> {
    ip_in(
        host,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", inner,
        ],
    )?;
    if let Some(br) = bridge {
        ip_in(host, &["link", "set", host_if, "master", br])?;
    }
    ip_in(host, &["link", "set", host_if, "up"])?;
    ip_in(inner, &["addr", "add", addr, "dev", "eth0"])?;
    ip_in(inner, &["link", "set", "eth0", "up"])?;
    ip_in(inner, &["route", "add", "default", "via", gateway])?;
    Ok(())
}
