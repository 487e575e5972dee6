//! The mesh's flags: this cluster's record (`--cluster-name`, CIDRs), the publisher's source,
//! the agent bootstrap.

use std::path::PathBuf;
use std::time::Duration;

use kvstore::server::MemberTls;
use mesh_api::cidr::Cidr;

use super::member::{duration_or_number, socket_addr};
use super::{ClusterFlags, ConfigError, Flags, invalid};
use crate::publish::SourceConfig;
use crate::publish::controller::RecordSettings;
use crate::publish::convert::Settings;

/// `--cluster-name`, `--cluster-id` and the cluster record's fields.
pub(super) fn cluster(
    flags: &Flags,
    tls: Option<&MemberTls>,
) -> Result<Option<ClusterFlags>, ConfigError> {
    let cidrs = |flag, texts: &[String]| -> Result<Vec<Cidr>, ConfigError> {
        texts
            .iter()
            .map(|t| t.parse::<Cidr>().map_err(|e| invalid(flag, t, e.reason)))
            .collect()
    };
    let pod_cidrs = cidrs("--pod-cidr", &flags.pod_cidr)?;
    let service_cidrs = cidrs("--service-cidr", &flags.service_cidr)?;
    let clusterset_cidr = clusterset_cidr(flags, &pod_cidrs, &service_cidrs)?;
    for url in &flags.advertise_remote_urls {
        mesh_api::endpoint::host_port(url)
            .map_err(|e| invalid("--advertise-remote-urls", url, e.to_string()))?;
    }
    let (name, id) = match (&flags.cluster_name, flags.cluster_id) {
        (Some(name), Some(id)) => (name, id),
        (None, None) => {
            if !(pod_cidrs.is_empty()
                && service_cidrs.is_empty()
                && clusterset_cidr.is_none()
                && flags.advertise_remote_urls.is_empty())
            {
                return Err(ConfigError::Combination(
                    "--pod-cidr, --service-cidr, --clusterset-service-cidr and --advertise-remote-urls describe the cluster record: they need --cluster-name and --cluster-id",
                ));
            }
            return Ok(None);
        }
        _ => {
            return Err(ConfigError::Combination(
                "--cluster-name and --cluster-id go together",
            ));
        }
    };
    certs::identity::check_name("--cluster-name", name)
        .map_err(|e| invalid("--cluster-name", name, e.to_string()))?;
    if id == 0 {
        return Err(invalid("--cluster-id", "0", "must be 1..=65535"));
    }
    let mut ca_fingerprint = String::new();
    if let Some(tls) = tls {
        if tls.cluster() != *name {
            return Err(ConfigError::ClusterMismatch {
                flag: name.clone(),
                certs: tls.cluster(),
            });
        }
        let ca = &tls.client.files().ca;
        let pem = std::fs::read_to_string(ca).map_err(|e| {
            invalid(
                "--trusted-ca-file",
                &ca.display().to_string(),
                e.to_string(),
            )
        })?;
        ca_fingerprint = certs::pki::fingerprint_pem(&pem).map_err(|e| {
            invalid(
                "--trusted-ca-file",
                &ca.display().to_string(),
                e.to_string(),
            )
        })?;
    }
    Ok(Some(ClusterFlags {
        settings: Settings {
            cluster: name.clone(),
            cluster_id: id,
        },
        record: RecordSettings {
            pod_cidrs,
            service_cidrs,
            clusterset_cidr,
            remote_urls: flags.advertise_remote_urls.clone(),
            ca_fingerprint,
        },
    }))
}

/// `--clusterset-service-cidr`: IPv4, and clear of the cluster's own ranges (a ClusterSetIP
/// that is also a pod or Service address would take its connections).
fn clusterset_cidr(
    flags: &Flags,
    pod_cidrs: &[Cidr],
    service_cidrs: &[Cidr],
) -> Result<Option<Cidr>, ConfigError> {
    const FLAG: &str = "--clusterset-service-cidr";
    let Some(text) = &flags.clusterset_service_cidr else {
        return Ok(None);
    };
    let range: Cidr = text
        .parse()
        .map_err(|e: mesh_api::cidr::CidrError| invalid(FLAG, text, e.reason))?;
    if !range.addr().is_ipv4() {
        return Err(invalid(FLAG, text, "ClusterSetIPs are IPv4 for now"));
    }
    if range.bits() > 30 {
        return Err(invalid(FLAG, text, "too small: give at least a /30"));
    }
    if let Some(other) = pod_cidrs
        .iter()
        .chain(service_cidrs)
        .find(|c| c.overlaps(&range))
    {
        return Err(invalid(
            FLAG,
            text,
            format!("overlaps the cluster's range {other}"),
        ));
    }
    Ok(Some(range))
}

