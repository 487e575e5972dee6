//! Handshakes between our rustls configurations, in memory (no sockets): who is accepted,
//! who is refused, and reloading.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::{ClientConnection, ServerConnection};
use tempfile::TempDir;

use super::*;
use crate::pki::{CA_DAYS, CertificateAuthority, LEAF_DAYS, LeafSpec, Validity, write_pem};

fn ca(cluster: &str) -> CertificateAuthority {
    CertificateAuthority::generate(cluster, Validity::days_from_now(CA_DAYS)).unwrap()
}

/// Writes a leaf of `ca` as `<dir>/<file>.crt|.key`, with `ca.crt` next to it, and returns the
/// files, trusting `trusted`.
fn files_with(
    dir: &Path,
    file: &str,
    ca: &CertificateAuthority,
    role: Role,
    name: &str,
    validity: Validity,
    trusted: &[&CertificateAuthority],
) -> TlsFiles {
    let issued = ca
        .issue(&LeafSpec {
            identity: Identity::new(ca.cluster(), role, name).unwrap(),
            sans: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            validity,
        })
        .unwrap();
    write_leaf(dir, file, &issued.cert_pem, &issued.key_pem, trusted)
}

fn write_leaf(
    dir: &Path,
    file: &str,
    cert: &str,
    key: &str,
    trusted: &[&CertificateAuthority],
) -> TlsFiles {
    let files = TlsFiles {
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
        ca: dir.join(format!("{file}-ca.crt")),
    };
    write_pem(&files.cert, cert).unwrap();
    write_pem(&files.key, key).unwrap();
    let bundle: String = trusted.iter().map(|c| c.cert_pem()).collect();
    write_pem(&files.ca, &bundle).unwrap();
    files
}

fn files(dir: &Path, file: &str, ca: &CertificateAuthority, role: Role, name: &str) -> TlsFiles {
    files_with(
        dir,
        file,
        ca,
        role,
        name,
        Validity::days_from_now(LEAF_DAYS),
        &[ca],
    )
}

/// Runs a handshake to completion and returns the identity the server saw, or the first
/// error either side raised.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<Identity, rustls::Error> {
    handshake_to("localhost", client, server)
}

/// [`handshake`] with the client connecting to host name `host`.
fn handshake_to(
    host: &str,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<Identity, rustls::Error> {
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).unwrap();
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).unwrap();
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(peer_identity(&s).expect("a client certificate with an identity"));
        }
    }
    panic!("the handshake did not finish");
}

struct Pki {
    _dir: TempDir,
    dir: std::path::PathBuf,
    apps: CertificateAuthority,
    infra: CertificateAuthority,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    Pki {
        dir: dir.path().to_owned(),
        _dir: dir,
        apps: ca("apps"),
        infra: ca("infra"),
    }
}

fn client(files: TlsFiles) -> Arc<ClientConfig> {
    ClientTls::client(files).unwrap().config()
}

#[test]
fn the_client_port_accepts_every_role_of_its_cluster() {
    let p = pki();
    let server = ServerTls::server(
        files(&p.dir, "n1", &p.apps, Role::Apiserver, "n1"),
        Accept::AnyRole,
    )
    .unwrap();
    assert_eq!(
        server.identity().uri(),
        "spiffe://raftmesh/cluster/apps/apiserver/n1"
    );
    for role in Role::ALL {
        let c = client(files(&p.dir, role.as_str(), &p.apps, role, "x"));
        let seen = handshake(c, server.config()).unwrap();
        assert_eq!(seen, Identity::new("apps", role, "x").unwrap());
    }
}

#[test]
fn the_peer_port_accepts_only_members_of_its_cluster() {
    let p = pki();
    // A bundle holding another cluster's CA is refused: that CA could issue certificates
    // claiming this cluster.
    let both = files_with(
        &p.dir,
        "n1",
        &p.apps,
        Role::Apiserver,
        "n1",
        Validity::days_from_now(LEAF_DAYS),
        &[&p.apps, &p.infra],
    );
    let err = ServerTls::server(both, Accept::Members).unwrap_err();
    assert!(
        err.to_string().contains("holds the CA of cluster infra"),
        "{err}"
    );

    let server = ServerTls::server(
        files(&p.dir, "n1", &p.apps, Role::Apiserver, "n1"),
        Accept::Members,
    )
    .unwrap();
    let member = client(files(&p.dir, "n2", &p.apps, Role::Apiserver, "n2"));
    assert_eq!(handshake(member, server.config()).unwrap().name, "n2");

    let agent = client(files(&p.dir, "agent", &p.apps, Role::Agent, "node-1"));
    let err = handshake(agent, server.config()).unwrap_err();
    assert!(format!("{err:?}").contains("NotAccepted"), "{err}");

    // Another cluster's member: its CA is not trusted here.
    let other = client(files(&p.dir, "infra-n1", &p.infra, Role::Apiserver, "n1"));
    let err = handshake(other, server.config()).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
}

