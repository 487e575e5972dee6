//! Client-visible behaviour through the `etcd-client` crate against a 3-member cluster:
//! the Go `concurrency.Mutex` recipe gives mutual exclusion across members, and bad requests get
//! etcd's exact gRPC code and message and change nothing.
//!
//! Runs against etcd with `RAFTMESH_TEST_SERVER=etcd`.

#[path = "support/util.rs"]
mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use testkit::localcluster::{Cluster, Spec};
use tokio::sync::Barrier;
use tokio::time::Instant;
use util::{connect, connect_stream, current_revision, flavor, grpc_status};

/// Lock acquisitions per contender.
const ROUNDS: usize = 50;
/// Session lease TTL: short enough that a broken keep-alive would let the lease expire (and the
/// other contender in) during the test.
const SESSION_TTL: i64 = 10;
/// Bound on the whole contention run.
const MUTEX_PATIENCE: Duration = Duration::from_secs(120);

/// A `concurrency.Session`: a lease kept alive in the background until dropped.
struct Session {
    lease: i64,
    keep_alive: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn new(url: &str) -> Result<Session> {
        let mut client = connect_stream(url).await?;
        let lease = client.lease_grant(SESSION_TTL, None).await?.id();
        let (mut keeper, mut replies) = client.lease_keep_alive(lease).await?;
        let keep_alive = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs((SESSION_TTL / 3) as u64));
            loop {
                tick.tick().await;
                keeper.keep_alive().await.expect("sending keep-alive");
                let reply = replies
                    .message()
                    .await
                    .expect("keep-alive reply")
                    .expect("keep-alive stream ended");
                assert!(reply.ttl() > 0, "session lease {lease:x} expired");
            }
        });
        Ok(Session { lease, keep_alive })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// Go's `concurrency.Mutex`, request for request.
struct Mutex {
    client: Client,
    /// `<prefix>/`: every contender's key lives under it.
    prefix: String,
    /// `<prefix>/<lease in hex>`: this contender's key.
    my_key: String,
    lease: i64,
    /// Create revision of `my_key` while held: the position in the queue.
    my_rev: i64,
    /// How many times `lock` had to wait for an earlier contender.
    waits: usize,
}

impl Mutex {
    fn new(client: Client, session: &Session, prefix: &str) -> Mutex {
        let prefix = format!("{prefix}/");
        Mutex {
            client,
            my_key: format!("{prefix}{:x}", session.lease),
            prefix,
            lease: session.lease,
            my_rev: 0,
            waits: 0,
        }
    }

