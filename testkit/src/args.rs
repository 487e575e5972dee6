//! Typed command lines of the programs the harness runs, so a flag is spelled in one place:
//! [`ApiServerArgs`] for a one-member `mesh-apiserver` (etcd's flag names; multi-member clusters
//! are [`crate::localcluster::MemberConfig`]'s) and [`AgentArgs`] for `node-agent`. Each adds its
//! arguments to a [`Command`] made by the caller (in a namespace, a cgroup, …).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use certs::Role;
use mesh_client::pki::PkiDir;

/// How a program reaches or serves the store.
#[derive(Debug, Clone)]
enum Transport {
    /// `--insecure-plaintext`.
    Plaintext,
    /// Mutual TLS with these files.
    Tls {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Transport {
    /// Mutual TLS with `role`'s certificate for `name` from the PKI directory `pki`.
    fn from_pki(pki: &Path, role: Role, name: &str) -> Transport {
        let dir = PkiDir::new(pki);
        let (cert, key) = dir.pair(role, name);
        Transport::Tls {
            ca: dir.ca_cert(),
            cert,
            key,
        }
    }
}

/// A one-member `mesh-apiserver` that founds a new cluster:
///
/// ```text
/// --name N --data-dir D --listen-client-urls C[,…] --advertise-client-urls C
/// --listen-peer-urls P --initial-advertise-peer-urls P --initial-cluster N=P
/// --initial-cluster-state new --initial-cluster-token T
/// (--cert-file … --key-file … --trusted-ca-file … --client-cert-auth, also --peer-…) | --insecure-plaintext
/// [extra args]
/// ```
#[derive(Debug, Clone)]
pub struct ApiServerArgs {
    name: String,
    data_dir: PathBuf,
    client_urls: Vec<String>,
    peer_url: String,
    token: String,
    transport: Option<Transport>,
    extra: Vec<OsString>,
}

impl ApiServerArgs {
    /// Member `name` storing in `data_dir`, serving clients at `client_url` and its peer port
    /// at `peer_url`, founding the cluster `token`.
    pub fn new(name: &str, data_dir: &Path, client_url: &str, peer_url: &str, token: &str) -> Self {
        ApiServerArgs {
            name: name.to_owned(),
            data_dir: data_dir.to_owned(),
            client_urls: vec![client_url.to_owned()],
            peer_url: peer_url.to_owned(),
            token: token.to_owned(),
            transport: None,
            extra: Vec::new(),
        }
    }

    /// Also listens for clients at `url` (not advertised).
    pub fn also_listen(mut self, url: &str) -> Self {
        self.client_urls.push(url.to_owned());
        self
    }

    /// No TLS on either port (`--insecure-plaintext`).
    pub fn plaintext(mut self) -> Self {
        self.transport = Some(Transport::Plaintext);
        self
    }

    /// Mutual TLS on the client and peer ports with the member's certificate from a PKI
    /// directory (`apiserver-<name>.crt`, `.key`, `ca.crt`, as `meshctl pki init` writes).
    pub fn tls(mut self, pki: &Path) -> Self {
        self.transport = Some(Transport::from_pki(pki, Role::Apiserver, &self.name));
        self
    }

    /// Adds `args` after the others (`--cluster-name`, `--manifests-dir`, …).
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        let mut push = |a: &dyn AsRef<OsStr>| out.push(a.as_ref().to_owned());
        push(&"--name");
        push(&self.name);
        push(&"--data-dir");
        push(&self.data_dir);
        push(&"--listen-client-urls");
        push(&self.client_urls.join(","));
        push(&"--advertise-client-urls");
        push(&self.client_urls[0]);
        push(&"--listen-peer-urls");
        push(&self.peer_url);
        push(&"--initial-advertise-peer-urls");
        push(&self.peer_url);
        push(&"--initial-cluster");
        push(&format!("{}={}", self.name, self.peer_url));
        push(&"--initial-cluster-state");
        push(&"new");
        push(&"--initial-cluster-token");
        push(&self.token);
        match &self.transport {
            Some(Transport::Plaintext) => push(&"--insecure-plaintext"),
            Some(Transport::Tls { ca, cert, key }) => {
                for prefix in ["--", "--peer-"] {
                    push(&format!("{prefix}cert-file"));
                    push(cert);
                    push(&format!("{prefix}key-file"));
                    push(key);
                    push(&format!("{prefix}trusted-ca-file"));
                    push(ca);
                    push(&format!("{prefix}client-cert-auth"));
                }
            }
            None => {}
        }
        out.extend(self.extra.iter().cloned());
        out
    }

    /// Adds the arguments to `cmd`.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.args(self.to_args())
    }
}