/// The publisher's source and `--identity-gc-grace`, when a source is given (it needs
/// `--cluster-name` and `--cluster-id`).
pub(super) fn publisher(flags: &Flags) -> Result<Option<(SourceConfig, Duration)>, ConfigError> {
    let source = match (&flags.manifests_dir, flags.kubernetes) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                return Err(invalid(
                    "--manifests-dir",
                    &dir.display().to_string(),
                    "not a directory",
                ));
            }
            SourceConfig::Manifests(dir.clone())
        }
        (None, true) => SourceConfig::Kubernetes,
        (None, false) => {
            if flags.cluster_name.is_some() || flags.cluster_id.is_some() {
                return Err(ConfigError::Combination(
                    "--cluster-name and --cluster-id are used with --manifests-dir or --kubernetes",
                ));
            }
            return Ok(None);
        }
    };
    if flags.cluster_name.is_none() || flags.cluster_id.is_none() {
        return Err(ConfigError::Combination(
            "publishing needs --cluster-name and --cluster-id",
        ));
    }
    Ok(Some((source, Duration::from_secs(flags.identity_gc_grace))))
}

/// The agent bootstrap flags: all or nothing, TLS only, a CA of this cluster with its key.
pub(super) fn bootstrap(
    flags: &Flags,
    local_tls: Option<&(PathBuf, PathBuf, PathBuf)>,
    member: &kvstore::server::Config,
) -> Result<Option<crate::bootstrap::Settings>, ConfigError> {
    if flags.listen_bootstrap_urls.is_empty() {
        if flags.bootstrap_ca_key_file.is_some() || !flags.bootstrap_service_accounts.is_empty() {
            return Err(ConfigError::Combination(
                "--bootstrap-ca-key-file and --bootstrap-service-account need --listen-bootstrap-urls",
            ));
        }
        return Ok(None);
    }
    let Some((trusted_ca, _, _)) = local_tls else {
        return Err(ConfigError::Combination(
            "--listen-bootstrap-urls needs TLS (--cert-file, --key-file, --trusted-ca-file)",
        ));
    };
    let listen = flags
        .listen_bootstrap_urls
        .iter()
        .map(|u| socket_addr(u, "https").map_err(|r| invalid("--listen-bootstrap-urls", u, r)))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(ca_key) = flags.bootstrap_ca_key_file.clone() else {
        return Err(ConfigError::Combination(
            "--listen-bootstrap-urls needs --bootstrap-ca-key-file (the key of the CA that signs agent certificates)",
        ));
    };
    if flags.bootstrap_service_accounts.is_empty() {
        return Err(ConfigError::Combination(
            "--listen-bootstrap-urls needs --bootstrap-service-account (the agents' NAMESPACE/NAME)",
        ));
    }
    let service_accounts = flags
        .bootstrap_service_accounts
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|r| invalid("--bootstrap-service-account", a, r))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if flags.bootstrap_audience.is_empty() {
        return Err(invalid("--bootstrap-audience", "", "must not be empty"));
    }
    let validity = duration_or_number(&flags.agent_cert_validity, Duration::from_secs(3600))
        .map_err(|r| invalid("--agent-cert-validity", &flags.agent_cert_validity, r))?;
    if validity < Duration::from_secs(3600) {
        return Err(invalid(
            "--agent-cert-validity",
            &flags.agent_cert_validity,
            "must be at least 1h",
        ));
    }
    let ca_cert = flags
        .bootstrap_ca_file
        .clone()
        .unwrap_or_else(|| trusted_ca.clone());
    let ca = certs::pki::CertificateAuthority::load(&ca_cert, &ca_key).map_err(|e| {
        invalid(
            "--bootstrap-ca-key-file",
            &ca_key.display().to_string(),
            e.to_string(),
        )
    })?;
    if let Some(tls) = &member.tls
        && tls.cluster() != ca.cluster()
    {
        return Err(invalid(
            "--bootstrap-ca-file",
            &ca_cert.display().to_string(),
            format!(
                "is cluster {}'s CA, this member's certificates are cluster {}'s",
                ca.cluster(),
                tls.cluster()
            ),
        ));
    }
    Ok(Some(crate::bootstrap::Settings {
        listen,
        ca_cert,
        ca_key,
        service_accounts,
        audience: flags.bootstrap_audience.clone(),
        validity,
    }))
}
