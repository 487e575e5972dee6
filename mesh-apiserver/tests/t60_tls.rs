//! Acceptance (issue 4): mutual TLS on every port and authorization by certificate role.
//!
//! A 3-member cluster `apps` is started with certificates made by the `certs` crate (as
//! `meshctl pki init` makes them). `etcdctl` with an admin, agent or remote certificate does
//! what the trust model allows and gets etcd's `PermissionDenied` otherwise; handshakes without
//! an acceptable certificate are refused, on the client and on the peer port; certificates and
//! CA bundles are reloaded from disk without a restart while an open watch keeps delivering;
//! garbage and plaintext on a TLS port harm nobody.
//!
//! raftmesh only: etcd has no certificate roles (the `etcd` nextest profile leaves this file
//! out).

#[path = "support/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::pki::{CA_DAYS, CertificateAuthority, LEAF_DAYS, LeafSpec, Validity, write_pem};
use certs::{Identity, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use testkit::localcluster::{Cluster, Spec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use util::{flavor, metric, raftmesh_only, scrape_metrics};

/// Bound on one etcdctl run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on waiting for an eventual condition (a reload, a watch event).
const PATIENCE: Duration = Duration::from_secs(15);
/// etcd's refusal.
const DENIED: &str = "etcdserver: permission denied";

/// The certificates of one test: cluster `apps` (CA, members n1–n3, admin, agents node-1 and
/// node-2, remote infra) and the certificates the server must refuse.
struct Pki {
    _tmp: TempDir,
    dir: PathBuf,
    apps: CertificateAuthority,
}

impl Pki {
    fn new() -> Pki {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let apps =
            CertificateAuthority::generate("apps", Validity::days_from_now(CA_DAYS)).unwrap();
        write_pem(&dir.join("ca.crt"), apps.cert_pem()).unwrap();
        let pki = Pki {
            dir,
            apps,
            _tmp: tmp,
        };
        for member in ["n1", "n2", "n3"] {
            pki.issue(
                &pki.apps,
                Role::Apiserver,
                member,
                &format!("apiserver-{member}"),
            );
        }
        pki.issue(&pki.apps, Role::Admin, "admin", "admin-admin");
        pki.issue(&pki.apps, Role::Agent, "node-1", "agent-node-1");
        pki.issue(&pki.apps, Role::Agent, "node-2", "agent-node-2");
        pki.issue(&pki.apps, Role::Remote, "infra", "remote-infra");
        pki
    }

    /// Issues `<file>.crt`/`.key` from `ca`.
    fn issue(&self, ca: &CertificateAuthority, role: Role, name: &str, file: &str) {
        self.issue_valid(ca, role, name, file, Validity::days_from_now(LEAF_DAYS));
    }

    fn issue_valid(
        &self,
        ca: &CertificateAuthority,
        role: Role,
        name: &str,
        file: &str,
        validity: Validity,
    ) {
        let issued = ca
            .issue(&LeafSpec {
                identity: Identity::new(ca.cluster(), role, name).unwrap(),
                sans: vec!["localhost".into(), "127.0.0.1".into()],
                validity,
            })
            .unwrap();
        self.write(file, &issued.cert_pem, &issued.key_pem);
    }

    fn write(&self, file: &str, cert: &str, key: &str) {
        write_pem(&self.dir.join(format!("{file}.crt")), cert).unwrap();
        write_pem(&self.dir.join(format!("{file}.key")), key).unwrap();
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

async fn tls_cluster(pki: &Pki) -> Cluster {
    let mut spec = Spec::with_members(3);
    spec.tls = Some(pki.dir.clone());
    spec.metrics = true;
    Cluster::start(flavor(), spec)
        .await
        .expect("TLS cluster starts")
}

/// Runs etcdctl; `Ok(stdout)` on success, `Err(stdout + stderr)` on failure.
async fn run(mut command: Command, args: &[&str]) -> Result<String, String> {
    command
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .stdin(Stdio::null());
    let output = tokio::time::timeout(
        COMMAND_TIMEOUT,
        tokio::process::Command::from(command).output(),
    )
    .await
    .expect("etcdctl finishes")
    .expect("etcdctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(stdout + &String::from_utf8_lossy(&output.stderr))
    }
}

/// Runs etcdctl as `cert` and expects success.
async fn ok(c: &Cluster, cert: &str, args: &[&str]) -> String {
    run(c.etcdctl_as(cert), args)
        .await
        .unwrap_or_else(|e| panic!("etcdctl {args:?} as {cert}: {e}"))
}

/// Runs etcdctl as `cert` and expects etcd's PermissionDenied.
async fn denied(c: &Cluster, cert: &str, args: &[&str]) {
    match run(c.etcdctl_as(cert), args).await {
        Ok(out) => panic!("etcdctl {args:?} as {cert} succeeded: {out}"),
        Err(e) => assert!(e.contains(DENIED), "etcdctl {args:?} as {cert}: {e}"),
    }
}

/// Why every test here is raftmesh's alone ([`raftmesh_only`]).
const ROLES_ARE_OURS: &str = "certificate roles are raftmesh's; nothing to check against etcd";

/// Acceptance 1: admin may do everything; an agent reads `mesh/v1/` and writes only its own
/// node key; a remote reads `mesh/v1/apps/` only. Refusals change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_what_the_trust_model_gives_it() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let c = tls_cluster(&pki).await;
    let admin = "admin-admin";
    ok(
        &c,
        admin,
        &["put", "mesh/v1/apps/services/default/web", "svc"],
    )
    .await;
    ok(
        &c,
        admin,
        &["put", "mesh/v1/infra/services/default/db", "mirrored"],
    )
    .await;
    ok(&c, admin, &["put", "mesh/status/remotes/infra", "up"]).await;
    ok(&c, admin, &["put", "mesh/config/remotes/infra", "cfg"]).await;
    assert_eq!(
        ok(
            &c,
            admin,
            &["get", "mesh/config/remotes/infra", "--print-value-only"]
        )
        .await,
        "cfg\n"
    );
    // The leader's mirror reports a connection record it cannot use in the status (a write
    // of its own, awaited here so it cannot land among the refused requests below).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = ok(
            &c,
            admin,
            &["get", "mesh/status/remotes/infra", "--print-value-only"],
        )
        .await;
        if status.contains("bad connection record") {
            break;
        }
        assert!(Instant::now() < deadline, "status still {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok(&c, admin, &["member", "list"]).await.contains("n1"));
    ok(&c, admin, &["compaction", "1"]).await;
    let lease = ok(&c, admin, &["lease", "grant", "60"]).await;
    assert!(lease.contains("granted with TTL"), "{lease}");

    let agent = "agent-node-1";
    let mesh = ok(&c, agent, &["get", "mesh/v1/", "--prefix", "--keys-only"]).await;
    assert!(
        mesh.contains("mesh/v1/apps/services/default/web")
            && mesh.contains("mesh/v1/infra/services/default/db"),
        "{mesh}"
    );
    ok(&c, agent, &["get", "mesh/status/", "--prefix"]).await;
    ok(
        &c,
        agent,
        &["put", "mesh/v1/apps/nodekeys/node-1", "wg-key"],
    )
    .await;
    ok(&c, agent, &["member", "list"]).await;
    let before = revision(&c).await;
    denied(
        &c,
        agent,
        &["put", "mesh/v1/apps/nodekeys/node-2", "stolen"],
    )
    .await;
    denied(&c, agent, &["del", "mesh/v1/apps/services/default/web"]).await;
    denied(&c, agent, &["put", "mesh/config/remotes/evil", "x"]).await;
    denied(&c, agent, &["get", "mesh/config/remotes/infra"]).await;
    denied(&c, agent, &["get", "", "--from-key"]).await;
    denied(&c, agent, &["compaction", "2"]).await;

    let remote = "remote-infra";
    let export = ok(
        &c,
        remote,
        &["get", "mesh/v1/apps/", "--prefix", "--keys-only"],
    )
    .await;
    assert!(
        export.contains("mesh/v1/apps/services/default/web")
            && export.contains("mesh/v1/apps/nodekeys/node-1"),
        "{export}"
    );
    denied(&c, remote, &["get", "mesh/v1/", "--prefix"]).await;
    denied(&c, remote, &["get", "mesh/v1/infra/services/default/db"]).await;
    denied(&c, remote, &["get", "mesh/status/", "--prefix"]).await;
    denied(
        &c,
        remote,
        &["put", "mesh/v1/apps/services/default/web", "x"],
    )
    .await;
    denied(&c, remote, &["lease", "grant", "60"]).await;
    denied(&c, remote, &["member", "list"]).await;

    assert_eq!(
        revision(&c).await,
        before,
        "refused requests changed the store"
    );
    // 12 refusals so far (6 by the agent, 6 by the remote), each counted once by the member
    // that made it.
    let mut refused = 0.0;
    for i in 0..3 {
        let text = scrape_metrics(&c, i).await.unwrap();
        refused += metric(&text, "raftmesh_permission_denied_total");
    }
    assert_eq!(refused, 12.0, "refusals counted");
    assert_eq!(
        ok(&c, admin, &["get", "mesh/v1/apps/nodekeys/node-2"]).await,
        ""
    );
    assert_eq!(
        ok(
            &c,
            admin,
            &[
                "get",
                "mesh/v1/apps/services/default/web",
                "--print-value-only"
            ]
        )
        .await,
        "svc\n"
    );

    // Revoking a lease deletes its keys: an agent may revoke only a lease holding nothing but
    // its own key.
    let admin_lease = lease_id(&ok(&c, admin, &["lease", "grant", "600"]).await);
    ok(
        &c,
        admin,
        &["put", "--lease", &admin_lease, "mesh/config/leased", "x"],
    )
    .await;
    denied(&c, agent, &["lease", "revoke", &admin_lease]).await;
    let own_lease = lease_id(&ok(&c, agent, &["lease", "grant", "600"]).await);
    ok(
        &c,
        agent,
        &[
            "put",
            "--lease",
            &own_lease,
            "mesh/v1/apps/nodekeys/node-1",
            "leased",
        ],
    )
    .await;
    ok(&c, agent, &["lease", "revoke", &own_lease]).await;
    assert_eq!(
        ok(&c, admin, &["get", "mesh/v1/apps/nodekeys/node-1"]).await,
        ""
    );
    assert_eq!(
        ok(
            &c,
            admin,
            &["get", "mesh/config/leased", "--print-value-only"]
        )
        .await,
        "x\n"
    );
}

/// Defect 7 of issue 11: an agent keeps alive, revokes and attaches keys only to the leases it
/// granted; another agent's (or an admin's) lease is refused and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_uses_only_the_leases_it_granted() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let c = tls_cluster(&pki).await;
    let (admin, a, b) = ("admin-admin", "agent-node-1", "agent-node-2");
    let a_lease = lease_id(&ok(&c, a, &["lease", "grant", "600"]).await);
    let a_empty = lease_id(&ok(&c, a, &["lease", "grant", "600"]).await);
    let admin_lease = lease_id(&ok(&c, admin, &["lease", "grant", "600"]).await);
    ok(
        &c,
        a,
        &[
            "put",
            "--lease",
            &a_lease,
            "mesh/v1/apps/nodekeys/node-1",
            "a",
        ],
    )
    .await;
    let before = revision(&c).await;

    // Node 2 may not keep node 1's lease alive, revoke it (empty or not), or hang its own key
    // on it or on an admin's lease (alone or inside a txn).
    denied(&c, b, &["lease", "keep-alive", "--once", &a_lease]).await;
    denied(&c, b, &["lease", "revoke", &a_lease]).await;
    denied(&c, b, &["lease", "revoke", &a_empty]).await;
    for lease in [&a_lease, &a_empty, &admin_lease] {
        denied(
            &c,
            b,
            &["put", "--lease", lease, "mesh/v1/apps/nodekeys/node-2", "b"],
        )
        .await;
    }
    let txn = format!("\n\nput --lease={a_empty} mesh/v1/apps/nodekeys/node-2 b\n\n");
    let out = txn_as(&c, b, &txn).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(DENIED),
        "txn attaching to another agent's lease: {out:?}"
    );

    // Nothing changed: no revision, node 1's key still on its lease, both leases alive.
    assert_eq!(revision(&c).await, before);
    let leases = ok(&c, admin, &["lease", "list"]).await;
    for lease in [&a_lease, &a_empty, &admin_lease] {
        assert!(leases.contains(lease.as_str()), "{lease} gone: {leases}");
    }
    let attached = ok(&c, admin, &["lease", "timetolive", &a_lease, "--keys"]).await;
    assert!(
        attached.contains("mesh/v1/apps/nodekeys/node-1"),
        "{attached}"
    );

    // Its own leases still work for node 1, and node 2 with a lease of its own.
    ok(&c, a, &["lease", "keep-alive", "--once", &a_lease]).await;
    ok(&c, a, &["lease", "revoke", &a_empty]).await;
    let b_lease = lease_id(&ok(&c, b, &["lease", "grant", "600"]).await);
    ok(
        &c,
        b,
        &[
            "put",
            "--lease",
            &b_lease,
            "mesh/v1/apps/nodekeys/node-2",
            "b",
        ],
    )
    .await;
    ok(&c, b, &["lease", "keep-alive", "--once", &b_lease]).await;
}

/// Finding 6 of the trust review: one agent certificate cannot take every lease, nor open
/// watch streams or watchers without end; other agents and admins are not affected, and
/// what is given back can be taken again. Leases through etcdctl, watches through clientv3's
/// Rust twin (etcd-client), each its own pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_identity_holds_a_bounded_number_of_leases_and_watches() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let mut spec = Spec::with_members(3);
    spec.tls = Some(pki.dir.clone());
    spec.extra_args = [
        "--max-leases-per-identity",
        "3",
        "--max-watch-streams-per-identity",
        "2",
        "--max-watchers-per-identity",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start(flavor(), spec)
        .await
        .expect("TLS cluster starts");
    let (admin, a, b) = ("admin-admin", "agent-node-1", "agent-node-2");

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(lease_id(&ok(&c, a, &["lease", "grant", "60"]).await));
    }
    match run(c.etcdctl_as(a), &["lease", "grant", "60"]).await {
        Ok(out) => panic!("a fourth lease was granted: {out}"),
        Err(e) => assert!(e.contains("etcdserver: too many leases"), "{e}"),
    }
    ok(&c, b, &["lease", "grant", "60"]).await;
    ok(&c, admin, &["lease", "grant", "60"]).await;
    ok(&c, a, &["lease", "revoke", &held[0]]).await;
    ok(&c, a, &["lease", "grant", "60"]).await;

    // Watch streams and watchers are counted on the member that serves them.
    let mut agent = c.client_as(0, a).await.unwrap();
    let prefix = || Some(etcd_client::WatchOptions::new().with_prefix());
    let mut s1 = agent
        .watch("mesh/v1/", prefix())
        .await
        .expect("first stream");
    let mut s2 = agent
        .watch("mesh/v1/apps/", prefix())
        .await
        .expect("second stream");
    let first = next_created(&mut s1).await;
    assert!(!first.canceled(), "{first:?}");
    assert!(!next_created(&mut s2).await.canceled());
    let third = agent.watch("mesh/v1/", None).await;
    let (code, message) = third
        .as_ref()
        .err()
        .and_then(util::grpc_status)
        .unwrap_or_else(|| panic!("a third stream: {:?}", third.map(|_| ())));
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "ResourceExhausted",
            "etcdserver: too many watch streams for this identity"
        )
    );
    // Two watchers held; one more on the first stream, then a fourth is canceled at creation.
    s1.watch("mesh/v1/apps/nodes/", None).await.unwrap();
    let third = next_created(&mut s1).await;
    assert!(!third.canceled(), "{third:?}");
    s1.watch("mesh/v1/apps/services/", None).await.unwrap();
    let refused = next_created(&mut s1).await;
    assert!(refused.canceled(), "{refused:?}");
    assert_eq!(
        refused.cancel_reason(),
        "etcdserver: too many watchers for this identity"
    );
    // Another agent still watches; a watcher given back can be taken again.
    let mut other = c.client_as(0, b).await.unwrap();
    let mut theirs = other
        .watch("mesh/v1/", None)
        .await
        .expect("another agent watches");
    assert!(!next_created(&mut theirs).await.canceled());
    s1.cancel(third.watch_id()).await.unwrap();
    s1.watch("mesh/v1/apps/services/", None).await.unwrap();
    let again = next_created(&mut s1).await;
    assert!(!again.canceled(), "{again:?}");
    // A closed stream gives back its watchers and its place.
    drop(s2);
    util::eventually("the closed stream's place is free", PATIENCE, async || {
        let mut s = agent.watch("mesh/v1/", None).await?;
        let m = next_created(&mut s).await;
        anyhow::ensure!(!m.canceled(), "{m:?}");
        Ok(())
    })
    .await;
}

