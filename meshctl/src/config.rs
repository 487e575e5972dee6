//! `meshctl config`: manage the contexts in `$RAFTMESH_CONFIG` (default `~/.raftmesh/config`).

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::Failure;
use crate::output::{Output, print, render};
use mesh_client::contexts::{ConfigFile, ContextEntry};

/// `meshctl config` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add or replace a context: a cluster's endpoints and credentials. The first context
    /// added becomes the current one.
    SetContext(SetContextArgs),
    /// List the contexts (* marks the current one).
    GetContexts(GetContextsArgs),
    /// Make a context the current one.
    UseContext {
        /// The context.
        name: String,
    },
    /// Print the current context's name.
    CurrentContext,
    /// Remove a context.
    DeleteContext {
        /// The context.
        name: String,
    },
}

/// Flags of `meshctl config set-context`.
#[derive(Debug, Args)]
pub struct SetContextArgs {
    /// The context's name (usually the cluster's).
    name: String,
    /// Client URLs of the cluster's API server (comma-separated https://host:port).
    #[arg(long, required = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// A PKI directory as `meshctl pki init` writes it (ca.crt, ca.key, admin-*.crt/key).
    /// Its CA key lets `meshctl connect` issue certificates.
    #[arg(long, conflicts_with_all = ["cacert", "cert", "key"])]
    pki_dir: Option<PathBuf>,
    /// The cluster's CA bundle (PEM).
    #[arg(long, requires_all = ["cert", "key"])]
    cacert: Option<PathBuf>,
    /// An admin client certificate (PEM).
    #[arg(long, requires_all = ["cacert", "key"])]
    cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, requires_all = ["cacert", "cert"])]
    key: Option<PathBuf>,
}

/// Flags of `meshctl config get-contexts`.
#[derive(Debug, Args)]
pub struct GetContextsArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Runs `meshctl config`.
pub fn run(command: Command) -> Result<(), Failure> {
    let (path, mut file) = ConfigFile::load().map_err(Failure::BadInput)?;
    match command {
        Command::SetContext(a) => {
            for e in &a.endpoints {
                if !(e.starts_with("https://") || e.starts_with("http://")) {
                    return Err(Failure::BadInput(anyhow!(
                        "--endpoints {e:?}: expected https://host:port"
                    )));
                }
            }
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let entry = ContextEntry {
                endpoints: a.endpoints,
                pki_dir: a.pki_dir.map(absolute),
                cacert: a.cacert.map(absolute),
                cert: a.cert.map(absolute),
                key: a.key.map(absolute),
            };
            // Check that the files resolve before saving.
            entry.context(&a.name).map_err(Failure::BadInput)?;
            let replaced = file.contexts.insert(a.name.clone(), entry).is_some();
            if file.current_context.is_none() {
                file.current_context = Some(a.name.clone());
            }
            file.save(&path).map_err(Failure::Other)?;
            println!(
                "context {:?} {} in {}",
                a.name,
                if replaced { "replaced" } else { "added" },
                path.display()
            );
        }
        Command::GetContexts(a) => {
            let rows: Vec<serde_json::Value> = file
                .contexts
                .iter()
                .map(|(name, e)| {
                    json!({
                        "current": file.current_context.as_deref() == Some(name.as_str()),
                        "name": name,
                        "endpoints": e.endpoints,
                        "pkiDir": e.pki_dir,
                        "cert": e.cert,
                    })
                })
                .collect();
            print(a.output, &json!(rows), || {
                render(&{
                    let mut out = vec![vec![
                        "CURRENT".to_owned(),
                        "NAME".to_owned(),
                        "ENDPOINTS".to_owned(),
                        "CREDENTIALS".to_owned(),
                    ]];
                    for (name, e) in &file.contexts {
                        let current = file.current_context.as_deref() == Some(name.as_str());
                        let creds = match (&e.pki_dir, &e.cert) {
                            (Some(d), _) => d.display().to_string(),
                            (None, Some(c)) => c.display().to_string(),
                            (None, None) => "plaintext".to_owned(),
                        };
                        out.push(vec![
                            if current { "*" } else { "" }.to_owned(),
                            name.clone(),
                            e.endpoints.join(","),
                            creds,
                        ]);
                    }
                    out
                })
            })
            .map_err(Failure::Other)?;
        }
        Command::UseContext { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(Failure::BadInput(anyhow!("no context {name:?}")));
            }
            file.current_context = Some(name.clone());
            file.save(&path).map_err(Failure::Other)?;
            println!("switched to context {name:?}");
        }
        Command::CurrentContext => match &file.current_context {
            Some(name) => println!("{name}"),
            None => return Err(Failure::Other(anyhow!("no current context"))),
        },
        Command::DeleteContext { name } => {
            if file.contexts.remove(&name).is_none() {
                return Err(Failure::BadInput(anyhow!("no context {name:?}")));
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            file.save(&path).map_err(Failure::Other)?;
            println!("context {name:?} deleted");
        }
    }
    Ok(())
}
