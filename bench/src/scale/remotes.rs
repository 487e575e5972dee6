//! Synthetic remote clusters that cost little: one process serves all of them.
//!
//! Each remote is what a mirror talks to, and nothing more: a TLS port of its own on loopback
//! (its own CA and `apiserver` certificate, client certificates of its cluster required, as a
//! member's client port requires them), serving etcd's `Range` and `Watch` over its own
//! in-memory [`Mvcc`] — the engine every member applies its log to, so reads at a revision,
//! events and compaction have etcd's semantics. No Raft, no disk: a write is one `Mvcc::txn`
//! under a lock, and the watches of that remote are woken.
//!
//! A watch answers `created`, then sends every revision after its start in order, one
//! revision per message, and answers a progress request only once it has sent everything up to
//! the revision it reports — what a member's watch does and what the mirror relies on. A start
//! below the compacted revision is cancelled with `compact_revision`. Other calls are
//! refused as unimplemented; keys outside `mesh/v1/<cluster>/` are refused as a `remote`
//! caller's are.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use certs::identity::{Identity, Role};
use certs::pki::{CertificateAuthority, LeafSpec, Validity};
use certs::tls::{Accept, ServerTls, TlsFiles};
use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvServer,
    PbKvService, PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse,
    PbRangeStreamResponse, PbTxnRequest, PbTxnResponse, PbWatchRequest, PbWatchRequestUnion,
    PbWatchResponse, PbWatchServer, PbWatchService,
};
use kvstore::api::convert;
use kvstore::mvcc::Mvcc;
use kvstore::node::Header;
use kvstore::request::{DeleteRangeRequest, KeyRange, PutRequest, RequestOp, TxnRequest};
use mesh_api::SCHEMA;
use mesh_api::remote::RemoteConfigRecord;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::shape::{self, Op};

/// One remote's store.
#[derive(Debug)]
pub struct Store {
    cluster: String,
    /// etcd's cluster id in every header: stable and non-zero.
    cluster_id: u64,
    mvcc: Mutex<Mvcc>,
    /// The latest revision, for the watches to wake on.
    revision: watch::Sender<i64>,
}

impl Store {
    fn new(cluster: String, id: u32) -> Self {
        Self {
            cluster,
            cluster_id: 0x5ca1_e000_0000_0000 | u64::from(id),
            mvcc: Mutex::new(Mvcc::new()),
            revision: watch::channel(0).0,
        }
    }

    fn header(&self, revision: i64) -> Header {
        Header {
            cluster_id: self.cluster_id,
            member_id: 1,
            revision,
            raft_term: 1,
        }
    }

    /// Applies `ops` as one revision; returns it and when it became visible.
    pub fn apply(&self, ops: Vec<Op>) -> Result<(i64, Instant)> {
        let success = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(k, v) => RequestOp::Put(PutRequest {
                    key: Bytes::from(k),
                    value: Bytes::from(v),
                    ..Default::default()
                }),
                Op::Delete(k) => RequestOp::DeleteRange(DeleteRangeRequest {
                    key: Bytes::from(k),
                    ..Default::default()
                }),
            })
            .collect();
        let txn = TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        };
        let mut mvcc = self.mvcc.lock().unwrap_or_else(|e| e.into_inner());
        mvcc.txn(&txn).map_err(|e| anyhow::anyhow!("{e}"))?;
        let revision = mvcc.revision();
        drop(mvcc);
        let at = Instant::now();
        self.revision.send_replace(revision);
        Ok((revision, at))
    }

    fn prefix(&self) -> String {
        format!("mesh/v1/{}/", self.cluster)
    }

    /// Whether `[key, end)` lies inside this remote's prefix (what its `remote` role may read).
    fn allowed(&self, key: &[u8], end: &[u8]) -> bool {
        let prefix = self.prefix();
        let prefix_end = mesh_api::keys::prefix_end(&prefix);
        key.starts_with(prefix.as_bytes())
            && (end.is_empty() && !key.is_empty()
                || !end.is_empty() && end <= prefix_end.as_slice())
    }
}

/// Certificates of one remote, and the connection record a local cluster writes for it.
#[derive(Debug)]
pub struct Served {
    /// The remote's store.
    pub store: Arc<Store>,
    /// `mesh/config/remotes/<c>` for a local cluster named `local`.
    pub config: RemoteConfigRecord,
}

