//! Flags, and the configuration they validate into (once, at start: exit 64 on bad input).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::datapath::{self, AttachMode};
use crate::desired::Limits;
use crate::wg::WgConfig;
use crate::wg::device::{self, Interface, Userspace};

/// The agent's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// This node's name (the Kubernetes Node name; its agent certificate names it too).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// This node's cluster.
    #[arg(long, env = "RAFTMESH_CLUSTER")]
    pub cluster: Option<String>,
    /// The cluster's API server endpoints (`https://host:port`, comma-separated).
    #[arg(long, value_delimiter = ',', env = "RAFTMESH_ENDPOINTS")]
    pub endpoints: Vec<String>,
    /// CA certificate of the cluster (PEM).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// This node's `agent` certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Get (and renew) the agent certificate at --cert/--key from the API server's bootstrap
    /// endpoint (`https://host:port`), proving this node with the ServiceAccount token in
    /// --bootstrap-token-file; --cacert must hold the cluster's CA.
    #[arg(long, env = "RAFTMESH_BOOTSTRAP_URL")]
    pub bootstrap_url: Option<String>,
    /// The projected ServiceAccount token (audience: the API server's --bootstrap-audience).
    #[arg(long, default_value = "/var/run/secrets/raftmesh/token")]
    pub bootstrap_token_file: PathBuf,
    /// Talk plaintext http:// to an API server started with --insecure-plaintext (tests).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// The cgroup v2 directory whose processes get socket load balancing: `/sys/fs/cgroup` on
    /// Talos and most systemd hosts; `/sys/fs/cgroup/unified` on hybrid hosts.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Where maps and links are pinned: a directory of a bpffs, not its mount point, one per
    /// node [default: /sys/fs/bpf/raftmesh/<node>].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// The agent's own files (the record of what it attached, and later its WireGuard key).
    #[arg(long, default_value = "/var/lib/raftmesh/agent")]
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics on http://ADDR/metrics (and /healthz).
    #[arg(long, default_value = "0.0.0.0:9964")]
    pub listen_metrics: SocketAddr,
    /// Answer the Multi-Cluster Services API's DNS names (`<svc>.<ns>.svc.clusterset.local`)
    /// on ADDR, UDP and TCP, from the agent's memory: a node-local address the node's pods
    /// reach (the chart uses a link-local one). Off when unset. Point CoreDNS at it for the
    /// zone (a stub domain), or pods' resolv.conf.
    #[arg(long, value_name = "ADDR")]
    pub dns_listen: Option<SocketAddr>,
    /// The zone answered on --dns-listen.
    #[arg(long, default_value = crate::dns::DEFAULT_ZONE, value_name = "ZONE")]
    pub dns_zone: String,
    /// A remote whose mirror has been disconnected this long has its backends used only when
    /// no other backend is ready (e.g. `30s`, `500ms`, `2m`).
    #[arg(long, default_value = "30s", value_parser = mesh_api::duration::parse)]
    pub remote_stale_after: Duration,
    /// A remote with more nodes than this has none of them in the ipcache or as WireGuard
    /// peers (reported in the log and raftmesh_agent_remote_over_limit) until it is back
    /// within it. The default is Kubernetes' limit for one cluster.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub remote_node_limit: u32,
    /// A remote with more pod addresses than this has none of them in the ipcache, as
    /// --remote-node-limit. The default is Kubernetes' limit for one cluster.
    #[arg(long, default_value_t = 150_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub remote_pod_limit: u32,
    /// Extra name prefixes of pod interfaces that get the policy programs. Pod interfaces are
    /// found by what they are — the host side of every veth whose peer is in another network
    /// namespace and that holds no address (Cilium's `lxc…`, the VPC CNI's `eni…`, Flannel's
    /// and Calico's `veth…`/`cali…`) — so this is only for pod links of other kinds.
    #[arg(long, value_delimiter = ',')]
    pub pod_interface_prefix: Vec<String>,
    /// Which interfaces get the policy programs: `discover` (every pod veth, found by what it
    /// is, and the --pod-interface-prefix names) or `prefix` (only interfaces named with a
    /// --pod-interface-prefix; for an agent that must leave the other veths of its namespace
    /// alone).
    #[arg(long, value_enum, default_value_t = PodInterfaces::Discover)]
    pub pod_interfaces: PodInterfaces,
    /// Deny traffic to a pod whose identity is not known yet (its address has not reached the
    /// ipcache: a new pod, a publisher that is down, a full map) except from this node
    /// (kubelet probes) and replies to what the pod started; `false` lets it accept
    /// everything until then, as an unselected pod does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enforce_unknown_pods: bool,
    /// How the policy programs attach to pod interfaces: `tcx` (Linux 6.6+: BPF links, pinned),
    /// `tc` (a clsact qdisc and direct-action filters at a fixed priority and handle, for older
    /// kernels such as EKS AL2023's 6.1), or `auto` (tcx where the kernel has it, else tc).
    #[arg(long, value_enum, default_value_t = PolicyAttach::Auto)]
    pub policy_attach: PolicyAttach,
    /// Keep pod traffic to other clusters' pods from being masqueraded by the CNI (Flannel's
    /// `--ip-masq`, the VPC CNI's AWS-SNAT-CHAIN, ip-masq-agent, Cilium's iptables
    /// masquerade): `nftables` puts a no-op SNAT for that traffic in the agent's own table
    /// (`ip raftmesh`) at a priority ahead of every masquerading rule, iptables or nftables;
    /// `off` leaves masquerading alone (the remote then sees the node, not the pod).
    #[arg(long, value_enum, default_value_t = MasqExemption::Nftables)]
    pub masquerade_exemption: MasqExemption,
    /// The nft program (nftables' command-line tool) for --masquerade-exemption nftables.
    #[arg(long, default_value = "nft")]
    pub nft_program: PathBuf,
    /// The priority of the agent's `ip rule to <remote pod CIDR> lookup main` rules, which
    /// send traffic to other clusters through the tunnel also from pods whose own rules pick
    /// another table (the VPC CNI's `from <pod> lookup <ENI table>` at 1536). Below every such
    /// rule: Cilium's ENI mode uses 110 and up.
    #[arg(long, default_value_t = 100)]
    pub rule_priority: u32,
    /// WireGuard: `kernel` (the module; the kernel loads it on demand when the interface is
    /// created, as on EKS AL2023), `userspace` (boringtun over its UAPI socket), `auto` (the
    /// kernel's if creating the interface works, else userspace) or `none` (no tunnels: the
    /// datapath only).
    #[arg(long, value_enum, default_value_t = WgBackend::Auto)]
    pub wg_backend: WgBackend,
    /// The WireGuard interface (at most 15 bytes; unique per host, as the userspace sockets
    /// share one directory).
    #[arg(long, default_value = "raftmesh0")]
    pub wg_interface: String,
    /// The WireGuard listen port (UDP; open it between the nodes of connected clusters).
    #[arg(long, default_value_t = 51871)]
    pub wg_port: u16,
    /// The WireGuard interface's MTU: the node network's MTU minus 80 (WireGuard's overhead
    /// over IPv6; 60 over IPv4), so tunneled packets are never fragmented.
    #[arg(long, default_value_t = 1420)]
    pub wg_mtu: u32,
    /// Also tunnel to this cluster's other nodes (off: pod traffic inside a cluster is the
    /// CNI's).
    #[arg(long)]
    pub wg_intra_cluster: bool,
    /// The userspace WireGuard implementation to run.
    #[arg(long, default_value = "boringtun-cli")]
    pub wg_userspace_program: PathBuf,
    /// Who runs the userspace implementation: `own` (the agent starts it, detached, so it
    /// outlives the agent process) or `external` (it runs beside the agent — the DaemonSet's
    /// `wireguard` container — so it outlives the agent's container too; the agent only talks
    /// to its socket).
    #[arg(long, value_enum, default_value_t = WgDaemon::Own)]
    pub wg_userspace_daemon: WgDaemon,
    /// The UDP port where this agent answers other agents' reachability probes and sends its
    /// own from (published in its node key record, at the WireGuard endpoint's address; open
    /// it between the nodes of connected clusters as --wg-port). 0: it neither probes nor
    /// answers, and remote nodes are judged by their cluster's mirror alone. Needs WireGuard.
    #[arg(long, default_value_t = 51872)]
    pub reachability_port: u16,
    /// How often each remote node is probed.
    #[arg(long, default_value = "200ms", value_parser = mesh_api::duration::parse)]
    pub reachability_interval: Duration,
    /// A remote node that has answered no probe for this long is unreachable: its backends
    /// become a last resort until it answers 3 probes in a row. At least twice
    /// --reachability-interval.
    #[arg(long, default_value = "800ms", value_parser = mesh_api::duration::parse)]
    pub reachability_timeout: Duration,
    /// Probes a second at most, over every remote node: beyond it, each node is probed less
    /// often and the timeout grows in proportion.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub reachability_max_rate: u32,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// `--policy-attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyAttach {
    /// tcx where the kernel has it (6.6+), else tc.
    Auto,
    /// tcx links (Linux 6.6+).
    Tcx,
    /// A clsact qdisc and direct-action cls_bpf filters.
    Tc,
}

