//! The store member's flags: listen URLs, TLS files, connection and store limits, compaction.

use std::path::PathBuf;
use std::time::Duration;

use certs::tls::TlsFiles;
use kvstore::server::{AutoCompaction, ConnectionLimits, MemberTls, StoreLimits};

use super::{CompactionArg, ConfigError, Flags, invalid};

/// `--max-concurrent-streams` and the keepalive flags.
pub(super) fn limits(flags: &Flags) -> Result<ConnectionLimits, ConfigError> {
    if flags.max_concurrent_streams == 0 {
        return Err(invalid("--max-concurrent-streams", "0", "must be > 0"));
    }
    let duration = |flag, value: &str| {
        duration_or_number(value, Duration::from_secs(1))
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be longer than 0".to_owned())
                } else {
                    Ok(d)
                }
            })
            .map_err(|r| invalid(flag, value, r))
    };
    Ok(ConnectionLimits {
        max_concurrent_streams: flags.max_concurrent_streams,
        keepalive_interval: duration("--grpc-keepalive-interval", &flags.grpc_keepalive_interval)?,
        keepalive_timeout: duration("--grpc-keepalive-timeout", &flags.grpc_keepalive_timeout)?,
    })
}

/// `--quota-backend-bytes`, `--max-leases`, `--max-watchers-per-stream` and the
/// per-identity bounds.
pub(super) fn store_limits(flags: &Flags) -> Result<StoreLimits, ConfigError> {
    let default = StoreLimits::default();
    for (flag, value) in [
        ("--max-leases", flags.max_leases),
        ("--max-watchers-per-stream", flags.max_watchers_per_stream),
        ("--max-leases-per-identity", flags.max_leases_per_identity),
        (
            "--max-watch-streams-per-identity",
            flags.max_watch_streams_per_identity,
        ),
        (
            "--max-watchers-per-identity",
            flags.max_watchers_per_identity,
        ),
    ] {
        if value == 0 {
            return Err(invalid(flag, "0", "must be > 0"));
        }
    }
    Ok(StoreLimits {
        quota_bytes: match flags.quota_backend_bytes {
            0 => default.quota_bytes,
            n => n,
        },
        max_leases: flags.max_leases,
        max_watchers_per_stream: flags.max_watchers_per_stream,
        per_identity: kvstore::per_identity::IdentityLimits {
            leases: flags.max_leases_per_identity,
            watch_streams: flags.max_watch_streams_per_identity,
            watchers: flags.max_watchers_per_identity,
            value_bytes: flags.max_value_bytes_per_identity,
            writes_per_second: u32::try_from(flags.max_writes_per_second_per_identity)
                .unwrap_or(u32::MAX),
        },
    })
}

/// `host:port` of a `<scheme>://host:port` URL, or why not.
pub(super) fn socket_addr(url: &str, scheme: &str) -> Result<String, String> {
    let Some(rest) = url.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) else {
        return Err(if scheme == "https" {
            "expected https://host:port (plaintext http:// only with --insecure-plaintext)"
                .to_owned()
        } else {
            format!("expected {scheme}://host:port")
        });
    };
    let hostport = rest.trim_end_matches('/');
    let port_ok = hostport
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!("expected {scheme}://host:port"));
    }
    Ok(hostport.to_owned())
}

/// Loads the TLS files, or checks that none were given with --insecure-plaintext.
pub(super) fn tls(flags: &Flags) -> Result<Option<MemberTls>, ConfigError> {
    let files = [
        ("--cert-file", &flags.cert_file),
        ("--key-file", &flags.key_file),
        ("--trusted-ca-file", &flags.trusted_ca_file),
        ("--peer-cert-file", &flags.peer_cert_file),
        ("--peer-key-file", &flags.peer_key_file),
        ("--peer-trusted-ca-file", &flags.peer_trusted_ca_file),
    ];
    let switches = [
        ("--client-cert-auth", flags.client_cert_auth),
        ("--peer-client-cert-auth", flags.peer_client_cert_auth),
    ];
    if flags.insecure_plaintext {
        let given: Vec<&str> = files
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(flag, _)| *flag)
            .chain(switches.iter().filter(|(_, on)| *on).map(|(flag, _)| *flag))
            .collect();
        if !given.is_empty() {
            return Err(invalid(
                "--insecure-plaintext",
                "true",
                format!("serves no TLS, but {} given", given.join(", ")),
            ));
        }
        return Ok(None);
    }
    let missing: Vec<&str> = files
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(flag, _)| *flag)
        .chain(
            switches
                .iter()
                .filter(|(_, on)| !*on)
                .map(|(flag, _)| *flag),
        )
        .collect();
    if !missing.is_empty() {
        return Err(invalid(
            "TLS",
            "",
            format!(
                "needs {} (create certificates with `meshctl pki init`; plaintext only with --insecure-plaintext)",
                missing.join(", ")
            ),
        ));
    }
    let path = |f: &Option<PathBuf>| f.clone().expect("checked above");
    let client = TlsFiles {
        cert: path(&flags.cert_file),
        key: path(&flags.key_file),
        ca: path(&flags.trusted_ca_file),
    };
    let peer = TlsFiles {
        cert: path(&flags.peer_cert_file),
        key: path(&flags.peer_key_file),
        ca: path(&flags.peer_trusted_ca_file),
    };
    Ok(Some(MemberTls::load(client, peer)?))
}

/// A duration as the shared text form (`90s`, `30m`, `1.5h`), or, as etcd reads its own flags,
/// a bare number of `unit`s (seconds or hours).
pub(super) fn duration_or_number(value: &str, unit: Duration) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(unit.mul_f64(n)),
        Ok(_) => Err("not a duration (e.g. 90s, 30m, 1h)".to_owned()),
        Err(_) => mesh_api::duration::parse(value).map_err(|e| e.to_string()),
    }
}

pub(super) fn retention(mode: CompactionArg, value: &str) -> Result<AutoCompaction, ConfigError> {
    Ok(match mode {
        CompactionArg::Off => AutoCompaction::Off,
        CompactionArg::Revision => {
            let n: i64 = value.parse().map_err(|_| {
                invalid("--auto-compaction-retention", value, "not a revision count")
            })?;
            if n <= 0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Revision(n)
            }
        }
        CompactionArg::Periodic => {
            let keep = duration_or_number(value, Duration::from_secs(3600))
                .map_err(|r| invalid("--auto-compaction-retention", value, r))?;
            if keep.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(keep)
            }
        }
    })
}