/// Finding 1 of the trust review, an agent's side: a stolen agent certificate cannot grow
/// every member by rewriting its node key with megabyte values, or in a tight loop; other
/// agents keep writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_identity_writes_small_values_at_a_bounded_rate() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let mut spec = Spec::with_members(3);
    spec.tls = Some(pki.dir.clone());
    spec.extra_args = ["--max-writes-per-second-per-identity", "1"]
        .map(String::from)
        .to_vec();
    let c = Cluster::start(flavor(), spec)
        .await
        .expect("TLS cluster starts");
    let (a, b) = ("agent-node-1", "agent-node-2");
    let before = revision(&c).await;
    let mut agent = c.client_as(0, a).await.unwrap();
    let big = agent
        .put("mesh/v1/apps/nodekeys/node-1", vec![b'x'; 1400 << 10], None)
        .await
        .expect_err("a 1.4 MB node key is refused");
    assert_eq!(
        util::grpc_status(&big),
        Some((
            "InvalidArgument".to_owned(),
            "etcdserver: request is too large".to_owned()
        ))
    );
    let just_over = "x".repeat(1025);
    match run(
        c.etcdctl_as(a),
        &["put", "mesh/v1/apps/nodekeys/node-1", &just_over],
    )
    .await
    {
        Ok(out) => panic!("a 1025-byte node key was written: {out}"),
        Err(e) => assert!(e.contains("etcdserver: request is too large"), "{e}"),
    }
    assert_eq!(revision(&c).await, before, "nothing written");
    // One write a second with a burst of ten: a loop is stopped within a few more.
    let mut written = 0;
    let refusal = loop {
        match agent.put("mesh/v1/apps/nodekeys/node-1", "k", None).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 100, "a hundred writes in a loop were taken");
    };
    assert!(
        (10..=13).contains(&written),
        "{written} writes before the refusal"
    );
    assert_eq!(
        util::grpc_status(&refusal),
        Some((
            "ResourceExhausted".to_owned(),
            "etcdserver: too many requests".to_owned()
        ))
    );
    // Another agent is not held back by it.
    ok(&c, b, &["put", "mesh/v1/apps/nodekeys/node-2", "k"]).await;
}