/// Every synthetic remote, served from this process until dropped.
#[derive(Debug)]
pub struct Remotes {
    /// By remote index.
    pub served: Vec<Served>,
    stop: CancellationToken,
}

impl Drop for Remotes {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Remotes {
    /// Every remote's store, by remote index.
    pub fn stores(&self) -> Vec<Arc<Store>> {
        self.served.iter().map(|s| s.store.clone()).collect()
    }

    /// Starts a server for each of `remotes` (their records written first), with its PKI
    /// under `dir`; connection records are for the local cluster `local`.
    pub async fn start(remotes: &[shape::Remote], local: &str, dir: &Path) -> Result<Self> {
        let stop = CancellationToken::new();
        let mut served = Vec::with_capacity(remotes.len());
        for (r, remote) in remotes.iter().enumerate() {
            let cluster = remote.name();
            let store = Arc::new(Store::new(cluster.clone(), shape::id(r)));
            let records = remote
                .records()
                .into_iter()
                .map(|(k, v)| Op::Put(k, v))
                .collect::<Vec<_>>();
            // Written as a publisher writes: batches, the markers last.
            for chunk in records.chunks(128) {
                store.apply(chunk.to_vec())?;
            }
            let (files, config) = pki(&cluster, r, local, dir)?;
            let tls = Arc::new(
                ServerTls::server(files, Accept::AnyRole)
                    .with_context(|| format!("{cluster}'s server TLS"))?,
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let incoming = kvstore::tls::incoming(listener, tls, "client", Arc::default());
            let service = Service {
                store: store.clone(),
            };
            let stopped = stop.clone();
            tokio::spawn(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(PbKvServer::new(service.clone()))
                    .add_service(PbWatchServer::new(service))
                    .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    eprintln!("synthetic remote {cluster}: {e}");
                }
            });
            served.push(Served {
                store,
                config: RemoteConfigRecord {
                    endpoints: vec![format!("https://{addr}")],
                    ..config
                },
            });
        }
        Ok(Self { served, stop })
    }
}

/// Remote `r`'s CA and server certificate (files under `dir`, for its port), and the
/// connection record holding a `remote` certificate its CA issued to `local`.
fn pki(cluster: &str, r: usize, local: &str, dir: &Path) -> Result<(TlsFiles, RemoteConfigRecord)> {
    let validity = Validity::days_from_now(30);
    let ca = CertificateAuthority::generate(cluster, validity)?;
    let server = ca.issue(&LeafSpec {
        identity: Identity::new(cluster, Role::Apiserver, "synthetic")?,
        sans: vec!["127.0.0.1".into()],
        validity,
    })?;
    let client = ca.issue(&LeafSpec {
        identity: Identity::new(cluster, Role::Remote, local)?,
        sans: vec![],
        validity,
    })?;
    let dir = dir.join(cluster);
    std::fs::create_dir_all(&dir)?;
    let files = TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        ca: dir.join("ca.crt"),
    };
    std::fs::write(&files.cert, &server.cert_pem)?;
    std::fs::write(&files.key, &server.key_pem)?;
    std::fs::write(&files.ca, ca.cert_pem())?;
    Ok((
        files,
        RemoteConfigRecord {
            schema: SCHEMA,
            cluster: cluster.to_owned(),
            id: shape::id(r),
            endpoints: vec![],
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
            pod_cidrs: vec![shape::pod_cidr(r)],
        },
    ))
}

/// The gRPC services of one remote.
#[derive(Debug, Clone)]
struct Service {
    store: Arc<Store>,
}

type RangeStream =
    Pin<Box<dyn futures::Stream<Item = Result<PbRangeStreamResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

fn refused() -> Status {
    Status::permission_denied("etcdserver: permission denied")
}

#[tonic::async_trait]
impl PbKvService for Service {
    async fn range(
        &self,
        req: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let req = convert::range_request(req.into_inner());
        if !self.store.allowed(&req.key, &req.range_end) {
            return Err(refused());
        }
        let (resp, revision) = {
            let mvcc = self.store.mvcc.lock().unwrap_or_else(|e| e.into_inner());
            (mvcc.range(&req), mvcc.revision())
        };
        let resp = resp.map_err(|e| Status::out_of_range(e.to_string()))?;
        Ok(Response::new(convert::range_response(
            resp,
            self.store.header(revision),
        )))
    }

    type RangeStreamStream = RangeStream;

