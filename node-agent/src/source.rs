//! The agent's view of its cluster's API server: list, then watch from the listed revision.
//!
//! Two prefixes are read: `mesh/v1/` (every cluster's records, this cluster's and every
//! mirrored remote's) and `mesh/status/remotes/` (how each remote's mirror is doing, for
//! staleness). Both are listed at one revision (pages of [`PAGE`] keys, the later pages pinned
//! to the first page's revision), then watched from the next revision on separate streams. A
//! broken stream is watched again from the revision it reached; a compacted revision means a
//! new list, which replaces the whole state (mark-and-sweep: what the new list lacks is
//! removed by the reconcile's diff).

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};
use mesh_api::keys::{ROOT, STATUS_REMOTES, prefix_end};

use crate::config::Config;
use crate::state::MeshState;

/// A change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: String,
    /// Its new value (`None`: deleted).
    pub value: Option<Vec<u8>>,
    /// The revision the key was created at (0 for a delete).
    pub created: i64,
}

/// Keys per list request.
pub const PAGE: i64 = 2_000;
/// The prefixes the agent reads.
pub const PREFIXES: [&str; 2] = [ROOT, STATUS_REMOTES];

/// A failure talking to the API server. Never fatal: the agent keeps its maps and retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No member could be reached (or a TLS file did not read).
    #[error(transparent)]
    Connect(#[from] mesh_client::Error),
    /// A request or stream failed.
    #[error("{op}: {source}")]
    Etcd {
        /// What was done.
        op: &'static str,
        /// Why.
        source: Box<etcd_client::Error>,
    },
    /// The watch's start revision was compacted: list again.
    #[error("revision {wanted} was compacted (oldest kept: {compacted}); listing again")]
    Compacted {
        /// The revision the watch asked for.
        wanted: i64,
        /// The compaction revision.
        compacted: i64,
    },
    /// A request got no answer in time.
    #[error("{op}: no answer within {after:?}")]
    Timeout {
        /// What was done.
        op: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// The server ended or cancelled the watch.
    #[error("watch of {prefix} ended: {reason}")]
    Ended {
        /// Which prefix.
        prefix: &'static str,
        /// What the server said.
        reason: String,
    },
}

fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
    move |e| Error::Etcd {
        op,
        source: Box::new(e),
    }
}

/// Connects to one API-server member: the first of the configured endpoints, from index
/// `start` on (wrapping), that answers and knows a leader ([`mesh_client::with_leader`]).
/// Returns the client and the index of the member it reached. Keep-alives notice a member
/// that stopped answering, so the watches on it fail and the agent moves on.
pub async fn connect(config: &Config, start: usize) -> Result<(Client, usize), Error> {
    let settings = mesh_client::Settings::default().keep_alive(
        Duration::from_secs(10),
        Duration::from_secs(5),
        false,
    );
    let credentials = config
        .tls
        .as_ref()
        .map(|(ca, cert, key)| mesh_client::Credentials::new(ca, cert, key));
    Ok(mesh_client::with_leader(&config.endpoints, start, credentials.as_ref(), &settings).await?)
}

/// Lists both prefixes at one revision into a new state. Returns it and the revision.
pub async fn list(client: &mut Client) -> Result<(MeshState, i64), Error> {
    let mut state = MeshState::default();
    let mut revision = 0;
    for prefix in PREFIXES {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = client
                .get(from.clone(), Some(options))
                .await
                .map_err(etcd("listing"))?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                if let Ok(key) = kv.key_str() {
                    state.apply(key, Some(kv.value()), kv.create_revision());
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
    }
    Ok((state, revision))
}

/// A watch of one prefix and the revision it has reached.
#[derive(Debug)]
pub struct Watch {
    prefix: &'static str,
    stream: WatchStream,
    /// Every change up to here is applied; a new watch starts after it.
    pub revision: i64,
}

impl Watch {
    /// Watches `prefix` for changes after `revision`.
    pub async fn start(
        client: &mut Client,
        prefix: &'static str,
        revision: i64,
    ) -> Result<Watch, Error> {
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let stream = client
            .watch(prefix, Some(options))
            .await
            .map_err(etcd("watching"))?;
        Ok(Watch {
            prefix,
            stream,
            revision,
        })
    }

    /// Waits for the next response: its changes, in order (`None`: deleted).
    pub async fn next(&mut self) -> Result<Vec<Change>, Error> {
        let resp = self
            .stream
            .message()
            .await
            .map_err(etcd("watching"))?
            .ok_or_else(|| Error::Ended {
                prefix: self.prefix,
                reason: "stream closed".to_owned(),
            })?;
        if resp.compact_revision() > 0 {
            return Err(Error::Compacted {
                wanted: self.revision + 1,
                compacted: resp.compact_revision(),
            });
        }
        if resp.canceled() {
            return Err(Error::Ended {
                prefix: self.prefix,
                reason: resp.cancel_reason().to_owned(),
            });
        }
        let mut changes = Vec::with_capacity(resp.events().len());
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            let Ok(key) = kv.key_str() else { continue };
            let value = match event.event_type() {
                EventType::Put => Some(kv.value().to_vec()),
                EventType::Delete => None,
            };
            changes.push(Change {
                key: key.to_owned(),
                value,
                created: kv.create_revision(),
            });
        }
        if resp.events().is_empty()
            && !resp.created()
            && let Some(h) = resp.header()
        {
            // A progress notification: everything up to its revision has been sent. (The
            // creation response's revision says nothing of what was sent.)
            self.revision = self.revision.max(h.revision());
        }
        Ok(changes)
    }
}