/// The next creation answer on `stream` (events and cancellations skipped).
async fn next_created(stream: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = stream.message().await.unwrap().expect("stream open");
            if m.created() {
                return m;
            }
        }
    })
    .await
    .expect("a creation answer")
}

/// The id in etcdctl's "lease <hex id> granted with TTL(…)".
fn lease_id(granted: &str) -> String {
    granted
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_owned()
}

async fn revision(c: &Cluster) -> i64 {
    let out = ok(c, "admin-admin", &["get", "nothing", "-w", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// Acceptance 3: a Txn that mixes an allowed and a denied op is denied whole; a watch on a
/// denied range is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_with_one_denied_op_and_a_watch_on_a_denied_range_are_refused() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let c = tls_cluster(&pki).await;
    let before = revision(&c).await;
    // Compares, blank line, success ops, blank line, failure ops (etcdctl's txn input).
    let txn =
        "\nput mesh/v1/apps/nodekeys/node-1 mine\nput mesh/v1/apps/nodekeys/node-2 theirs\n\n\n";
    let out = txn_as(&c, "agent-node-1", txn).await;
    assert!(!out.status.success(), "the mixed txn succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(DENIED),
        "{out:?}"
    );
    assert_eq!(
        revision(&c).await,
        before,
        "the denied txn changed the store"
    );
    assert_eq!(
        ok(&c, "admin-admin", &["get", "mesh/v1/apps/nodekeys/node-1"]).await,
        ""
    );

    // A caller is authorized before its txn's keys are checked against each other (that check
    // costs more): a remote's txn putting one key twice is refused as denied, not as a
    // duplicate key (etcd checks the keys first; the order is raftmesh's on purpose).
    let out = txn_as(
        &c,
        "remote-infra",
        "\nput mesh/v1/apps/x a\nput mesh/v1/apps/x b\n\n\n",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(DENIED),
        "{out:?}"
    );

    // The same txn without the denied op is fine.
    let out = txn_as(
        &c,
        "agent-node-1",
        "\nput mesh/v1/apps/nodekeys/node-1 mine\n\n\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");

    for (cert, prefix) in [
        ("agent-node-1", "mesh/config/"),
        ("remote-infra", "mesh/v1/"),
    ] {
        let err = run(c.etcdctl_as(cert), &["watch", prefix, "--prefix"])
            .await
            .expect_err("a watch on a denied range is refused");
        assert!(
            err.contains(&format!(
                "watch was canceled (rpc error: code = PermissionDenied desc = {DENIED})"
            )),
            "{cert}: {err}"
        );
    }
}

/// Runs `etcdctl txn` as `cert` with `input` on stdin (compares, a blank line, success ops, a
/// blank line, failure ops).
async fn txn_as(c: &Cluster, cert: &str, input: &str) -> std::process::Output {
    let mut command = tokio::process::Command::from(c.etcdctl_as(cert));
    command
        .args(["--dial-timeout=2s", "--command-timeout=5s", "txn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("etcdctl txn finishes")
        .unwrap()
}

/// A TLS 1.3 client that presents `cert` (or nothing) and trusts `ca`, without any identity
/// check of its own, so that whatever is refused is refused by the server.
fn raw_client(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Whether the server at `url` accepts a handshake from `config`: in TLS 1.3 the client
/// finishes first, so acceptance is proven by the server's first HTTP/2 frame arriving,
/// refusal by an alert or a closed connection.
async fn accepted(url: &str, config: Arc<rustls::ClientConfig>) -> bool {
    let addr = url.split_once("://").unwrap().1;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    else {
        return false;
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

/// Acceptance 2: no certificate, another CA, expired, no raftmesh SAN: refused at the
/// handshake. The peer port refuses an agent certificate and another cluster's apiserver
/// certificate. Every refusal is counted, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_an_acceptable_certificate_are_refused() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let stranger =
        CertificateAuthority::generate("apps", Validity::days_from_now(CA_DAYS)).unwrap();
    pki.issue(&stranger, Role::Admin, "admin", "stranger-admin");
    let day = Duration::from_secs(86_400);
    let past = Validity {
        not_before: SystemTime::now() - 30 * day,
        not_after: SystemTime::now() - day,
    };
    pki.issue_valid(&pki.apps, Role::Admin, "admin", "expired-admin", past);
    let anonymous = pki
        .apps
        .issue_without_identity(
            "admin",
            &["localhost".into()],
            Validity::days_from_now(LEAF_DAYS),
        )
        .unwrap();
    pki.write("anonymous", &anonymous.cert_pem, &anonymous.key_pem);
    let infra = CertificateAuthority::generate("infra", Validity::days_from_now(CA_DAYS)).unwrap();
    pki.issue(&infra, Role::Apiserver, "n1", "infra-apiserver-n1");

    let c = tls_cluster(&pki).await;
    let ca = pki.path("ca.crt");
    let with = |file: &str| {
        raw_client(
            &ca,
            Some((
                &pki.path(&format!("{file}.crt")),
                &pki.path(&format!("{file}.key")),
            )),
        )
    };
    let client_url = c.client_url(0);
    let peer_url = c.member_config(0).peer_url();

    assert!(
        accepted(&client_url, with("admin-admin")).await,
        "the admin is accepted"
    );
    for (what, config) in [
        ("no certificate", raw_client(&ca, None)),
        ("another CA", with("stranger-admin")),
        ("an expired certificate", with("expired-admin")),
        ("no raftmesh SAN", with("anonymous")),
    ] {
        assert!(
            !accepted(&client_url, config).await,
            "client port accepted {what}"
        );
    }
    assert!(
        accepted(&peer_url, with("apiserver-n2")).await,
        "a member is accepted on the peer port"
    );
    assert!(
        !accepted(&peer_url, with("agent-node-1")).await,
        "the peer port accepted an agent"
    );
    assert!(
        !accepted(&peer_url, with("admin-admin")).await,
        "the peer port accepted an admin"
    );
    assert!(
        !accepted(
            &peer_url,
            raw_client(
                &ca,
                Some((
                    &pki.path("infra-apiserver-n1.crt"),
                    &pki.path("infra-apiserver-n1.key")
                ))
            )
        )
        .await,
        "the peer port accepted another cluster's apiserver"
    );

    // etcdctl without a certificate fails too.
    let mut no_cert = localcluster_etcdctl_plain(&c, &ca);
    no_cert.arg("get").arg("x");
    assert!(
        run(no_cert, &[]).await.is_err(),
        "etcdctl without a certificate was served"
    );

    let metrics = scrape_metrics(&c, 0).await.unwrap();
    assert!(
        metric(
            &metrics,
            "raftmesh_tls_handshakes_total{port=\"client\",result=\"refused\"}"
        ) >= 4.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "raftmesh_tls_handshakes_total{port=\"peer\",result=\"refused\"}"
        ) >= 3.0,
        "{metrics}"
    );
    ok(&c, "admin-admin", &["put", "still", "serving"]).await;
}

/// etcdctl that trusts `ca` but presents no certificate.
fn localcluster_etcdctl_plain(c: &Cluster, ca: &Path) -> Command {
    let mut command = Command::new(
        std::env::var_os(testkit::localcluster::cluster::ETCDCTL_BIN_ENV)
            .unwrap_or_else(|| testkit::localcluster::cluster::DEFAULT_ETCDCTL_BIN.into()),
    );
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.client_urls().join(",")))
        .arg(format!("--cacert={}", ca.display()));
    command
}

/// Acceptance 4: new certificate files are used for new connections within seconds, with no
/// restart; a CA bundle that gains a CA accepts its certificates; an open watch keeps
/// delivering throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_are_used_without_a_restart_and_open_watches_keep_delivering() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let c = tls_cluster(&pki).await;
    // From the next revision on, so the first put is delivered however long the watch takes
    // to be created.
    let from = (revision(&c).await + 1).to_string();
    let mut watch = tokio::process::Command::from(c.etcdctl_as("admin-admin"));
    watch
        .args(["watch", "rot/", "--prefix", "--rev", from.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut watch = watch.spawn().unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    ok(&c, "admin-admin", &["put", "rot/1", "before"]).await;
    expect_event(&mut lines, "rot/1", "before").await;

    // Rotate member n1's client certificate (same CA, a new key) and check that a new
    // connection is served with it.
    let old = std::fs::read(pki.path("apiserver-n1.crt")).unwrap();
    pki.issue(&pki.apps, Role::Apiserver, "n1", "apiserver-n1");
    let new = CertificateDer::from_pem_file(pki.path("apiserver-n1.crt")).unwrap();
    assert_ne!(old, std::fs::read(pki.path("apiserver-n1.crt")).unwrap());
    let admin = raw_client(
        &pki.path("ca.crt"),
        Some((&pki.path("admin-admin.crt"), &pki.path("admin-admin.key"))),
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        if served_certificate(&c.client_url(0), admin.clone()).await == new {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is not served after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A second CA joins the bundle: its certificates are refused before and accepted after.
    let next = CertificateAuthority::generate("apps", Validity::days_from_now(CA_DAYS)).unwrap();
    pki.issue(&next, Role::Admin, "admin", "next-admin");
    let next_admin = raw_client(
        &pki.path("ca.crt"),
        Some((&pki.path("next-admin.crt"), &pki.path("next-admin.key"))),
    );
    assert!(!accepted(&c.client_url(0), next_admin.clone()).await);
    let bundle = format!("{}{}", pki.apps.cert_pem(), next.cert_pem());
    write_pem(&pki.path("ca.crt"), &bundle).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !accepted(&c.client_url(0), next_admin.clone()).await {
        assert!(
            Instant::now() < deadline,
            "the new CA is not trusted after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    ok(&c, "admin-admin", &["put", "rot/2", "after"]).await;
    expect_event(&mut lines, "rot/2", "after").await;
    assert!(
        watch.try_wait().unwrap().is_none(),
        "the watch stream ended"
    );
}

/// The leaf certificate the server at `url` presents.
async fn served_certificate(
    url: &str,
    config: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let addr = url.split_once("://").unwrap().1;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn expect_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    key: &str,
    value: &str,
) {
    let read = async {
        let mut got = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            got.push(line);
            if got.ends_with(&["PUT".to_owned(), key.to_owned(), value.to_owned()]) {
                return;
            }
        }
        panic!("the watch ended; got {got:?}");
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the watch delivers the event");
}

/// Acceptance 5: garbage bytes, a plaintext gRPC client and a client that never speaks are
/// refused without harming the server: it keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plaintext_on_tls_ports_harm_nobody() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let c = tls_cluster(&pki).await;
    for url in [c.client_url(0), c.member_config(0).peer_url()] {
        let addr = url.split_once("://").unwrap().1.to_owned();
        // A client that connects and says nothing holds only its own handshake.
        let _silent = TcpStream::connect(&addr).await.unwrap();
        for junk in [
            &b"\x00\xffgarbage\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let mut tcp = TcpStream::connect(&addr).await.unwrap();
            tcp.write_all(junk).await.unwrap();
            let mut buf = Vec::new();
            let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut buf)).await;
            assert!(
                read.is_ok(),
                "{url}: the connection with {junk:?} was not closed"
            );
            assert!(
                !String::from_utf8_lossy(&buf).contains("HTTP/"),
                "{url}: plaintext was answered: {buf:?}"
            );
        }
    }
    // A plaintext etcd client gets nothing.
    let plain = c.client_url(0).replace("https://", "http://");
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(2));
    if let Ok(mut client) = etcd_client::Client::connect([plain.as_str()], Some(options)).await {
        assert!(
            client.get("x", None).await.is_err(),
            "a plaintext client was served"
        );
    }
    ok(&c, "admin-admin", &["put", "still", "serving"]).await;
    assert_eq!(
        ok(&c, "admin-admin", &["get", "still", "--print-value-only"]).await,
        "serving\n"
    );
}

/// Issue 11, defect 1: connections that never send a ClientHello cannot lock real clients out
/// of the client port (they used to hold every handshake slot, and the port stopped
/// accepting, for 10 s each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_clients_out() {
    raftmesh_only(ROLES_ARE_OURS);
    let pki = Pki::new();
    let c = tls_cluster(&pki).await;
    let addr = c.client_url(0).trim_start_matches("https://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // A real client, with etcdctl's 2 s dial timeout, while all 300 are still open.
    let out = run(c.etcdctl_for(0), &["put", "after-the-flood", "v"]).await;
    assert_eq!(out.as_deref(), Ok("OK\n"), "locked out by idle connections");
    // The oldest idle ones were closed to make room.
    let mut closed = 0;
    for mut tcp in idle {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(10), tcp.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 200,
        "only {closed} of 300 idle connections were closed"
    );
}
