use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const DAY: i64 = 86_400;

fn ca(cluster: &str) -> CertificateAuthority {
    CertificateAuthority::generate(cluster, Validity::days_from_now(CA_DAYS)).unwrap()
}

fn spec(cluster: &str, role: Role, name: &str, sans: &[&str]) -> LeafSpec {
    LeafSpec {
        identity: Identity::new(cluster, role, name).unwrap(),
        sans: sans.iter().map(|s| s.to_string()).collect(),
        validity: Validity::days_from_now(LEAF_DAYS),
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    parse_cert_pem(pem).unwrap()
}

fn x509<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    X509Certificate::from_der(der).unwrap().1
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Asserts the certificate is valid from about five minutes ago for about `days` days.
fn assert_validity(cert: &X509Certificate<'_>, days: i64) {
    let now = now_secs();
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert!(
        (now - 5 * 60 - 10..=now - 5 * 60).contains(&not_before),
        "not_before {not_before}, now {now}"
    );
    assert!(
        (now + days * DAY - 10..=now + days * DAY).contains(&not_after),
        "not_after {not_after}, now {now}"
    );
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    let cn = cert.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_owned()
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let ext = cert.subject_alternative_name().unwrap().unwrap();
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("dns:{dns}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            GeneralName::URI(uri) => format!("uri:{uri}"),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

#[test]
fn ca_is_a_ten_year_p256_ca_naming_its_cluster() {
    let ca = ca("east");
    assert_eq!(ca.cluster(), "east");
    let der = der(ca.cert_pem());
    assert_eq!(&der, ca.cert_der());
    let cert = x509(&der);

    let constraints = cert.basic_constraints().unwrap().unwrap().value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(0));
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && usage.digital_signature());
    assert_eq!(common_name(&cert), "raftmesh CA east");
    assert_eq!(sans(&cert), ["uri:spiffe://raftmesh/cluster/east"]);
    // ecdsa-with-SHA256
    assert_eq!(
        cert.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.10045.4.3.2"
    );
    assert_validity(&cert, 3650);
    cert.verify_signature(None).unwrap();
    assert_eq!(cert_cluster(&cert).unwrap(), "east");

    // A CA's URI is not a holder's identity.
    assert!(matches!(
        Identity::from_der(&der),
        Err(Error::BadIdentity { .. })
    ));
    assert!(!ca.key_pem().is_empty());
}

#[test]
fn ca_refuses_an_invalid_cluster_name() {
    let err = CertificateAuthority::generate("East", Validity::days_from_now(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadName {
                what: "cluster",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn every_role_round_trips_with_its_usages() {
    let ca = ca("east");
    let ca_der = der(ca.cert_pem());
    let ca_cert = x509(&ca_der);
    for role in Role::ALL {
        let issued = ca
            .issue(&spec(
                "east",
                role,
                "n1",
                &["n1.example", "10.0.0.1", "::1"],
            ))
            .unwrap();
        let der = der(&issued.cert_pem);
        let identity = Identity::from_der(&der).unwrap();
        assert_eq!(identity, Identity::new("east", role, "n1").unwrap());

        let cert = x509(&der);
        assert_eq!(common_name(&cert), format!("{role}/n1"));
        assert_eq!(
            sans(&cert),
            [
                format!("uri:spiffe://raftmesh/cluster/east/{role}/n1"),
                "dns:n1.example".to_owned(),
                "ip:[10, 0, 0, 1]".to_owned(),
                format!(
                    "ip:{:?}",
                    [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                ),
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth, "{role}: clientAuth");
        assert_eq!(
            eku.server_auth,
            role == Role::Apiserver,
            "{role}: serverAuth"
        );
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && !usage.key_cert_sign());
        let constraints = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!constraints.ca);
        assert_validity(&cert, 365);

        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert!(issued.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{issued:?}").contains(&issued.key_pem));
    }
}

#[test]
fn issue_refuses_another_clusters_identity() {
    let ca = ca("east");
    let err = ca
        .issue(&spec("west", Role::Apiserver, "n1", &[]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::WrongCluster { ca, identity }
            if ca == "east" && identity == "spiffe://raftmesh/cluster/west/apiserver/n1"),
        "{err}"
    );
}

#[test]
fn issue_refuses_an_identity_built_around_the_checks() {
    let ca = ca("east");
    let mut spec = spec("east", Role::Agent, "n1", &[]);
    spec.identity.name = "a/b".to_owned();
    let err = ca.issue(&spec).unwrap_err();
    assert!(matches!(err, Error::BadName { what: "name", .. }), "{err}");
}

#[test]
fn issue_refuses_bad_sans() {
    let ca = ca("east");
    for bad in ["", "-a.example", "a..example", "a b", "a_b.example", "x/y"] {
        let err = ca
            .issue(&spec("east", Role::Agent, "n1", &[bad]))
            .unwrap_err();
        assert!(
            matches!(&err, Error::BadSan { san, .. } if san == bad),
            "{bad:?}: {err}"
        );
    }
    ca.issue(&spec("east", Role::Agent, "n1", &["*.svc.example"]))
        .unwrap();
}

#[test]
fn without_identity_has_no_identity() {
    let ca = ca("east");
    let issued = ca
        .issue_without_identity(
            "anonymous",
            &["localhost".to_owned()],
            Validity::days_from_now(1),
        )
        .unwrap();
    let der = der(&issued.cert_pem);
    assert!(matches!(Identity::from_der(&der), Err(Error::NoIdentity)));
    let cert = x509(&der);
    assert_eq!(common_name(&cert), "anonymous");
    assert_eq!(sans(&cert), ["dns:localhost"]);
    cert.verify_signature(Some(x509(ca.cert_der()).public_key()))
        .unwrap();
}

#[test]
fn validity_may_lie_in_the_past_but_not_be_empty() {
    let ca = ca("east");
    let now = SystemTime::now();
    let mut spec = spec("east", Role::Agent, "n1", &[]);
    spec.validity = Validity {
        not_before: now - Duration::from_secs(2 * DAY as u64),
        not_after: now - Duration::from_secs(DAY as u64),
    };
    let issued = ca.issue(&spec).unwrap();
    let der = der(&issued.cert_pem);
    let cert = x509(&der);
    let not_after = cert.validity().not_after.timestamp();
    assert!((now_secs() - DAY - 10..=now_secs() - DAY).contains(&not_after));
    assert!(!cert.validity().is_valid());

    spec.validity = Validity {
        not_before: now,
        not_after: now,
    };
    assert!(matches!(ca.issue(&spec), Err(Error::BadValidity { .. })));
    spec.validity = Validity {
        not_before: now,
        not_after: now + Duration::from_secs(20_000 * 365 * DAY as u64),
    };
    assert!(matches!(ca.issue(&spec), Err(Error::BadValidity { .. })));
}

#[test]
fn from_pem_round_trips_and_the_reloaded_ca_signs_for_the_same_trust() {
    let original = ca("east");
    let reloaded =
        CertificateAuthority::from_pem(original.cert_pem(), &original.key_pem()).unwrap();
    assert_eq!(reloaded.cluster(), "east");
    assert_eq!(reloaded.cert_der(), original.cert_der());

    let issued = reloaded
        .issue(&spec("east", Role::Remote, "west", &[]))
        .unwrap();
    let der = der(&issued.cert_pem);
    assert_eq!(
        Identity::from_der(&der).unwrap().uri(),
        "spiffe://raftmesh/cluster/east/remote/west"
    );
    let cert = x509(&der);
    let ca_cert = x509(original.cert_der());
    assert_eq!(cert.issuer(), ca_cert.subject());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    // Not signed by some other CA's key.
    let other = ca("east");
    assert!(
        cert.verify_signature(Some(x509(other.cert_der()).public_key()))
            .is_err()
    );
}

#[test]
fn from_pem_refuses_what_is_not_a_matching_ca() {
    let east = ca("east");
    let other = ca("east");
    let err = CertificateAuthority::from_pem(east.cert_pem(), &other.key_pem()).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch), "{err}");

    let leaf = east
        .issue(&spec("east", Role::Admin, "alice", &[]))
        .unwrap();
    let err = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
    assert!(matches!(err, Error::BadCertificate { .. }), "{err}");

    let err = CertificateAuthority::from_pem("junk", &east.key_pem()).unwrap_err();
    assert!(matches!(err, Error::BadCertificate { .. }), "{err}");
    let err = CertificateAuthority::from_pem(east.cert_pem(), "junk").unwrap_err();
    assert!(matches!(err, Error::BadKey { .. }), "{err}");
}

#[test]
fn load_reads_what_write_pem_wrote_and_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let authority = ca("east");
    let cert_path = dir.path().join("pki/ca.crt");
    let key_path = dir.path().join("pki/ca.key");
    write_pem(&cert_path, authority.cert_pem()).unwrap();
    write_pem(&key_path, &authority.key_pem()).unwrap();
    let loaded = CertificateAuthority::load(&cert_path, &key_path).unwrap();
    assert_eq!(loaded.cluster(), "east");
    assert_eq!(loaded.cert_pem(), authority.cert_pem());

    write_pem(&key_path, &ca("east").key_pem()).unwrap();
    let err = CertificateAuthority::load(&cert_path, &key_path).unwrap_err();
    assert!(
        matches!(&err, Error::BadPem { path, .. } if *path == key_path),
        "{err}"
    );
    let err = CertificateAuthority::load(&key_path, &key_path).unwrap_err();
    assert!(matches!(&err, Error::BadPem { .. }), "{err}");
    let missing = dir.path().join("nope.crt");
    let err = CertificateAuthority::load(&missing, &key_path).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if *path == missing),
        "{err}"
    );
}

#[test]
fn write_pem_is_0600_replaces_atomically_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/leaf.key");
    write_pem(&path, "first").unwrap();
    assert_eq!(read_pem(&path).unwrap(), "first");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);

    // Replacing a file someone made world-readable leaves a 0600 file.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    write_pem(&path, "second").unwrap();
    assert_eq!(read_pem(&path).unwrap(), "second");
    assert_eq!(mode(&path), 0o600);

    let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["leaf.key"]);
}