    async fn range_stream(
        &self,
        _: Request<PbRangeRequest>,
    ) -> Result<Response<RangeStream>, Status> {
        Err(Status::unimplemented(
            "a synthetic remote serves Range and Watch",
        ))
    }

    async fn put(&self, _: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        Err(Status::unimplemented(
            "a synthetic remote serves Range and Watch",
        ))
    }

    async fn delete_range(
        &self,
        _: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        Err(Status::unimplemented(
            "a synthetic remote serves Range and Watch",
        ))
    }

    async fn txn(&self, _: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        Err(Status::unimplemented(
            "a synthetic remote serves Range and Watch",
        ))
    }

    async fn compact(
        &self,
        _: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        Err(Status::unimplemented(
            "a synthetic remote serves Range and Watch",
        ))
    }
}

#[tonic::async_trait]
impl PbWatchService for Service {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(serve_watch(self.store.clone(), req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watch stream with one watcher (the mirror opens one per stream).
async fn serve_watch(
    store: Arc<Store>,
    mut requests: Streaming<PbWatchRequest>,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
) {
    let respond = |revision: i64, watch_id: i64| PbWatchResponse {
        header: convert::header(store.header(revision)),
        watch_id,
        ..Default::default()
    };
    let create = loop {
        match requests.message().await {
            Ok(Some(PbWatchRequest {
                request_union: Some(PbWatchRequestUnion::CreateRequest(c)),
            })) => break c,
            Ok(Some(_)) => continue,
            _ => return,
        }
    };
    let mut woken = store.revision.subscribe();
    let current = *woken.borrow_and_update();
    if !store.allowed(&create.key, &create.range_end) {
        let _ = tx.send(Err(refused())).await;
        return;
    }
    let range = KeyRange::new(Bytes::from(create.key), Bytes::from(create.range_end));
    let mut next = if create.start_revision > 0 {
        create.start_revision
    } else {
        current + 1
    };
    let created = PbWatchResponse {
        created: true,
        ..respond(current, 0)
    };
    if tx.send(Ok(created)).await.is_err() {
        return;
    }
    let mut progress_owed = false;
    loop {
        // Everything up to the current revision, one revision per message.
        let (events, upto, compacted) = {
            let mvcc = store.mvcc.lock().unwrap_or_else(|e| e.into_inner());
            let upto = mvcc.revision();
            (
                mvcc.events(&range, next, upto, false),
                upto,
                mvcc.compacted(),
            )
        };
        let events = match events {
            Ok(events) => events,
            Err(_) => {
                let cancel = PbWatchResponse {
                    canceled: true,
                    compact_revision: compacted,
                    cancel_reason: "mvcc: required revision has been compacted".into(),
                    ..respond(upto, 0)
                };
                let _ = tx.send(Ok(cancel)).await;
                return;
            }
        };
        let mut i = 0;
        while i < events.len() {
            let rev = events[i].kv.mod_revision;
            let end = events[i..]
                .iter()
                .position(|e| e.kv.mod_revision != rev)
                .map_or(events.len(), |k| i + k);
            let message = PbWatchResponse {
                events: events[i..end].iter().cloned().map(convert::event).collect(),
                ..respond(rev, 0)
            };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
            i = end;
        }
        next = upto + 1;
        if progress_owed {
            progress_owed = false;
            if tx.send(Ok(respond(upto, -1))).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = woken.changed() => if changed.is_err() { return },
            request = requests.message() => match request {
                Ok(Some(PbWatchRequest {
                    request_union: Some(PbWatchRequestUnion::ProgressRequest(_)),
                })) => progress_owed = true,
                Ok(Some(_)) => {}
                _ => return,
            },
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::{GetOptions, Txn, TxnOp};
    use shape::Shape;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use testkit::localcluster::{Cluster, Flavor, Spec};

    const SHAPE: Shape = Shape {
        nodes: 4,
        endpoints: 30,
        services: 2,
    };

    async fn contents(
        client: &mut etcd_client::Client,
        prefix: &str,
    ) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let r = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect()
    }

    /// The real mirror of a real member lists, watches and follows synthetic remotes: after
    /// the initial mirror and after churn, the local copy equals each remote's contents.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_real_mirror_follows_synthetic_remotes() {
        let server = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(|d| d.parent())
            .unwrap()
            .join("mesh-apiserver");
        assert!(
            server.is_file(),
            "{} (cargo build --bins)",
            server.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        let mut spec = Spec::with_members(1);
        spec.extra_args = [
            "--cluster-name",
            "local",
            "--cluster-id",
            "1",
            "--manifests-dir",
        ]
        .map(String::from)
        .to_vec();
        spec.extra_args.push(manifests.display().to_string());
        let cluster = Cluster::start(Flavor::Raftmesh(server), spec)
            .await
            .unwrap();
        let mut client = cluster.client().await.unwrap();
        let mut models: Vec<shape::Remote> =
            (0..3).map(|r| shape::Remote::new(r, SHAPE, 7)).collect();
        let remotes = Remotes::start(&models, "local", dir.path()).await.unwrap();
        let ops: Vec<TxnOp> = remotes
            .served
            .iter()
            .map(|s| {
                TxnOp::put(
                    format!("mesh/config/remotes/{}", s.config.cluster),
                    prost::Message::encode_to_vec(&s.config),
                    None,
                )
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await.unwrap();
        let same = |client: &mut etcd_client::Client, remotes: &Remotes| {
            let mut client = client.clone();
            let stores = remotes.stores();
            async move {
                for store in stores {
                    let prefix = store.prefix();
                    let want: BTreeMap<Vec<u8>, Vec<u8>> = {
                        let mvcc = store.mvcc.lock().unwrap();
                        let req = kvstore::request::RangeRequest {
                            key: Bytes::from(prefix.clone()),
                            range_end: Bytes::from(mesh_api::keys::prefix_end(&prefix)),
                            ..Default::default()
                        };
                        mvcc.range(&req)
                            .unwrap()
                            .kvs
                            .into_iter()
                            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
                            .collect()
                    };
                    if contents(&mut client, &prefix).await != want {
                        return false;
                    }
                }
                true
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !same(&mut client, &remotes).await {
            assert!(
                Instant::now() < deadline,
                "the initial mirror never matched"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listed = contents(&mut client, "mesh/v1/").await.len();
        assert_eq!(
            listed - contents(&mut client, "mesh/v1/local/").await.len(),
            3 * SHAPE.keys()
        );
        // Churn on every remote, probe flips included, then the copies match again.
        for i in 0..300 {
            let r = i % 3;
            let ops = if i % 10 == 0 {
                vec![models[r].toggle_probe().0]
            } else {
                models[r].replace_pod()
            };
            remotes.served[r].store.apply(ops).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !same(&mut client, &remotes).await {
            assert!(
                Instant::now() < deadline,
                "the mirror never caught up with the churn"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Nothing rejected: the status of each remote says connected with no error.
        let statuses = client
            .get(
                "mesh/status/remotes/",
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        assert_eq!(statuses.kvs().len(), 3);
        for kv in statuses.kvs() {
            let s = mesh_api::remote::RemoteStatusRecord::decode_checked(kv.value()).unwrap();
            assert!(s.connected && s.error.is_empty(), "{s:?}");
            assert_eq!(s.keys as usize, SHAPE.keys(), "{s:?}");
        }
    }

    /// A watch from a compacted revision is cancelled with the compacted revision, as a
    /// member cancels it, and a key outside the remote's prefix is refused.
    #[tokio::test]
    async fn a_compacted_start_is_cancelled_and_other_prefixes_are_refused() {
        let store = Store::new("r000".into(), 2);
        for i in 0..5 {
            store
                .apply(vec![Op::Put(format!("mesh/v1/r000/x{i}"), vec![1])])
                .unwrap();
        }
        store.mvcc.lock().unwrap().compact(3).unwrap();
        assert!(store.allowed(
            b"mesh/v1/r000/",
            &mesh_api::keys::prefix_end("mesh/v1/r000/")
        ));
        assert!(store.allowed(b"mesh/v1/r000/cluster", b""));
        assert!(!store.allowed(b"mesh/v1/", &mesh_api::keys::prefix_end("mesh/v1/")));
        assert!(!store.allowed(b"mesh/v1/r001/cluster", b""));
        let mvcc = store.mvcc.lock().unwrap();
        let range = KeyRange::new(
            Bytes::from("mesh/v1/r000/"),
            Bytes::from(mesh_api::keys::prefix_end("mesh/v1/r000/")),
        );
        assert!(mvcc.events(&range, 2, 5, false).is_err());
        assert_eq!(mvcc.events(&range, 4, 5, false).unwrap().len(), 2);
    }
}
