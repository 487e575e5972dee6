//! `meshctl get`: read keys from a cluster's API server and print the records for people.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, ValueEnum};
use etcd_client::GetOptions;
use mesh_api::Record;
use mesh_api::keys::Key;
use mesh_api::reach::ReachRecord;
use mesh_api::remote::{RemoteConfigRecord, RemoteStatusRecord};
use mesh_client::{Credentials, Settings};
use serde_json::{Value, json};

use crate::Failure;
use mesh_client::contexts::ConfigFile;

/// Print the records at a key (or under a prefix), decoded.
///
/// The cluster is `--context`'s; without it, the connection flags (which default to
/// etcdctl's environment variables, so a shell set up for etcdctl works as is), and without
/// those the current context.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key, e.g. mesh/v1/apps/services/default/web; with --prefix, a prefix such as
    /// mesh/v1/apps/.
    key: String,

    /// Every key starting with KEY.
    #[arg(long)]
    prefix: bool,

    /// The cluster's context (see meshctl config).
    #[arg(long, conflicts_with_all = ["endpoints", "cacert", "cert", "key_file"])]
    context: Option<String>,

    /// API server endpoints (host:port or URLs, comma-separated) [default: the current
    /// context's, else 127.0.0.1:2379].
    #[arg(long, env = "ETCDCTL_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,

    /// CA bundle of the cluster (PEM).
    #[arg(long, env = "ETCDCTL_CACERT")]
    cacert: Option<PathBuf>,

    /// Client certificate (PEM).
    #[arg(long, env = "ETCDCTL_CERT")]
    cert: Option<PathBuf>,

    /// Its key (PEM).
    #[arg(long, env = "ETCDCTL_KEY")]
    key_file: Option<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
}

/// How records are printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// A YAML list.
    Yaml,
    /// A JSON array.
    Json,
}

/// Runs `meshctl get`.
pub fn run(mut args: GetArgs) -> Result<(), Failure> {
    let flags_given = !args.endpoints.is_empty() || args.cacert.is_some();
    let mut from_context = None;
    if args.context.is_some() || !flags_given {
        let (_, file) = ConfigFile::load().map_err(Failure::BadInput)?;
        if args.context.is_some() || file.current_context.is_some() {
            let ctx = file
                .resolve(args.context.as_deref())
                .map_err(Failure::BadInput)?;
            args.endpoints = ctx.endpoints.clone();
            from_context = Some(ctx.credentials());
        }
    }
    if args.endpoints.is_empty() {
        args.endpoints = vec!["127.0.0.1:2379".to_owned()];
    }
    let credentials = match from_context {
        Some(c) => c,
        None => credentials(&args).map_err(Failure::BadInput)?,
    };
    let runtime = crate::runtime()?;
    let entries = runtime
        .block_on(fetch(&args, credentials))
        .map_err(Failure::Other)?;
    if entries.is_empty() && !args.prefix {
        return Err(Failure::Other(anyhow!("no key {}", args.key)));
    }
    let out = match args.output {
        Output::Json => {
            serde_json::to_string_pretty(&entries).map_err(|e| Failure::Other(e.into()))?
        }
        Output::Yaml => serde_yaml::to_string(&entries).map_err(|e| Failure::Other(e.into()))?,
    };
    println!("{}", out.trim_end());
    Ok(())
}

fn credentials(args: &GetArgs) -> anyhow::Result<Option<Credentials>> {
    match (&args.cacert, &args.cert, &args.key_file) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(Credentials::new(ca, cert, key))),
        _ => Err(anyhow!(
            "give all of --cacert, --cert and --key-file, or none (plaintext)"
        )),
    }
}

async fn fetch(args: &GetArgs, credentials: Option<Credentials>) -> anyhow::Result<Vec<Value>> {
    let scheme = if credentials.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else {
                format!("{scheme}://{e}")
            }
        })
        .collect();
    let settings = Settings::timeouts(Duration::from_secs(5), Some(Duration::from_secs(10)));
    let (mut client, _) = mesh_client::with_leader(&endpoints, 0, credentials.as_ref(), &settings)
        .await
        .with_context(|| format!("connecting to {}", endpoints.join(",")))?;
    let get = args.prefix.then(|| GetOptions::new().with_prefix());
    let resp = client
        .get(args.key.as_str(), get)
        .await
        .context("reading")?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| entry(kv.key(), kv.value(), kv.mod_revision()))
        .collect())
}

/// One key as printed: the decoded record, or why it is not one (with the raw value).
fn entry(key: &[u8], value: &[u8], revision: i64) -> Value {
    let key = String::from_utf8_lossy(key).into_owned();
    let remote = match key.parse::<Key>() {
        Ok(Key::RemoteConfig { .. }) => {
            Some(RemoteConfigRecord::decode_checked(value).map(|r| r.to_json()))
        }
        Ok(Key::RemoteStatus { .. }) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Some(RemoteStatusRecord::decode_checked(value).map(|r| r.to_json(now)))
        }
        Ok(Key::NodeReach { .. }) => Some(ReachRecord::decode_checked(value).map(|r| r.to_json())),
        Ok(Key::RemoteCurrent { .. }) => {
            return json!({ "key": key, "modRevision": revision, "value": String::from_utf8_lossy(value) });
        }
        _ => None,
    };
    match remote {
        Some(Ok(record)) => {
            return json!({ "key": key, "modRevision": revision, "record": record });
        }
        Some(Err(e)) => {
            return json!({
                "key": key,
                "modRevision": revision,
                "error": e.to_string(),
                "value": String::from_utf8_lossy(value),
            });
        }
        None => {}
    }
    match Record::decode_at(&key, value) {
        Ok((_, record)) => {
            json!({ "key": key, "modRevision": revision, "record": record.to_json() })
        }
        Err(e) => json!({
            "key": key,
            "modRevision": revision,
            "error": e.to_string(),
            "value": String::from_utf8_lossy(value),
        }),
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::records::IdentityRecord;

    use super::*;

    #[test]
    fn records_are_decoded_and_other_values_explained() {
        let rec = Record::Identity(IdentityRecord {
            schema: mesh_api::SCHEMA,
            labels: vec!["app=web".into()],
        });
        let ok = entry(b"mesh/v1/apps/identities/65792", &rec.encode(), 7);
        assert_eq!(ok["record"]["labels"][0], "app=web");
        assert_eq!(ok["modRevision"], 7);
        let other = entry(b"hello", b"world", 3);
        assert_eq!(other["value"], "world");
        assert!(
            other["error"]
                .as_str()
                .unwrap()
                .contains("not a raftmesh key"),
            "{other}"
        );
    }
}