#[test]
fn write_pem_reports_the_path_it_could_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    fs::write(&blocker, "x").unwrap();
    let err = write_pem(&blocker.join("leaf.crt"), "pem").unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if *path == blocker),
        "{err}"
    );
}

#[test]
fn a_signing_request_gets_the_signers_identity_over_the_requesters_key() {
    let ca = ca("apps");
    let (csr, key_pem) = signing_request().unwrap();
    let cert_pem = ca
        .sign_request(&csr, &spec("apps", Role::Agent, "node-7", &[]))
        .unwrap();
    let cert_der = der(&cert_pem);
    let cert = x509(&cert_der);
    assert_eq!(common_name(&cert), "agent/node-7");
    assert_eq!(
        sans(&cert),
        ["uri:spiffe://raftmesh/cluster/apps/agent/node-7"]
    );
    assert_validity(&cert, LEAF_DAYS as i64);
    // Over the requester's key: the pair makes a working client identity.
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    crate::tls::verify_issued_by(&cert_pem, ca.cert_pem()).unwrap();
    let (identity, _) = leaf_info(&cert_pem).unwrap();
    assert_eq!(
        identity,
        Identity::new("apps", Role::Agent, "node-7").unwrap()
    );
}

#[test]
fn what_a_request_asks_for_is_ignored() {
    let ca = ca("apps");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    asked.subject_alt_names.push(SanType::URI(
        "spiffe://raftmesh/cluster/apps/admin/root"
            .try_into()
            .unwrap(),
    ));
    let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
    let cert_pem = ca
        .sign_request(&csr, &spec("apps", Role::Agent, "node-1", &[]))
        .unwrap();
    let cert_der = der(&cert_pem);
    let cert = x509(&cert_der);
    assert_eq!(
        sans(&cert),
        ["uri:spiffe://raftmesh/cluster/apps/agent/node-1"]
    );
    assert!(!cert.is_ca());
}

#[test]
fn signing_requests_are_refused_for_other_roles_clusters_and_bad_requests() {
    let ca = ca("apps");
    let (csr, _) = signing_request().unwrap();
    for role in [Role::Admin, Role::Apiserver] {
        let err = ca
            .sign_request(&csr, &spec("apps", role, "x", &[]))
            .unwrap_err();
        assert!(
            err.to_string().contains("not signed from requests"),
            "{err}"
        );
    }
    let err = ca
        .sign_request(&csr, &spec("infra", Role::Agent, "x", &[]))
        .unwrap_err();
    assert!(matches!(err, Error::WrongCluster { .. }), "{err}");
    // A request changed in transit (one base64 character of its body): its signature no
    // longer verifies, if it still parses.
    let mut tampered: Vec<char> = csr.chars().collect();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let err = ca
        .sign_request(&tampered, &spec("apps", Role::Agent, "x", &[]))
        .unwrap_err();
    assert!(
        err.to_string().contains("certificate signing request"),
        "{err}"
    );
}
