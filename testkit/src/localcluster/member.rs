//! One member's identity, addresses and command line.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use super::ports::pick_free_ports;
use super::{Flavor, Spec};

/// `--initial-cluster-state`: whether a member bootstraps a new cluster or joins a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstraps a new cluster together with every member of `--initial-cluster`.
    New,
    /// Joins a cluster that already has it as a member (after MemberAdd).
    Existing,
}

impl ClusterState {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// The ports one member listens on, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPorts {
    /// Client (gRPC) port.
    pub client: u16,
    /// Raft peer port.
    pub peer: u16,
    /// Metrics port, when the cluster was asked for one.
    pub metrics: Option<u16>,
}

impl MemberPorts {
    /// Picks free ports, distinct from every port this process handed out before.
    pub fn pick(metrics: bool) -> io::Result<MemberPorts> {
        let ports = pick_free_ports(if metrics { 3 } else { 2 })?;
        Ok(MemberPorts {
            client: ports[0],
            peer: ports[1],
            metrics: ports.get(2).copied(),
        })
    }
}

/// What identifies one member on disk and on the network; fixed for the member's life, so a
/// restarted member comes back with the same data and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// `--name`; unique in the cluster and never reused (`n1`, `n2`, …).
    pub name: String,
    /// Where it listens.
    pub ports: MemberPorts,
    /// `--data-dir`; created by the server itself (etcd insists on creating it 0700).
    pub data_dir: PathBuf,
    /// The cluster's certificate directory ([`Spec::tls`]); `None` for plaintext.
    pub tls: Option<PathBuf>,
}

/// The flags shared by every member started together.
#[derive(Debug, Clone, Copy)]
pub struct Bootstrap<'a> {
    /// `--initial-cluster`, see [`initial_cluster`].
    pub initial_cluster: &'a str,
    /// `--initial-cluster-state`.
    pub state: ClusterState,
    /// `--initial-cluster-token`; unique per cluster so that member ids differ across clusters.
    pub token: &'a str,
}

impl MemberConfig {
    /// `http(s)://127.0.0.1:<client port>` (https with TLS).
    pub fn client_url(&self) -> String {
        url(self.scheme(), self.ports.client)
    }

    /// `http(s)://127.0.0.1:<peer port>` (https with TLS).
    pub fn peer_url(&self) -> String {
        url(self.scheme(), self.ports.peer)
    }

    /// `http://127.0.0.1:<metrics port>`, when it has one.
    pub fn metrics_url(&self) -> Option<String> {
        self.ports.metrics.map(|port| url("http", port))
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The command line (without the program) that starts this member.
    pub fn args(&self, boot: Bootstrap<'_>, spec: &Spec, flavor: &Flavor) -> Vec<OsString> {
        let client = self.client_url();
        let peer = self.peer_url();
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone().into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
            "--listen-client-urls".into(),
            client.clone().into(),
            "--advertise-client-urls".into(),
            client.into(),
            "--listen-peer-urls".into(),
            peer.clone().into(),
            "--initial-advertise-peer-urls".into(),
            peer.into(),
            "--initial-cluster".into(),
            boot.initial_cluster.into(),
            "--initial-cluster-state".into(),
            boot.state.as_str().into(),
            "--initial-cluster-token".into(),
            boot.token.into(),
        ];
        if let Some(count) = spec.snapshot_count {
            args.extend(["--snapshot-count".into(), count.to_string().into()]);
        }
        if let Some(metrics) = self.metrics_url() {
            args.extend(["--listen-metrics-urls".into(), metrics.into()]);
        }
        match &self.tls {
            Some(dir) => {
                let pki = mesh_client::pki::PkiDir::new(dir);
                let (cert, key) = pki.pair(certs::Role::Apiserver, &self.name);
                let ca = pki.ca_cert();
                for prefix in ["--", "--peer-"] {
                    args.extend([
                        format!("{prefix}cert-file").into(),
                        cert.clone().into(),
                        format!("{prefix}key-file").into(),
                        key.clone().into(),
                        format!("{prefix}trusted-ca-file").into(),
                        ca.clone().into(),
                        format!("{prefix}client-cert-auth").into(),
                    ]);
                }
            }
            None if !flavor.is_etcd() => args.push("--insecure-plaintext".into()),
            None => {}
        }
        args.extend(spec.extra_args.iter().map(OsString::from));
        args
    }
}

/// `--initial-cluster` from `(name, peer url)` pairs: `n1=http://…,n2=http://…`.
pub fn initial_cluster<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    members
        .into_iter()
        .map(|(name, peer_url)| format!("{name}={peer_url}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn url(scheme: &str, port: u16) -> String {
    format!("{scheme}://127.0.0.1:{port}")
}

#[cfg(test)]
mod tests;