    /// `WithFirstCreate`: the owner is the key with the lowest create revision.
    fn first_create(&self) -> TxnOp {
        TxnOp::get(
            self.prefix.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1),
            ),
        )
    }

    async fn lock(&mut self) -> Result<()> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.my_key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    self.my_key.as_str(),
                    "",
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                self.first_create(),
            ])
            .or_else([TxnOp::get(self.my_key.as_str(), None), self.first_create()]);
        let resp = self.client.txn(txn).await?;
        let ops = resp.op_responses();
        ensure!(
            ops.len() == 2,
            "txn returned {} responses, not 2",
            ops.len()
        );
        self.my_rev = resp.header().context("txn without header")?.revision();
        if !resp.succeeded() {
            let TxnOpResponse::Get(mine) = &ops[0] else {
                bail!("else branch's first response is not a Range: {:?}", ops[0]);
            };
            self.my_rev = mine
                .kvs()
                .first()
                .context("own key missing in the else branch")?
                .create_revision();
        }
        let TxnOpResponse::Get(owner) = &ops[1] else {
            bail!("second response is not a Range: {:?}", ops[1]);
        };
        match owner.kvs().first() {
            None => return Ok(()),
            Some(kv) if kv.create_revision() == self.my_rev => return Ok(()),
            Some(_) => {}
        }
        self.waits += 1;
        self.wait_deletes().await?;
        // Go re-checks that its key still exists (the session may have expired meanwhile).
        let mine = self.client.get(self.my_key.as_str(), None).await?;
        ensure!(
            mine.kvs().first().map(|kv| kv.create_revision()) == Some(self.my_rev),
            "own lock key {} vanished while waiting",
            self.my_key
        );
        Ok(())
    }

    /// `waitDeletes`: until no key created before ours is left, wait for the newest of them
    /// (sorted by CREATE descending, `max_create_revision = my_rev - 1`, limit 1) to be deleted.
    async fn wait_deletes(&mut self) -> Result<()> {
        loop {
            let options = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_max_create_revision(self.my_rev - 1)
                .with_limit(1);
            let resp = self.client.get(self.prefix.as_str(), Some(options)).await?;
            let Some(last) = resp.kvs().first() else {
                return Ok(());
            };
            let revision = resp.header().context("Range without header")?.revision();
            self.wait_delete(last.key().to_vec(), revision).await?;
        }
    }

    /// `waitDelete`: watch one key from `revision` until a DELETE event.
    async fn wait_delete(&mut self, key: Vec<u8>, revision: i64) -> Result<()> {
        let options = WatchOptions::new().with_start_revision(revision);
        let mut stream = self.client.watch(key, Some(options)).await?;
        while let Some(resp) = stream.message().await? {
            ensure!(
                !resp.canceled(),
                "lock watch canceled: {}",
                resp.cancel_reason()
            );
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
        bail!("lock watch stream ended")
    }

    async fn unlock(&mut self) -> Result<()> {
        self.client.delete(self.my_key.as_str(), None).await?;
        Ok(())
    }
}

/// The Go `concurrency.Mutex` recipe gives mutual exclusion: two contenders on different members
/// each take the lock `ROUNDS` times and increment a counter with an unguarded read-modify-write
/// (Range then Put, no compare); no increment is lost and the holders never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_recipe_gives_mutual_exclusion() {
    let cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .expect("cluster starts");
    let mut setup = connect(&cluster.client_url(0)).await.unwrap();
    setup.put("counter", "0", None).await.unwrap();

    let holders = Arc::new(AtomicUsize::new(0));
    let max_holders = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(2));
    let deadline = Instant::now() + MUTEX_PATIENCE;
    let contenders: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|member| {
            let url = cluster.client_url(member);
            let (holders, max_holders, start) =
                (holders.clone(), max_holders.clone(), start.clone());
            tokio::spawn(async move {
                let session = Session::new(&url).await.expect("session");
                let mut mutex = Mutex::new(
                    connect_stream(&url).await.unwrap(),
                    &session,
                    "/locks/counter",
                );
                let mut kv = connect(&url).await.unwrap();
                start.wait().await;
                for _ in 0..ROUNDS {
                    tokio::time::timeout_at(deadline, mutex.lock())
                        .await
                        .expect("lock within the deadline")
                        .expect("lock");
                    let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                    max_holders.fetch_max(now, Ordering::SeqCst);

                    let resp = kv.get("counter", None).await.expect("read counter");
                    let value: u64 = resp.kvs()[0].value_str().unwrap().parse().unwrap();
                    // Widen the window an overlapping holder would need to lose an update.
                    tokio::task::yield_now().await;
                    kv.put("counter", (value + 1).to_string(), None)
                        .await
                        .expect("write counter");

                    holders.fetch_sub(1, Ordering::SeqCst);
                    mutex.unlock().await.expect("unlock");
                }
                mutex.waits
            })
        })
        .collect();
    let mut waits = 0;
    for contender in contenders {
        waits += contender.await.expect("contender panicked");
    }

    assert_eq!(max_holders.load(Ordering::SeqCst), 1, "two holders at once");
    let resp = setup.get("counter", None).await.unwrap();
    assert_eq!(
        resp.kvs()[0].value_str().unwrap(),
        (2 * ROUNDS).to_string(),
        "increments were lost"
    );
    assert!(
        waits > 0,
        "the contenders never waited for each other, so the waiting path was not exercised"
    );
    let left = setup
        .get("/locks/counter/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(left.kvs().len(), 0, "lock keys left behind");
}