/// A `node-agent`:
///
/// ```text
/// --node N --cluster C --endpoints E (--cacert … --cert … --key … | --insecure-plaintext)
/// [--cgroup-root …] [--bpffs …] [--state-dir …] [--listen-metrics …] [extra args]
/// ```
#[derive(Debug, Clone)]
pub struct AgentArgs {
    node: String,
    cluster: String,
    endpoints: String,
    transport: Option<Transport>,
    paths: Vec<(&'static str, PathBuf)>,
    listen_metrics: Option<String>,
    extra: Vec<OsString>,
}

impl AgentArgs {
    /// The agent of `cluster`'s node `node`, reaching its store at `endpoints`.
    pub fn new(node: &str, cluster: &str, endpoints: &str) -> Self {
        AgentArgs {
            node: node.to_owned(),
            cluster: cluster.to_owned(),
            endpoints: endpoints.to_owned(),
            transport: None,
            paths: Vec::new(),
            listen_metrics: None,
            extra: Vec::new(),
        }
    }

    /// Without TLS (`--insecure-plaintext`).
    pub fn plaintext(mut self) -> Self {
        self.transport = Some(Transport::Plaintext);
        self
    }

    /// With the node's agent certificate from a PKI directory (`agent-<node>.crt`, `.key`,
    /// `ca.crt`, as `meshctl pki issue --role agent` writes).
    pub fn tls(mut self, pki: &Path) -> Self {
        self.transport = Some(Transport::from_pki(pki, Role::Agent, &self.node));
        self
    }

    /// `--cgroup-root`.
    pub fn cgroup_root(mut self, dir: &Path) -> Self {
        self.paths.push(("--cgroup-root", dir.to_owned()));
        self
    }

    /// `--bpffs`: its pin directory.
    pub fn bpffs(mut self, dir: &Path) -> Self {
        self.paths.push(("--bpffs", dir.to_owned()));
        self
    }

    /// `--state-dir`.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.paths.push(("--state-dir", dir.to_owned()));
        self
    }

    /// `--listen-metrics`.
    pub fn listen_metrics(mut self, addr: &str) -> Self {
        self.listen_metrics = Some(addr.to_owned());
        self
    }

    /// Adds `args` after the others (`--wg-backend`, `--log-level`, …).
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        for (flag, value) in [
            ("--node", &self.node),
            ("--cluster", &self.cluster),
            ("--endpoints", &self.endpoints),
        ] {
            out.push(flag.into());
            out.push(value.into());
        }
        match &self.transport {
            Some(Transport::Plaintext) => out.push("--insecure-plaintext".into()),
            Some(Transport::Tls { ca, cert, key }) => {
                for (flag, path) in [("--cacert", ca), ("--cert", cert), ("--key", key)] {
                    out.push(flag.into());
                    out.push(path.into());
                }
            }
            None => {}
        }
        for (flag, path) in &self.paths {
            out.push((*flag).into());
            out.push(path.into());
        }
        if let Some(addr) = &self.listen_metrics {
            out.push("--listen-metrics".into());
            out.push(addr.into());
        }
        out.extend(self.extra.iter().cloned());
        out
    }

    /// Adds the arguments to `cmd`.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.args(self.to_args())
    }
}

#[cfg(test)]
mod tests;