#[test]
fn certificates_the_ca_did_not_issue_or_that_expired_or_lack_an_identity_are_refused() {
    let p = pki();
    let server = ServerTls::server(
        files(&p.dir, "n1", &p.apps, Role::Apiserver, "n1"),
        Accept::AnyRole,
    )
    .unwrap();

    // Another CA with the same name (the client trusts ours, so only the server's check
    // fails): webpki finds the issuer by name and the signature does not match.
    let stranger = ca("apps");
    let foreign = client(files_with(
        &p.dir,
        "foreign",
        &stranger,
        Role::Admin,
        "x",
        Validity::days_from_now(LEAF_DAYS),
        &[&p.apps],
    ));
    let err = handshake(foreign, server.config()).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            )
        ),
        "{err}"
    );

    let day = Duration::from_secs(86_400);
    let past = Validity {
        not_before: SystemTime::now() - 30 * day,
        not_after: SystemTime::now() - day,
    };
    let expired = client(files_with(
        &p.dir,
        "expired",
        &p.apps,
        Role::Admin,
        "x",
        past,
        &[&p.apps],
    ));
    let err = handshake(expired, server.config()).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err}"
    );

    let anonymous = p
        .apps
        .issue_without_identity(
            "nobody",
            &["localhost".to_owned()],
            Validity::days_from_now(LEAF_DAYS),
        )
        .unwrap();
    // Our client config refuses to load a certificate without an identity, so build the
    // client by hand: it must be the server that refuses.
    let files = write_leaf(
        &p.dir,
        "anonymous",
        &anonymous.cert_pem,
        &anonymous.key_pem,
        &[&p.apps],
    );
    let m = Material::read(&files);
    assert!(m.is_err(), "loading an identity-less certificate must fail");
    let chain = certificates(&files.cert, anonymous.cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(anonymous.key_pem.as_bytes()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(p.apps.cert_der().clone()).unwrap();
    let raw = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .unwrap();
    let err = handshake(Arc::new(raw), server.config()).unwrap_err();
    assert!(format!("{err:?}").contains("NoIdentity"), "{err}");

    let no_cert = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let err = handshake(Arc::new(no_cert), server.config()).unwrap_err();
    assert!(
        matches!(err, rustls::Error::NoCertificatesPresented),
        "{err}"
    );
}

#[test]
fn clients_accept_only_member_servers_of_their_own_cluster() {
    let p = pki();
    let c = client(files(&p.dir, "admin", &p.apps, Role::Admin, "ops"));
    // A server that presents an admin certificate is not a member (admin certificates are
    // not even valid for serving).
    let impostor = ServerTls::server(
        files(&p.dir, "impostor", &p.apps, Role::Admin, "evil"),
        Accept::AnyRole,
    )
    .unwrap();
    let err = handshake(c.clone(), impostor.config()).unwrap_err();
    assert!(err.to_string().contains("server authentication"), "{err}");

    // A member of another cluster: its CA is not trusted by the client.
    let infra = ServerTls::server(
        files(&p.dir, "infra-n1", &p.infra, Role::Apiserver, "n1"),
        Accept::AnyRole,
    )
    .unwrap();
    let err = handshake(c, infra.config()).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
}

#[test]
fn reload_installs_changed_files_and_keeps_the_old_config_on_bad_ones() {
    let p = pki();
    let files = files(&p.dir, "n1", &p.apps, Role::Apiserver, "n1");
    let server = ServerTls::server(files.clone(), Accept::AnyRole).unwrap();
    assert!(!server.reload().unwrap(), "nothing changed");

    let before = server.config();
    let renewed = p
        .apps
        .issue(&LeafSpec {
            identity: Identity::new("apps", Role::Apiserver, "n1-renewed").unwrap(),
            sans: vec!["localhost".to_owned()],
            validity: Validity::days_from_now(LEAF_DAYS),
        })
        .unwrap();
    write_pem(&files.cert, &renewed.cert_pem).unwrap();
    write_pem(&files.key, &renewed.key_pem).unwrap();
    assert!(server.reload().unwrap());
    assert_eq!(server.identity().name, "n1-renewed");
    assert!(!Arc::ptr_eq(&before, &server.config()));
    let c = client(files_clone_for_admin(&p));
    handshake(c, server.config()).unwrap();

    // A half-written key: refused, and the renewed configuration stays.
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\ngarbage").unwrap();
    assert!(server.reload().is_err());
    assert_eq!(server.identity().name, "n1-renewed");

    // A certificate of another cluster: refused.
    let infra = p
        .infra
        .issue(&LeafSpec {
            identity: Identity::new("infra", Role::Apiserver, "n1").unwrap(),
            sans: vec!["localhost".to_owned()],
            validity: Validity::days_from_now(LEAF_DAYS),
        })
        .unwrap();
    write_pem(&files.cert, &infra.cert_pem).unwrap();
    write_pem(&files.key, &infra.key_pem).unwrap();
    assert!(server.reload().is_err());
    assert_eq!(server.identity().cluster, "apps");

    // A certificate of the same cluster with another role: refused.
    let admin = p
        .apps
        .issue(&LeafSpec {
            identity: Identity::new("apps", Role::Admin, "n1").unwrap(),
            sans: vec!["localhost".to_owned()],
            validity: Validity::days_from_now(LEAF_DAYS),
        })
        .unwrap();
    write_pem(&files.cert, &admin.cert_pem).unwrap();
    write_pem(&files.key, &admin.key_pem).unwrap();
    let err = server.reload().unwrap_err();
    assert!(
        err.to_string().contains("cannot change cluster or role"),
        "{err}"
    );
    assert_eq!(server.identity().role, Role::Apiserver);
}

fn files_clone_for_admin(p: &Pki) -> TlsFiles {
    files(&p.dir, "admin", &p.apps, Role::Admin, "ops")
}

/// What `meshctl connect` writes into `apps` for reading `infra`: a remote certificate issued
/// by infra's CA for apps, and infra's CA.
fn remote_material(p: &Pki, role: Role) -> (String, String, String) {
    let issued = p
        .infra
        .issue(&LeafSpec {
            identity: Identity::new("infra", role, "apps").unwrap(),
            sans: Vec::new(),
            validity: Validity::days_from_now(LEAF_DAYS),
        })
        .unwrap();
    (
        p.infra.cert_pem().to_owned(),
        issued.cert_pem,
        issued.key_pem,
    )
}

#[test]
fn a_remote_client_accepts_only_the_remotes_members_under_any_host_name() {
    let p = pki();
    let (ca_pem, cert_pem, key_pem) = remote_material(&p, Role::Remote);
    let m = RemoteMaterial {
        cluster: "infra",
        ca_pem: &ca_pem,
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    };
    let c = Arc::new(remote_client(&m).unwrap());
    let infra = ServerTls::server(
        files(&p.dir, "infra-n1", &p.infra, Role::Apiserver, "n1"),
        Accept::AnyRole,
    )
    .unwrap();
    // A load balancer name that is not in the member's certificate: accepted, and the
    // server sees infra's remote identity for apps.
    let seen = handshake_to("lb.infra.example.com", c.clone(), infra.config()).unwrap();
    assert_eq!(seen, Identity::new("infra", Role::Remote, "apps").unwrap());

    // Not a member of infra (an admin certificate is not even valid for serving): refused.
    let impostor = ServerTls::server(
        files(&p.dir, "infra-admin", &p.infra, Role::Admin, "ops"),
        Accept::AnyRole,
    )
    .unwrap();
    let err = handshake(c.clone(), impostor.config()).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");

    // A member of another cluster: its CA is not trusted.
    let apps = ServerTls::server(
        files(&p.dir, "apps-n1", &p.apps, Role::Apiserver, "n1"),
        Accept::AnyRole,
    )
    .unwrap();
    let err = handshake(c, apps.config()).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
}

#[test]
fn remote_material_of_the_wrong_role_or_cluster_is_refused() {
    let p = pki();
    let (ca_pem, cert_pem, key_pem) = remote_material(&p, Role::Admin);
    let err = remote_client(&RemoteMaterial {
        cluster: "infra",
        ca_pem: &ca_pem,
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("not a remote certificate"),
        "{err}"
    );

    let (_, cert_pem, key_pem) = remote_material(&p, Role::Remote);
    let err = remote_client(&RemoteMaterial {
        cluster: "infra",
        ca_pem: p.apps.cert_pem(),
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    })
    .unwrap_err();
    assert!(err.to_string().contains("CA of cluster apps"), "{err}");

    let err = remote_client(&RemoteMaterial {
        cluster: "edge",
        ca_pem: p.infra.cert_pem(),
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("not a remote certificate of cluster edge"),
        "{err}"
    );
}

#[test]
fn verify_issued_by_tells_the_issuing_ca() {
    let p = pki();
    let (_, cert_pem, _) = remote_material(&p, Role::Remote);
    verify_issued_by(&cert_pem, p.infra.cert_pem()).unwrap();
    assert!(verify_issued_by(&cert_pem, p.apps.cert_pem()).is_err());
}
