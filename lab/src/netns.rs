//! Network namespaces and the links between them, built with iproute2.

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
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace. Only the network namespace is
    /// entered (`nsenter --net`), not a new mount namespace as `ip netns exec` makes, so
    /// bpffs and cgroup mounts stay visible.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
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
    host.ip(&[
        "link",
        "add",
        host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    if let Some(br) = bridge {
        host.ip(&["link", "set", host_if, "master", br])?;
    }
    host.ip(&["link", "set", host_if, "up"])?;
    pod.address("eth0", addr)?;
    pod.ip(&["route", "add", "default", "via", gateway])?;
    Ok(())
}
