use std::ffi::OsStr;
use std::path::PathBuf;

use super::{Flavor, select};

fn ours() -> PathBuf {
    PathBuf::from("/target/debug/mesh-apiserver")
}

#[test]
fn unset_or_raftmesh_selects_our_server() {
    for server in [None, Some(""), Some("raftmesh")] {
        let flavor = select(server.map(OsStr::new), Some(OsStr::new("/x/etcd")), ours()).unwrap();
        assert_eq!(flavor, Flavor::Raftmesh(ours()));
        assert!(!flavor.is_etcd());
    }
}

#[test]
fn etcd_uses_default_binary() {
    let flavor = select(Some(OsStr::new("etcd")), None, ours()).unwrap();
    assert_eq!(flavor, Flavor::Etcd(PathBuf::from("/usr/bin/etcd")));
    assert!(flavor.is_etcd());
}

#[test]
fn etcd_binary_can_be_overridden() {
    let flavor = select(
        Some(OsStr::new("etcd")),
        Some(OsStr::new("/opt/etcd")),
        ours(),
    )
    .unwrap();
    assert_eq!(flavor.program(), PathBuf::from("/opt/etcd"));
}

#[test]
fn unknown_server_is_an_error() {
    let err = select(Some(OsStr::new("etdc")), None, ours()).unwrap_err();
    assert_eq!(
        err,
        "RAFTMESH_TEST_SERVER=\"etdc\" is not a server; use `etcd` or `raftmesh` (or leave it unset)"
    );
}