/// One bad request and the error etcd gives it.
struct BadRequest {
    what: &'static str,
    code: &'static str,
    message: &'static str,
}

/// Sends bad request number `case` (the order of [`BAD_REQUESTS`]) and returns its error.
async fn send_bad(client: &mut Client, case: usize) -> Result<etcd_client::Error> {
    let future = current_revision(client).await? + 1_000_000;
    let result = match case {
        0 => client.put("", "v", None).await.map(drop),
        1 => {
            let value = vec![b'x'; 1_600 * 1024];
            client.put("bad/large", value, None).await.map(drop)
        }
        2 => {
            let ops: Vec<TxnOp> = (0..129)
                .map(|i| TxnOp::put(format!("bad/txn-{i:03}"), "v", None))
                .collect();
            client.txn(Txn::new().and_then(ops)).await.map(drop)
        }
        3 => {
            let ops = [
                TxnOp::put("bad/dup", "a", None),
                TxnOp::put("bad/dup", "b", None),
            ];
            client.txn(Txn::new().and_then(ops)).await.map(drop)
        }
        4 => {
            let options = PutOptions::new().with_lease(0x7eed_dead_beef);
            client.put("bad/lease", "v", Some(options)).await.map(drop)
        }
        5 => {
            let options = GetOptions::new().with_revision(future);
            client.get("bad/future", Some(options)).await.map(drop)
        }
        6 => client.compact(future, None).await.map(drop),
        7 => client.lease_revoke(0x7eed_dead_beef).await.map(drop),
        // etcd's MaxLeaseTTL is 9,000,000,000 s.
        8 => client.lease_grant(9_000_000_001, None).await.map(drop),
        9 => {
            // 128 txns of 128 txns of 6 puts (98,304 puts, under the size limit): nested txns
            // share the op budget, so etcd refuses it before looking at a single key.
            let leaf: Vec<TxnOp> = ["a", "b", "c", "d", "e", "f"]
                .iter()
                .map(|k| TxnOp::put(format!("bad/{k}"), "", None))
                .collect();
            let middle: Vec<TxnOp> = (0..128)
                .map(|_| TxnOp::txn(Txn::new().and_then(leaf.clone())))
                .collect();
            let top: Vec<TxnOp> = (0..128)
                .map(|_| TxnOp::txn(Txn::new().and_then(middle.clone())))
                .collect();
            client.txn(Txn::new().and_then(top)).await.map(drop)
        }
        _ => unreachable!("no bad request {case}"),
    };
    match result {
        Ok(()) => bail!("request was accepted"),
        Err(e) => Ok(e),
    }
}

const BAD_REQUESTS: [BadRequest; 10] = [
    BadRequest {
        what: "put with an empty key",
        code: "InvalidArgument",
        message: "etcdserver: key is not provided",
    },
    BadRequest {
        what: "put of a 1.6 MiB value",
        code: "InvalidArgument",
        message: "etcdserver: request is too large",
    },
    BadRequest {
        what: "txn with 129 puts",
        code: "InvalidArgument",
        message: "etcdserver: too many operations in txn request",
    },
    BadRequest {
        what: "txn putting one key twice",
        code: "InvalidArgument",
        message: "etcdserver: duplicate key given in txn request",
    },
    BadRequest {
        what: "put with an unknown lease",
        code: "NotFound",
        message: "etcdserver: requested lease not found",
    },
    BadRequest {
        what: "range at a future revision",
        code: "OutOfRange",
        message: "etcdserver: mvcc: required revision is a future revision",
    },
    BadRequest {
        what: "compact at a future revision",
        code: "OutOfRange",
        message: "etcdserver: mvcc: required revision is a future revision",
    },
    BadRequest {
        what: "revoke of an unknown lease",
        code: "NotFound",
        message: "etcdserver: requested lease not found",
    },
    BadRequest {
        what: "lease grant with a TTL over 9e9 s",
        code: "OutOfRange",
        message: "etcdserver: too large lease TTL",
    },
    BadRequest {
        what: "txn nesting 128 txns of 128 txns of 6 puts",
        code: "InvalidArgument",
        message: "etcdserver: too many operations in txn request",
    },
];

