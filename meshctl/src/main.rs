//! `meshctl`: raftmesh's command-line tool.
//!
//! # Layout
//! - `main.rs`: flags, dispatch and exit codes (64 for bad input, 1 for other failures).
//! - [`pki`]: `meshctl pki init|issue`, a cluster's CA and role certificates; [`pkisync`]:
//!   `meshctl pki sync-secrets`, the same as Secrets in a cluster, kept current.
//! - [`get`]: `meshctl get`, records read from an API server, decoded for people.
//! - [`config`]: `meshctl config`, contexts ([`context`] resolves them to clients; [`kubecontext`]
//!   resolves kubeconfig contexts through the cluster's API).
//! - [`connect`]: `meshctl connect|disconnect`, joining clusters.
//! - [`status`]: `meshctl status`, members and remote mirrors.
//! - [`services`]: `meshctl services`, global services and their backends per cluster.
//! - [`lab`]: `meshctl lab`, the whole mesh on one Linux box (the `lab` crate does the work).
//! - [`output`]: `-o table|json|yaml`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
mod connect;
mod get;
mod lab;
mod output;
mod pki;
mod pkisync;
mod services;
mod status;

/// raftmesh's command-line tool.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a cluster's CA and issue role certificates.
    #[command(subcommand)]
    Pki(pki::Command),
    /// Print the records at a key or under a prefix, decoded (YAML or JSON).
    Get(get::GetArgs),
    /// Manage contexts: named clusters with their endpoints and credentials.
    #[command(subcommand)]
    Config(config::Command),
    /// Connect clusters, so each mirrors the other's records.
    ///
    /// Reads both clusters' cluster records (mesh/v1/<c>/cluster), refuses equal names or ids
    /// and overlapping pod CIDRs (also with every cluster either side already mirrors), issues
    /// each side a `remote` certificate signed by the other cluster's CA (both contexts need a
    /// PKI directory with its CA key), and writes mesh/config/remotes/<other> in both clusters.
    /// Nothing is written unless every check passes. Running it again changes nothing.
    Connect(connect::ConnectArgs),
    /// Disconnect clusters: each stops mirroring the other.
    ///
    /// Removes both connection records; the mirrored records are deleted after the API
    /// servers' --disconnect-grace (a reconnect within it resumes where the mirror was).
    Disconnect(connect::DisconnectArgs),
    /// Show a cluster's members and how its mirrors of remote clusters are doing.
    Status(status::StatusArgs),
    /// Show the global services and their backends in every cluster.
    Services(services::ServicesArgs),
    /// Run the whole mesh on this Linux box: clusters out of network namespaces, processes
    /// and cgroups (`meshctl lab up`, `status`, `exec`, faults, `down`). Needs root.
    Lab(lab::LabArgs),
}

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
enum Failure {
    /// The caller's input was refused (EX_USAGE, 64); nothing was changed.
    BadInput(anyhow::Error),
    /// Anything else (1).
    Other(anyhow::Error),
    /// A command meshctl ran for the caller (`lab exec`) exited with this code; meshctl
    /// exits with it and adds nothing.
    Exit(u8),
}

impl Failure {
    /// sysexits.h EX_USAGE.
    const BAD_INPUT: u8 = 64;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; anything else is a usage error.
            let code = if e.use_stderr() {
                Failure::BAD_INPUT
            } else {
                0
            };
            // Nothing sensible is left to do if the terminal is gone.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Pki(command) => pki::run(command),
        Command::Get(args) => get::run(args),
        Command::Config(command) => config::run(command),
        Command::Connect(args) => connect::run_connect(args),
        Command::Disconnect(args) => connect::run_disconnect(args),
        Command::Status(args) => status::run(args),
        Command::Services(args) => services::run(args),
        Command::Lab(args) => lab::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(Failure::BAD_INPUT)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

/// The runtime a command's requests run on (one thread: meshctl waits on one thing at a time).
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))
}

/// The error and its causes on one line, skipping a cause whose text the line already has
/// (the certs errors print their source themselves).
fn message(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