/// `--pod-interfaces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodInterfaces {
    /// Veths to other namespaces without an address, and the named prefixes.
    Discover,
    /// The named prefixes only.
    Prefix,
}

/// `--masquerade-exemption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MasqExemption {
    /// The agent's own nftables table.
    Nftables,
    /// None.
    Off,
}

/// `--wg-userspace-daemon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WgDaemon {
    /// The agent starts it.
    Own,
    /// Something else runs it.
    External,
}

/// `--wg-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WgBackend {
    /// The kernel's if its interface can be created, else userspace.
    Auto,
    /// The kernel module.
    Kernel,
    /// boringtun (or another UAPI implementation).
    Userspace,
    /// No WireGuard.
    None,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name.
    pub node: String,
    /// Cluster name.
    pub cluster: String,
    /// API server endpoints.
    pub endpoints: Vec<String>,
    /// (CA, certificate, key), or `None` in plaintext mode.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// With `--bootstrap-url`: certificate and key are fetched and renewed.
    pub bootstrap: Option<crate::bootstrap::Bootstrap>,
    /// The cgroup to attach the socket programs to.
    pub cgroup_root: PathBuf,
    /// The pin directory.
    pub bpffs: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The metrics address.
    pub listen_metrics: SocketAddr,
    /// `--dns-listen` and `--dns-zone`, when DNS is served.
    pub dns: Option<(SocketAddr, String)>,
    /// `--remote-stale-after`.
    pub remote_stale_after: Duration,
    /// `--remote-node-limit`, `--remote-pod-limit`.
    pub remote_limits: Limits,
    /// `--pod-interface-prefix`.
    pub pod_interface_prefixes: Vec<String>,
    /// `--pod-interfaces discover`: pod veths are found by what they are.
    pub discover_pod_interfaces: bool,
    /// `--enforce-unknown-pods`.
    pub enforce_unknown_pods: bool,
    /// `--policy-attach`, resolved against this kernel.
    pub attach: AttachMode,
    /// WireGuard, unless `--wg-backend none`.
    pub wg: Option<WgConfig>,
}

