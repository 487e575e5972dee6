//! `meshctl pki init|issue`, run as a user would: the built binary in a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use certs::pki::{CertificateAuthority, parse_cert_pem};
use certs::{Error, Identity};

/// Runs meshctl with `args`.
fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// Every file in `dir` (not recursive), by name, with its contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The identity URI in the certificate file at `path`.
fn identity(path: &Path) -> Result<String, Error> {
    let pem = fs::read_to_string(path).unwrap();
    Ok(Identity::from_der(&parse_cert_pem(&pem)?)?.uri())
}

fn init(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pki",
        "init",
        "--cluster",
        "east",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    meshctl(&args)
}

#[test]
fn init_writes_a_private_pki_with_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let out = init(&dir, &[]);
    assert_code(&out, 0);

    let files = snapshot(&dir);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "admin-admin.crt",
            "admin-admin.key",
            "apiserver-n1.crt",
            "apiserver-n1.key",
            "apiserver-n2.crt",
            "apiserver-n2.key",
            "apiserver-n3.crt",
            "apiserver-n3.key",
            "ca.crt",
            "ca.key",
        ]
    );
    for name in &names {
        let mode = fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let stdout = stdout(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), names.len() + 1, "{stdout}");
    for name in &names {
        let wrote = format!("wrote {}", dir.join(name).display());
        assert!(lines.contains(&wrote.as_str()), "{stdout}");
    }
    assert!(lines[names.len()].contains("east"), "{stdout}");

    assert_eq!(
        identity(&dir.join("apiserver-n1.crt")).unwrap(),
        "spiffe://raftmesh/cluster/east/apiserver/n1"
    );
    assert_eq!(
        identity(&dir.join("admin-admin.crt")).unwrap(),
        "spiffe://raftmesh/cluster/east/admin/admin"
    );
    let ca = CertificateAuthority::load(&dir.join("ca.crt"), &dir.join("ca.key")).unwrap();
    assert_eq!(ca.cluster(), "east");
}

#[test]
fn init_takes_members_and_admin() {
    let tmp = tempfile::tempdir().unwrap();
    let out = init(
        tmp.path(),
        &[
            "--member", "a", "--member", "b", "--admin", "alice", "--san", "10.1.2.3",
        ],
    );
    assert_code(&out, 0);
    let names: Vec<String> = snapshot(tmp.path()).into_keys().collect();
    assert_eq!(
        names,
        [
            "admin-alice.crt",
            "admin-alice.key",
            "apiserver-a.crt",
            "apiserver-a.key",
            "apiserver-b.crt",
            "apiserver-b.key",
            "ca.crt",
            "ca.key",
        ]
    );
    assert_eq!(
        identity(&tmp.path().join("apiserver-b.crt")).unwrap(),
        "spiffe://raftmesh/cluster/east/apiserver/b"
    );
}

#[test]
fn second_init_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    assert_code(&init(tmp.path(), &[]), 0);
    let before = snapshot(tmp.path());

    let again = init(tmp.path(), &["--member", "n9"]);
    assert_code(&again, 64);
    assert!(stderr(&again).starts_with("error: "), "{}", stderr(&again));
    assert!(stderr(&again).contains("ca.crt"), "{}", stderr(&again));
    assert!(stdout(&again).is_empty());
    assert_eq!(snapshot(tmp.path()), before);

    // The key alone is enough to refuse.
    fs::remove_file(tmp.path().join("ca.crt")).unwrap();
    let before = snapshot(tmp.path());
    assert_code(&init(tmp.path(), &[]), 64);
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn issue_writes_agent_and_remote_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert_code(&init(tmp.path(), &[]), 0);

    let out = meshctl(&[
        "pki", "issue", "--dir", dir, "--role", "agent", "--name", "node-a",
    ]);
    assert_code(&out, 0);
    let uri = "spiffe://raftmesh/cluster/east/agent/node-a";
    assert!(stdout(&out).contains(uri), "{}", stdout(&out));
    assert_eq!(identity(&tmp.path().join("agent-node-a.crt")).unwrap(), uri);
    let mode = fs::metadata(tmp.path().join("agent-node-a.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let other = tmp.path().join("for-west");
    let out = meshctl(&[
        "pki",
        "issue",
        "--dir",
        dir,
        "--role",
        "remote",
        "--name",
        "west",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert_code(&out, 0);
    assert_eq!(
        identity(&other.join("remote-west.crt")).unwrap(),
        "spiffe://raftmesh/cluster/east/remote/west"
    );
    assert!(other.join("remote-west.key").exists());
    assert!(!tmp.path().join("remote-west.crt").exists());
}

#[test]
fn issue_refuses_to_overwrite_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert_code(&init(tmp.path(), &[]), 0);
    let args = [
        "pki",
        "issue",
        "--dir",
        dir,
        "--role",
        "apiserver",
        "--name",
        "n1",
    ];
    let before = snapshot(tmp.path());
    assert_code(&meshctl(&args), 64);
    assert_eq!(snapshot(tmp.path()), before);

    let mut forced = args.to_vec();
    forced.push("--force");
    assert_code(&meshctl(&forced), 0);
    let after = snapshot(tmp.path());
    assert_ne!(after["apiserver-n1.crt"], before["apiserver-n1.crt"]);
    assert_ne!(after["apiserver-n1.key"], before["apiserver-n1.key"]);
    assert_eq!(after["apiserver-n2.crt"], before["apiserver-n2.crt"]);
}

#[test]
fn bad_input_exits_64_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    assert_code(&init(tmp.path(), &[]), 0);
    let before = snapshot(tmp.path());
    let issue = |role: &str, name: &str| {
        meshctl(&["pki", "issue", "--dir", dir, "--role", role, "--name", name])
    };
    for out in [
        issue("bogus", "x"),
        issue("agent", "Node_A"),
        issue("agent", "../x"),
        issue("", "x"),
        meshctl(&[
            "pki", "issue", "--dir", dir, "--role", "agent", "--name", "x", "--san", "a b",
        ]),
        meshctl(&[
            "pki", "issue", "--dir", dir, "--role", "agent", "--name", "x", "--days", "0",
        ]),
        meshctl(&["pki", "issue", "--role", "agent", "--name", "x"]),
    ] {
        assert_code(&out, 64);
        assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    }
    assert_eq!(snapshot(tmp.path()), before);

    let fresh = tmp.path().join("fresh");
    let fresh_str = fresh.to_str().unwrap();
    for args in [
        &["pki", "init", "--cluster", "East", "--out", fresh_str][..],
        &[
            "pki",
            "init",
            "--cluster",
            "west",
            "--out",
            fresh_str,
            "--admin",
            "Alice",
        ],
        &[
            "pki",
            "init",
            "--cluster",
            "west",
            "--out",
            fresh_str,
            "--member",
            "a",
            "--member",
            "a",
        ],
        &[
            "pki",
            "init",
            "--cluster",
            "west",
            "--out",
            fresh_str,
            "--san",
            "a b",
        ],
    ] {
        let out = meshctl(args);
        assert_code(&out, 64);
        assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
        assert!(!fresh.exists(), "{args:?} wrote something");
    }

    // A directory without a CA is bad input too.
    let out = meshctl(&[
        "pki", "issue", "--dir", fresh_str, "--role", "agent", "--name", "x",
    ]);
    assert_code(&out, 64);
    assert!(stderr(&out).contains("ca.crt"), "{}", stderr(&out));
}
