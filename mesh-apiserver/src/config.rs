//! The command line ([`Flags`], etcd's flag names plus raftmesh's own) and the configuration it
//! is validated into once, before anything starts ([`Config::validate`]). A configuration that
//! does not validate changes nothing; the binary exits with status 64.
//!
//! - [`flags`]: the command line as clap parses it.
//! - `member`: the store member's flags (URLs, TLS, limits, compaction), checked.
//! - `mesh`: this cluster's record, the publisher's source and the agent bootstrap, checked.

pub mod flags;
mod member;
mod mesh;

use std::path::PathBuf;
use std::time::Duration;

use kvstore::server::{ClusterState, MemberTls};

use crate::{mirror, publish};

pub use flags::{CompactionArg, Flags, LogFormat, StateArg};
use member::{limits, retention, socket_addr, store_limits, tls};
use mesh::{bootstrap, cluster, publisher};

/// A configuration that cannot be used; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value is refused.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// Flags that do not go together, or one that needs another.
    #[error("{0}")]
    Combination(&'static str),
    /// The TLS files do not load or do not fit together.
    #[error(transparent)]
    Tls(#[from] kvstore::tls::TlsError),
    /// Certificates of one cluster, a name of another.
    #[error("--cluster-name {flag} but the certificates are for cluster {certs}")]
    ClusterMismatch {
        /// `--cluster-name`.
        flag: String,
        /// The certificates' cluster.
        certs: String,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// `--cluster-name`, `--cluster-id` and the cluster record's fields, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterFlags {
    settings: publish::convert::Settings,
    record: publish::controller::RecordSettings,
}

/// A validated configuration: everything [`crate::run`] needs besides the sockets.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store member.
    pub member: kvstore::server::Config,
    /// `host:port` of every client, peer and metrics URL to listen on.
    pub listen_client: Vec<String>,
    /// See `listen_client`.
    pub listen_peer: Vec<String>,
    /// See `listen_client`.
    pub listen_metrics: Vec<String>,
    /// With `--manifests-dir` or `--kubernetes` (and `--cluster-name`, `--cluster-id`).
    pub publisher: Option<publish::Config>,
    /// Mirroring connected remotes.
    pub mirror: mirror::Config,
    /// CA, certificate and key the controllers use to reach this member (its client-port
    /// files); `None` in plaintext mode.
    pub local_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// With `--listen-bootstrap-urls`.
    pub bootstrap: Option<crate::bootstrap::Settings>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
}

impl Config {
    /// Checks every flag and loads the TLS files.
    pub fn validate(flags: &Flags) -> Result<Config, ConfigError> {
        let scheme = if flags.insecure_plaintext {
            "http"
        } else {
            "https"
        };
        if flags.heartbeat_interval == 0 || flags.election_timeout < 5 * flags.heartbeat_interval {
            return Err(invalid(
                "--election-timeout",
                &flags.election_timeout.to_string(),
                format!(
                    "must be at least 5 × --heartbeat-interval ({}ms)",
                    flags.heartbeat_interval
                ),
            ));
        }
        if flags.snapshot_count == 0 {
            return Err(invalid("--snapshot-count", "0", "must be > 0"));
        }
        let addrs = |flag, urls: &[String], scheme| -> Result<Vec<String>, ConfigError> {
            urls.iter()
                .map(|u| socket_addr(u, scheme).map_err(|r| invalid(flag, u, r)))
                .collect()
        };
        addrs(
            "--advertise-client-urls",
            &flags.advertise_client_urls,
            scheme,
        )?;
        addrs(
            "--initial-advertise-peer-urls",
            &flags.initial_advertise_peer_urls,
            scheme,
        )?;
        let listen_client = addrs("--listen-client-urls", &flags.listen_client_urls, scheme)?;
        let listen_peer = addrs("--listen-peer-urls", &flags.listen_peer_urls, scheme)?;
        let listen_metrics = addrs("--listen-metrics-urls", &flags.listen_metrics_urls, "http")?;
        for entry in flags.initial_cluster.split(',') {
            let Some((_, url)) = entry.split_once('=') else {
                return Err(invalid("--initial-cluster", entry, "expected name=url"));
            };
            socket_addr(url, scheme).map_err(|r| invalid("--initial-cluster", entry, r))?;
        }
        let tls = tls(flags)?;
        let cluster = cluster(flags, tls.as_ref())?;
        let publisher = publisher(flags)?;
        let disconnect_grace =
            member::duration_or_number(&flags.disconnect_grace, Duration::from_secs(1))
                .map_err(|r| invalid("--disconnect-grace", &flags.disconnect_grace, r))?;
        if flags.remote_max_keys == 0
            || flags.remote_max_mib == 0
            || flags.remote_write_mib_per_minute == 0
        {
            return Err(ConfigError::Combination(
                "--remote-max-keys, --remote-max-mib and --remote-write-mib-per-minute must be > 0",
            ));
        }
        let member = kvstore::server::Config {
            name: flags.name.clone(),
            data_dir: flags.data_dir.clone(),
            advertise_client_urls: flags.advertise_client_urls.clone(),
            initial_advertise_peer_urls: flags.initial_advertise_peer_urls.clone(),
            initial_cluster: flags.initial_cluster.clone(),
            initial_cluster_state: match flags.initial_cluster_state {
                StateArg::New => ClusterState::New,
                StateArg::Existing => ClusterState::Existing,
            },
            initial_cluster_token: flags.initial_cluster_token.clone(),
            snapshot_count: flags.snapshot_count,
            heartbeat_interval: Duration::from_millis(flags.heartbeat_interval),
            election_timeout: Duration::from_millis(flags.election_timeout),
            pre_vote: flags.pre_vote,
            auto_compaction: retention(
                flags.auto_compaction_mode,
                &flags.auto_compaction_retention,
            )?,
            request_timeout: Duration::from_secs(5),
            progress_notify_interval: Duration::from_secs(
                flags.watch_progress_notify_interval.max(1),
            ),
            tls,
            limits: limits(flags)?,
            store_limits: store_limits(flags)?,
            restore_from: flags.restore_from.clone(),
        };
        let local_tls = match (&flags.trusted_ca_file, &flags.cert_file, &flags.key_file) {
            (Some(ca), Some(cert), Some(key)) if !flags.insecure_plaintext => {
                Some((ca.clone(), cert.clone(), key.clone()))
            }
            _ => None,
        };
        let bootstrap = bootstrap(flags, local_tls.as_ref(), &member)?;
        // `--cluster-name`, else the certificates' cluster.
        let cluster_name = cluster
            .as_ref()
            .map(|c| c.settings.cluster.clone())
            .or_else(|| member.tls.as_ref().map(MemberTls::cluster));
        Ok(Config {
            member,
            listen_client,
            listen_peer,
            listen_metrics,
            mirror: mirror::Config {
                settings: mirror::Settings {
                    disconnect_grace,
                    max_keys: flags.remote_max_keys,
                    max_bytes: flags.remote_max_mib.saturating_mul(1 << 20),
                    write_bytes_per_minute: flags
                        .remote_write_mib_per_minute
                        .saturating_mul(1 << 20),
                },
                cluster: cluster_name,
                cluster_id: cluster.as_ref().map(|c| c.settings.cluster_id),
            },
            publisher: match (publisher, cluster) {
                (Some((source, identity_gc_grace)), Some(c)) => Some(publish::Config {
                    identity_gc_grace,
                    settings: c.settings,
                    record: c.record,
                    source,
                }),
                _ => None,
            },
            bootstrap,
            kubeconfig: flags.kubeconfig.clone(),
            local_tls,
        })
    }

    /// This cluster's name: `--cluster-name`, else the certificates' cluster.
    pub fn cluster_name(&self) -> Option<String> {
        self.mirror.cluster.clone()
    }
}

#[cfg(test)]
mod tests;