/// The default pin directory of `node`.
pub fn default_bpffs(node: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/raftmesh").join(node)
}

/// A flag that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    /// The flag.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// Whether `s` is a valid Kubernetes object name segment (as the key layout requires).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl Config {
    /// Checks `flags`.
    pub fn validate(flags: &Flags) -> Result<Config, ConfigError> {
        let node = flags.node.clone().ok_or_else(|| bad("node", "required"))?;
        if !valid_name(&node) {
            return Err(bad(
                "node",
                format!("{node:?} is not a Kubernetes node name"),
            ));
        }
        let cluster = flags
            .cluster
            .clone()
            .ok_or_else(|| bad("cluster", "required"))?;
        if !valid_name(&cluster) || cluster.contains('.') {
            return Err(bad("cluster", format!("{cluster:?} is not a cluster name")));
        }
        if flags.endpoints.is_empty() {
            return Err(bad(
                "endpoints",
                "at least one API server endpoint is required",
            ));
        }
        let scheme = if flags.insecure_plaintext {
            "http://"
        } else {
            "https://"
        };
        for e in &flags.endpoints {
            if !e.starts_with(scheme) {
                return Err(bad(
                    "endpoints",
                    format!(
                        "{e:?}: expected {scheme}host:port (plaintext http:// only with --insecure-plaintext)"
                    ),
                ));
            }
        }
        let tls = match (&flags.cacert, &flags.cert, &flags.key) {
            (None, None, None) if flags.insecure_plaintext => None,
            (Some(_), _, _) | (_, Some(_), _) | (_, _, Some(_)) if flags.insecure_plaintext => {
                return Err(bad(
                    "insecure-plaintext",
                    "give either TLS files or --insecure-plaintext, not both",
                ));
            }
            (Some(ca), Some(cert), Some(key)) => {
                // With the bootstrap, the certificate and key are made here.
                let must_exist: &[(&'static str, &PathBuf)] = if flags.bootstrap_url.is_some() {
                    &[("cacert", ca)]
                } else {
                    &[("cacert", ca), ("cert", cert), ("key", key)]
                };
                for (flag, path) in must_exist.iter().copied() {
                    if !path.is_file() {
                        return Err(bad(
                            flag,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
                Some((ca.clone(), cert.clone(), key.clone()))
            }
            _ => {
                return Err(bad(
                    "cert",
                    "--cacert, --cert and --key are required (or --insecure-plaintext for tests)",
                ));
            }
        };
        crate::dns::Zone::new(&flags.dns_zone).map_err(|e| bad("dns-zone", e))?;
        let dns = flags.dns_listen.map(|addr| (addr, flags.dns_zone.clone()));
        let bootstrap = match &flags.bootstrap_url {
            None => None,
            Some(_) if tls.is_none() => {
                return Err(bad(
                    "bootstrap-url",
                    "needs --cacert, --cert and --key (the CA to trust, where to write the rest)",
                ));
            }
            Some(url) => {
                mesh_api::endpoint::host_port(url)
                    .map_err(|e| bad("bootstrap-url", e.to_string()))?;
                Some(crate::bootstrap::Bootstrap {
                    url: url.clone(),
                    token_file: flags.bootstrap_token_file.clone(),
                })
            }
        };
        if !flags.cgroup_root.join("cgroup.procs").is_file() {
            return Err(bad(
                "cgroup-root",
                format!(
                    "{} is not a cgroup v2 directory (no cgroup.procs)",
                    flags.cgroup_root.display()
                ),
            ));
        }
        if flags.remote_stale_after.is_zero() {
            return Err(bad("remote-stale-after", "must be more than 0"));
        }
        if flags.pod_interfaces == PodInterfaces::Prefix && flags.pod_interface_prefix.is_empty() {
            return Err(bad(
                "pod-interfaces",
                "prefix needs at least one --pod-interface-prefix (or the agent enforces nothing)",
            ));
        }
        if flags.pod_interface_prefix.iter().any(String::is_empty) {
            return Err(bad(
                "pod-interface-prefix",
                "an empty prefix would match every interface",
            ));
        }
        if !(1..=32_765).contains(&flags.rule_priority) {
            return Err(bad(
                "rule-priority",
                "must be 1 to 32765 (0 is the local table's, 32766 and 32767 main's and default's)",
            ));
        }
        if let Some(dir) = &flags.bpffs
            && datapath::is_mount_point(dir)
        {
            return Err(bad(
                "bpffs",
                format!(
                    "{} is a mount point: give a directory below it for this node's pins, e.g. {}",
                    dir.display(),
                    dir.join("raftmesh").join(&node).display()
                ),
            ));
        }
        let attach = attach_mode(flags.policy_attach)?;
        let wg = wg_config(flags)?;
        Ok(Config {
            attach,
            bootstrap,
            wg,
            bpffs: flags.bpffs.clone().unwrap_or_else(|| default_bpffs(&node)),
            node,
            cluster,
            endpoints: flags.endpoints.clone(),
            tls,
            cgroup_root: flags.cgroup_root.clone(),
            state_dir: flags.state_dir.clone(),
            listen_metrics: flags.listen_metrics,
            dns,
            remote_stale_after: flags.remote_stale_after,
            remote_limits: Limits {
                nodes: flags.remote_node_limit as usize,
                pods: flags.remote_pod_limit as usize,
            },
            pod_interface_prefixes: flags.pod_interface_prefix.clone(),
            discover_pod_interfaces: flags.pod_interfaces == PodInterfaces::Discover,
            enforce_unknown_pods: flags.enforce_unknown_pods,
        })
    }
}

/// `--policy-attach` on this kernel: `auto` is tcx where the kernel has it, else tc; `tcx` is
/// refused on a kernel without it.
fn attach_mode(flag: PolicyAttach) -> Result<AttachMode, ConfigError> {
    let has_tcx = || datapath::kernel_has_tcx().map_err(|e| bad("policy-attach", e));
    match flag {
        PolicyAttach::Tc => Ok(AttachMode::Tc),
        PolicyAttach::Auto => Ok(if has_tcx()?.0 {
            AttachMode::Tcx
        } else {
            AttachMode::Tc
        }),
        PolicyAttach::Tcx => match has_tcx()? {
            (true, _) => Ok(AttachMode::Tcx),
            (false, kernel) => Err(bad(
                "policy-attach",
                format!("tcx needs Linux 6.6 or later; this kernel is {kernel} (use tc or auto)"),
            )),
        },
    }
}

/// The WireGuard interface the flags name, or `None` with `--wg-backend none`. `auto` is
/// decided when the agent starts ([`crate::wg::device::Interface::resolve`]); for
/// `node-agent wg` and `--uninstall` it is whatever exists: a userspace socket, else a link.
pub fn wg_interface(flags: &Flags) -> Result<Option<Interface>, ConfigError> {
    let userspace = Userspace {
        program: flags.wg_userspace_program.clone(),
        log: flags.state_dir.join("boringtun.log"),
        external: flags.wg_userspace_daemon == WgDaemon::External,
    };
    let choice = match flags.wg_backend {
        WgBackend::None => return Ok(None),
        WgBackend::Kernel => device::Choice::Kernel,
        WgBackend::Userspace => device::Choice::Userspace(userspace),
        WgBackend::Auto => device::Choice::Auto(userspace),
    };
    Interface::new(&flags.wg_interface, choice)
        .map(Some)
        .map_err(|e| bad("wg-interface", e.to_string()))
}

fn wg_config(flags: &Flags) -> Result<Option<WgConfig>, ConfigError> {
    let Some(interface) = wg_interface(flags)? else {
        return Ok(None);
    };
    if flags.wg_port == 0 {
        return Err(bad("wg-port", "must be a port (1-65535)"));
    }
    if !(1280..=65_535).contains(&flags.wg_mtu) {
        return Err(bad("wg-mtu", "must be 1280 to 65535"));
    }
    if flags.reachability_port != 0 && flags.reachability_port == flags.wg_port {
        return Err(bad(
            "reachability-port",
            "must differ from --wg-port (both are UDP on the same addresses)",
        ));
    }
    if flags.reachability_interval < Duration::from_millis(10) {
        return Err(bad("reachability-interval", "must be at least 10ms"));
    }
    if flags.reachability_timeout < flags.reachability_interval * 2 {
        return Err(bad(
            "reachability-timeout",
            "must be at least twice --reachability-interval (one lost probe is no outage)",
        ));
    }
    let probe = (flags.reachability_port != 0).then_some(crate::reach::Settings {
        port: flags.reachability_port,
        interval: flags.reachability_interval,
        timeout: flags.reachability_timeout,
        max_rate: flags.reachability_max_rate,
    });
    Ok(Some(WgConfig {
        interface,
        probe,
        port: flags.wg_port,
        mtu: flags.wg_mtu,
        intra_cluster: flags.wg_intra_cluster,
        masq: match flags.masquerade_exemption {
            MasqExemption::Nftables => Some(flags.nft_program.clone()),
            MasqExemption::Off => None,
        },
        rule_priority: flags.rule_priority,
        kernel_refused: None,
    }))
}
