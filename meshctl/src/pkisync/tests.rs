//! The in-cluster PKI's decisions, on Secrets as the API returns them (what the previous run
//! wrote, with the metadata the API adds).

use super::*;

fn args() -> SyncArgs {
    SyncArgs {
        namespace: "mesh".into(),
        cluster: "apps".into(),
        ca_secret: "r1-ca".into(),
        apiserver_secret: "r1-apiserver-tls".into(),
        apiserver_name: "r1-apiserver".into(),
        sans: vec![
            "*.r1-peers.mesh.svc".into(),
            "r1-apiserver.mesh.svc".into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ],
        admin_secret: "r1-admin-tls".into(),
        admin_name: "admin".into(),
        days: 90,
        renew_before_days: 30,
        ca_days: 3650,
        dry_run: false,
        export_ca: None,
    }
}

/// The Secrets after `plan`'s writes were applied, as the API would return them.
fn stored(
    mut before: BTreeMap<String, Option<Secret>>,
    plan: &Plan,
) -> BTreeMap<String, Option<Secret>> {
    for (i, w) in plan.writes.iter().enumerate() {
        let mut json = serde_json::to_value(&w.secret).unwrap();
        json["metadata"]["resourceVersion"] = format!("{}", 48_000 + i).into();
        json["metadata"]["uid"] = "5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170".into();
        json["metadata"]["creationTimestamp"] = "2026-11-29T07:00:00Z".into();
        let name = w.secret.metadata.name.clone().unwrap();
        before.insert(name, Some(serde_json::from_value(json).unwrap()));
    }
    before
}

fn names(plan: &Plan) -> Vec<(String, String)> {
    plan.writes
        .iter()
        .map(|w| (w.secret.metadata.name.clone().unwrap(), w.reason.clone()))
        .collect()
}

fn empty() -> BTreeMap<String, Option<Secret>> {
    ["r1-ca", "r1-apiserver-tls", "r1-admin-tls"]
        .into_iter()
        .map(|n| (n.to_owned(), None))
        .collect()
}

#[test]
fn a_first_run_makes_everything_and_a_second_changes_nothing() {
    let now = SystemTime::now();
    let first = plan(&args(), &empty(), now).unwrap();
    assert_eq!(
        names(&first),
        [
            ("r1-ca".to_owned(), "no CA yet".to_owned()),
            ("r1-apiserver-tls".to_owned(), "missing".to_owned()),
            ("r1-admin-tls".to_owned(), "missing".to_owned()),
        ]
    );
    assert!(first.writes.iter().all(|w| w.resource_version.is_none()));
    let secrets = stored(empty(), &first);
    let api = secrets["r1-apiserver-tls"].as_ref().unwrap();
    assert_eq!(api.type_.as_deref(), Some("kubernetes.io/tls"));
    let (identity, _) = certs::pki::leaf_info(&field(api, "tls.crt").unwrap()).unwrap();
    assert_eq!(
        identity.uri(),
        "spiffe://raftmesh/cluster/apps/apiserver/r1-apiserver"
    );
    let ca = secrets["r1-ca"].as_ref().unwrap();
    assert_eq!(field(api, "ca.crt").unwrap(), field(ca, "ca.crt").unwrap());

    let second = plan(&args(), &secrets, now).unwrap();
    assert_eq!(
        second,
        Plan {
            writes: vec![],
            warnings: vec![]
        }
    );
}

#[test]
fn certificates_are_renewed_before_expiry_and_the_ca_kept() {
    let now = SystemTime::now();
    let secrets = stored(empty(), &plan(&args(), &empty(), now).unwrap());
    // 59 days on: 31 days left, nothing due; 61 days on: 29 left, both leaves due.
    let day = Duration::from_secs(86_400);
    assert!(
        plan(&args(), &secrets, now + 59 * day)
            .unwrap()
            .writes
            .is_empty()
    );
    let later = plan(&args(), &secrets, now + 61 * day).unwrap();
    assert_eq!(
        names(&later),
        [
            ("r1-apiserver-tls".to_owned(), "expires soon".to_owned()),
            ("r1-admin-tls".to_owned(), "expires soon".to_owned()),
        ]
    );
    // Replaced at the version read, signed by the same CA.
    assert_eq!(later.writes[0].resource_version.as_deref(), Some("48001"));
    let ca = secrets["r1-ca"].as_ref().unwrap();
    certs::tls::verify_issued_by(
        &field(&later.writes[0].secret, "tls.crt").unwrap(),
        &field(ca, "ca.crt").unwrap(),
    )
    .unwrap();
}

