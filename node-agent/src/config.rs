//! Flags, and the configuration they validate into (once, at start: exit 64 on bad input).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Talk plaintext http:// to an API server started with --insecure-plaintext (tests).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// The cgroup v2 directory whose processes get socket load balancing: `/sys/fs/cgroup` on
    /// Talos and most systemd hosts; `/sys/fs/cgroup/unified` on hybrid hosts.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Where maps and links are pinned (on a bpffs) [default: /sys/fs/bpf/raftmesh/<node>].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// The agent's own files (the record of what it attached, and later its WireGuard key).
    #[arg(long, default_value = "/var/lib/raftmesh/agent")]
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics on http://ADDR/metrics (and /healthz).
    #[arg(long, default_value = "0.0.0.0:9964")]
    pub listen_metrics: SocketAddr,
    /// A remote whose mirror has been disconnected this long has its backends used only when
    /// no other backend is ready (e.g. `30s`, `500ms`, `2m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub remote_stale_after: Duration,
    /// Name prefixes of pod interfaces (host side of the pod veths) that get the policy
    /// programs: `lxc` for Cilium, `eni` for the AWS VPC CNI.
    #[arg(long, value_delimiter = ',', default_value = "lxc,eni")]
    pub pod_interface_prefix: Vec<String>,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, default_value = "info")]
    pub log_level: String,
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
    /// The cgroup to attach the socket programs to.
    pub cgroup_root: PathBuf,
    /// The pin directory.
    pub bpffs: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The metrics address.
    pub listen_metrics: SocketAddr,
    /// `--remote-stale-after`.
    pub remote_stale_after: Duration,
    /// `--pod-interface-prefix`.
    pub pod_interface_prefixes: Vec<String>,
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
                for (flag, path) in [("cacert", ca), ("cert", cert), ("key", key)] {
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
        if flags.pod_interface_prefix.iter().any(String::is_empty) {
            return Err(bad(
                "pod-interface-prefix",
                "an empty prefix would match every interface",
            ));
        }
        Ok(Config {
            bpffs: flags.bpffs.clone().unwrap_or_else(|| default_bpffs(&node)),
            node,
            cluster,
            endpoints: flags.endpoints.clone(),
            tls,
            cgroup_root: flags.cgroup_root.clone(),
            state_dir: flags.state_dir.clone(),
            listen_metrics: flags.listen_metrics,
            remote_stale_after: flags.remote_stale_after,
            pod_interface_prefixes: flags.pod_interface_prefix.clone(),
        })
    }
}

/// `30s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{s:?}: give a unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| format!("{s:?}: not a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3x").is_err());
    }
}