/// Each bad request, sent to the leader and to a follower (which must pass the leader's error
/// through unchanged), gets etcd's exact code and message, and changes nothing: the revision is
/// the same before and after, no key under `bad/` exists and no lease was granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcd_errors_and_change_nothing() {
    let cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .expect("cluster starts");
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let mut observer = connect(&cluster.client_url(leader)).await.unwrap();
    observer.put("unrelated", "v", None).await.unwrap();

    let mut failures = Vec::new();
    for member in [leader, follower] {
        let mut client = connect(&cluster.client_url(member)).await.unwrap();
        for (case, bad) in BAD_REQUESTS.iter().enumerate() {
            let before = current_revision(&mut observer).await.unwrap();
            let err = send_bad(&mut client, case)
                .await
                .unwrap_or_else(|e| panic!("{} via member {member}: {e:#}", bad.what));
            let got = grpc_status(&err);
            let want = Some((bad.code.to_owned(), bad.message.to_owned()));
            if got != want {
                failures.push(format!(
                    "{} via member {member}: got {got:?} ({err}), want {want:?}",
                    bad.what
                ));
            }
            let after = current_revision(&mut observer).await.unwrap();
            assert_eq!(after, before, "{} changed the revision", bad.what);
            let left = observer
                .get("bad/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(left.kvs().len(), 0, "{} wrote a key", bad.what);
            let leases = observer.leases().await.unwrap();
            assert_eq!(leases.leases().len(), 0, "{} granted a lease", bad.what);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Writes sent concurrently to a follower (which forwards them to the leader, in batches in
/// raftmesh) each get their own answer: every accepted put returns the revision its key was
/// written at, revisions are distinct and gapless, and the puts refused inside the same burst
/// (an unknown lease) get etcd's error and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer() {
    const WRITERS: usize = 64;
    const ROUNDS: usize = 5;
    const UNKNOWN_LEASE: i64 = 0x7fff_0000;
    let cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .expect("cluster starts");
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let client = connect(&cluster.client_url(follower)).await.unwrap();
    let mut observer = connect(&cluster.client_url(leader)).await.unwrap();
    let start = current_revision(&mut observer).await.unwrap();

    let mut accepted = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let mut client = client.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let key = format!("fwd/{round}/{i:02}");
                    let options = (i % 2 == 1).then(|| PutOptions::new().with_lease(UNKNOWN_LEASE));
                    barrier.wait().await;
                    let result = client.put(key.clone(), format!("v{i}"), options).await;
                    (key, result)
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let (key, result) = task.await.unwrap();
            if i % 2 == 1 {
                let err = result.expect_err("a put with an unknown lease is refused");
                assert_eq!(
                    grpc_status(&err),
                    Some((
                        "NotFound".to_owned(),
                        "etcdserver: requested lease not found".to_owned()
                    )),
                    "{key}: {err}"
                );
            } else {
                let revision = result.unwrap().header().unwrap().revision();
                accepted.push((key, format!("v{i}"), revision));
            }
        }
    }

    let mut revisions: Vec<i64> = accepted.iter().map(|(_, _, r)| *r).collect();
    revisions.sort_unstable();
    let expected: Vec<i64> = (start + 1..=start + accepted.len() as i64).collect();
    assert_eq!(
        revisions, expected,
        "accepted puts get distinct, gapless revisions"
    );
    for (key, value, revision) in &accepted {
        let got = observer.get(key.as_str(), None).await.unwrap();
        let kv = &got.kvs()[0];
        assert_eq!(kv.value_str().unwrap(), value, "{key}");
        assert_eq!(
            kv.mod_revision(),
            *revision,
            "{key} was written at the revision returned"
        );
    }
    let all = observer
        .get(
            "fwd/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(
        all.count() as usize,
        accepted.len(),
        "refused puts wrote nothing"
    );
}