#[test]
fn other_names_or_another_ca_mean_a_new_certificate() {
    let now = SystemTime::now();
    let secrets = stored(empty(), &plan(&args(), &empty(), now).unwrap());
    let mut more = args();
    more.sans.push("raftmesh.example.com".into());
    let p = plan(&more, &secrets, now).unwrap();
    assert_eq!(names(&p).len(), 1);
    assert!(
        names(&p)[0].1.starts_with("names changed"),
        "{:?}",
        names(&p)
    );

    // The CA Secret was replaced by hand: every leaf follows it.
    let mut replaced = secrets.clone();
    let other = stored(empty(), &plan(&args(), &empty(), now).unwrap());
    replaced.insert("r1-ca".into(), other["r1-ca"].clone());
    let p = plan(&args(), &replaced, now).unwrap();
    assert_eq!(
        names(&p)
            .iter()
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>(),
        ["not issued by the CA", "not issued by the CA"]
    );

    // A Secret missing its key is incomplete.
    let mut broken = secrets.clone();
    broken
        .get_mut("r1-admin-tls")
        .unwrap()
        .as_mut()
        .unwrap()
        .data
        .as_mut()
        .unwrap()
        .remove("tls.key");
    assert_eq!(
        names(&plan(&args(), &broken, now).unwrap()),
        [("r1-admin-tls".to_owned(), "incomplete".to_owned())]
    );
}

#[test]
fn a_ca_of_another_cluster_or_bad_windows_are_refused_and_an_old_ca_is_reported() {
    let now = SystemTime::now();
    let secrets = stored(empty(), &plan(&args(), &empty(), now).unwrap());
    let mut infra = args();
    infra.cluster = "infra".into();
    let err = plan(&infra, &secrets, now).unwrap_err().to_string();
    assert!(err.contains("CA of cluster apps, not infra"), "{err}");

    let mut window = args();
    window.renew_before_days = 90;
    assert!(plan(&window, &empty(), now).is_err());

    let mut short = args();
    short.ca_days = 20;
    let young = stored(empty(), &plan(&short, &empty(), now).unwrap());
    let p = plan(&short, &young, now).unwrap();
    assert_eq!(p.warnings.len(), 1, "{p:?}");
    assert!(p.warnings[0].contains("r1-ca expires within 30 days"));
}

#[test]
fn leaves_without_their_ca_are_not_given_a_new_one() {
    let now = SystemTime::now();
    let mut secrets = stored(empty(), &plan(&args(), &empty(), now).unwrap());
    secrets.insert("r1-ca".into(), None);
    let err = plan(&args(), &secrets, now).unwrap_err().to_string();
    assert!(err.contains("import the CA that issued it first"), "{err}");
}

#[test]
fn the_ca_certificate_is_exported_to_another_namespace_once() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    // Absent: created, certificate only.
    let (cm, version) = ca_configmap("mesh-agent", "r1-ca", pem, None).expect("a write");
    assert_eq!(version, None);
    assert_eq!(cm.metadata.namespace.as_deref(), Some("mesh-agent"));
    let data = cm.data.clone().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt"]);
    assert_eq!(data["ca.crt"], pem);
    // As the API returns it: nothing to write.
    let mut stored = serde_json::to_value(&cm).unwrap();
    stored["metadata"]["resourceVersion"] = "712".into();
    let stored: ConfigMap = serde_json::from_value(stored).unwrap();
    assert_eq!(
        ca_configmap("mesh-agent", "r1-ca", pem, Some(&stored)),
        None
    );
    // Another CA (replaced by hand): replaced, conditionally on the version read.
    let other = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";
    let (cm, version) = ca_configmap("mesh-agent", "r1-ca", other, Some(&stored)).unwrap();
    assert_eq!(version.as_deref(), Some("712"));
    assert_eq!(cm.data.unwrap()["ca.crt"], other);
    // The flag takes NAMESPACE/NAME of DNS labels.
    assert_eq!(
        parse_namespaced("mesh-agent/r1-ca"),
        Ok(("mesh-agent".into(), "r1-ca".into()))
    );
    for bad in ["r1-ca", "Mesh/r1-ca", "mesh/", "/r1"] {
        assert!(parse_namespaced(bad).is_err(), "{bad}");
    }
}
