use super::*;
use crate::request::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest,
};

fn who(role: Role, name: &str) -> Caller {
    Caller::Certified(Identity::new("apps", role, name).unwrap().into())
}

fn auth() -> Authorizer {
    Authorizer::new("apps")
}

fn put(key: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

fn get(key: &str, range_end: &str) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: key.as_bytes().to_vec().into(),
        range_end: range_end.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

#[test]
fn admin_apiserver_and_plaintext_may_do_everything() {
    for caller in [
        who(Role::Admin, "ops"),
        who(Role::Apiserver, "n1"),
        Caller::Unrestricted,
    ] {
        let a = auth();
        a.read(&caller, b"", b"\0").unwrap();
        a.write(&caller, b"mesh/config/remotes/x", b"").unwrap();
        a.write(&caller, b"a", b"\0").unwrap();
        a.operation(&caller, Operation::Administer).unwrap();
        assert_eq!(a.lease_limits(&caller), Ok(None));
    }
}

#[test]
fn agents_read_the_mesh_and_write_only_their_node_key_and_reachability() {
    let a = auth();
    let agent = who(Role::Agent, "node-1");
    a.read(&agent, b"mesh/v1/", b"mesh/v10").unwrap();
    a.read(&agent, b"mesh/v1/infra/services/x", b"").unwrap();
    a.read(&agent, b"mesh/status/", b"mesh/status0").unwrap();
    a.write(&agent, b"mesh/v1/apps/nodekeys/node-1", b"")
        .unwrap();
    a.write(&agent, b"mesh/status/reach/apps/node-1", b"")
        .unwrap();

    for (key, end) in [
        ("mesh/", "mesh0"),
        ("mesh/v1/", "\0"),
        ("mesh/v1/", "mesh/v2"),
        ("mesh/config/remotes/infra", ""),
        ("mesh/v1", ""),
        ("other", ""),
    ] {
        assert_eq!(
            a.read(&agent, key.as_bytes(), end.as_bytes()),
            Err(Error::PermissionDenied),
            "read {key}..{end}"
        );
    }
    for (key, end) in [
        ("mesh/v1/apps/nodekeys/node-2", ""),
        (
            "mesh/v1/apps/nodekeys/node-1",
            "mesh/v1/apps/nodekeys/node-2",
        ),
        ("mesh/v1/apps/nodekeys/node-10", ""),
        ("mesh/v1/infra/nodekeys/node-1", ""),
        ("mesh/config/x", ""),
        ("mesh/status/reach/apps/node-2", ""),
        ("mesh/status/reach/infra/node-1", ""),
        (
            "mesh/status/reach/apps/node-1",
            "mesh/status/reach/apps/node-2",
        ),
        ("mesh/status/remotes/infra", ""),
    ] {
        assert_eq!(
            a.write(&agent, key.as_bytes(), end.as_bytes()),
            Err(Error::PermissionDenied),
            "write {key}..{end}"
        );
    }
    a.operation(&agent, Operation::UseLeases).unwrap();
    a.operation(&agent, Operation::ReadCluster).unwrap();
    assert_eq!(
        a.operation(&agent, Operation::Administer),
        Err(Error::PermissionDenied)
    );
    assert_eq!(
        a.lease_limits(&agent),
        Ok(Some(crate::auth::LeaseLimits {
            owner: "spiffe://raftmesh/cluster/apps/agent/node-1".into(),
            keys: vec![
                b"mesh/v1/apps/nodekeys/node-1".to_vec(),
                b"mesh/status/reach/apps/node-1".to_vec()
            ],
        }))
    );
}

#[test]
fn remotes_read_only_this_clusters_export() {
    let a = auth();
    let remote = who(Role::Remote, "infra");
    a.read(&remote, b"mesh/v1/apps/", b"mesh/v1/apps0").unwrap();
    a.read(&remote, b"mesh/v1/apps/services/default/web", b"")
        .unwrap();
    for (key, end) in [
        ("mesh/v1/", "mesh/v10"),
        ("mesh/v1/infra/", "mesh/v1/infra0"),
        ("mesh/v1/apps", "mesh/v1/apps0"),
        ("mesh/v1/appsx/", ""),
        ("mesh/v1/apps/", "\0"),
        ("mesh/status/", "mesh/status0"),
    ] {
        assert_eq!(
            a.read(&remote, key.as_bytes(), end.as_bytes()),
            Err(Error::PermissionDenied),
            "read {key}..{end}"
        );
    }
    assert_eq!(
        a.write(&remote, b"mesh/v1/apps/x", b""),
        Err(Error::PermissionDenied)
    );
    for op in [
        Operation::UseLeases,
        Operation::ReadCluster,
        Operation::Administer,
    ] {
        assert_eq!(
            a.operation(&remote, op),
            Err(Error::PermissionDenied),
            "{op:?}"
        );
    }
}

#[test]
fn a_txn_is_allowed_only_when_every_part_is() {
    let a = auth();
    let agent = who(Role::Agent, "node-1");
    let own = "mesh/v1/apps/nodekeys/node-1";
    let ok = TxnRequest {
        compare: vec![Compare {
            key: own.as_bytes().to_vec().into(),
            range_end: Default::default(),
            result: CompareResult::Equal,
            target: CompareTarget::Version(0),
        }],
        success: vec![put(own), get("mesh/v1/", "mesh/v10")],
        failure: vec![RequestOp::Txn(TxnRequest {
            success: vec![get(own, "")],
            ..Default::default()
        })],
    };
    a.txn(&agent, &ok).unwrap();

    let mut denied_failure = ok.clone();
    denied_failure
        .failure
        .push(put("mesh/v1/apps/nodekeys/node-2"));
    assert_eq!(a.txn(&agent, &denied_failure), Err(Error::PermissionDenied));

    let mut denied_nested = ok.clone();
    denied_nested.success.push(RequestOp::Txn(TxnRequest {
        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"mesh/config/".to_vec().into(),
            range_end: b"mesh/config0".to_vec().into(),
            prev_kv: false,
        })],
        ..Default::default()
    }));
    assert_eq!(a.txn(&agent, &denied_nested), Err(Error::PermissionDenied));

    let mut denied_compare = ok;
    denied_compare.compare[0].key = b"mesh/config/x".to_vec().into();
    assert_eq!(a.txn(&agent, &denied_compare), Err(Error::PermissionDenied));
}

#[test]
fn a_connection_without_identity_is_refused() {
    let a = auth();
    assert_eq!(
        a.read(&Caller::Unknown, b"mesh/v1/apps/x", b""),
        Err(Error::PermissionDenied)
    );
    assert_eq!(
        a.operation(&Caller::Unknown, Operation::ReadCluster),
        Err(Error::PermissionDenied)
    );
}
