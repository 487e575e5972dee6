//! mesh-apiserver: raftmesh's mesh API server, a Raft-replicated store that speaks the
//! etcd v3 API. It takes etcd's flag names, so operators (and etcd tooling) feel at home.
//!
//! This binary parses flags, sets up logging, validates (exit 64 on bad configuration), binds
//! and calls [`mesh_apiserver::run`].

use std::process::ExitCode;

use clap::Parser;
use mesh_apiserver::config::{Config, Flags, LogFormat};
use mesh_apiserver::{Listeners, run};

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&flags.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match flags.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let config = match Config::validate(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mesh-apiserver: invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("mesh-apiserver")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        tracing::info!(
            client = ?flags.listen_client_urls,
            peer = ?flags.listen_peer_urls,
            metrics = ?flags.listen_metrics_urls,
            "listening"
        );
        run(config, listeners, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("mesh-apiserver: {e}");
            eprintln!("mesh-apiserver: {e}");
            ExitCode::FAILURE
        }
    }
}
