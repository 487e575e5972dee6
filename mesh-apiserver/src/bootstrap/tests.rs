//! The bootstrap's decisions on TokenReview answers and pods shaped as the API returns them
//! (tests/fixtures/bootstrap/), and the whole exchange with a reviewer that answers from them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

fn fixture<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bootstrap")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn status(file: &str) -> TokenReviewStatus {
    fixture::<TokenReview>(file).status.unwrap()
}

fn agents() -> Vec<ServiceAccount> {
    vec!["mesh/r1-agent".parse().unwrap()]
}

#[test]
fn a_token_with_the_node_claim_names_its_node() {
    assert_eq!(
        claim(&status("review-node.json"), "raftmesh", &agents()),
        Ok(Claim::Node(
            "ip-10-0-12-34.eu-west-1.compute.internal".to_owned()
        ))
    );
}

#[test]
fn a_token_bound_to_a_pod_only_names_the_pod() {
    assert_eq!(
        claim(&status("review-pod-only.json"), "raftmesh", &agents()),
        Ok(Claim::Pod {
            namespace: "mesh".to_owned(),
            name: "r1-agent-x7k2p".to_owned(),
            uid: "8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b".to_owned(),
        })
    );
}

#[test]
fn tokens_are_refused_unless_valid_for_the_audience_from_an_allowed_account_and_bound() {
    let refused = |file: &str| claim(&status(file), "raftmesh", &agents()).unwrap_err();
    assert_eq!(
        refused("review-invalid.json"),
        Refusal::Unauthenticated("[invalid bearer token, token lookup failed]".to_owned())
    );
    assert!(matches!(
        refused("review-audience.json"),
        Refusal::Unauthenticated(m) if m.contains("not \"raftmesh\"")
    ));
    assert!(matches!(
        refused("review-other-account.json"),
        Refusal::Forbidden(m) if m.contains("system:serviceaccount:default:default")
    ));
    assert!(matches!(refused("review-user.json"), Refusal::Forbidden(_)));
    assert!(matches!(
        refused("review-no-audience.json"),
        Refusal::Unauthenticated(m) if m.contains("not \"raftmesh\"")
    ));
    assert!(matches!(
        refused("review-node-only.json"),
        Refusal::Forbidden(m) if m.contains("not bound to a pod")
    ));
    assert!(matches!(
        refused("review-unbound.json"),
        Refusal::Forbidden(m) if m.contains("not bound to a pod")
    ));
}

#[test]
fn a_pod_gives_its_node_only_if_it_is_the_tokens_pod() {
    let pod: Pod = fixture("pod-agent.json");
    let uid = "8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b";
    assert_eq!(node_of_pod(Some(&pod), uid), Ok("talos-w1".to_owned()));
    assert!(matches!(
        node_of_pod(Some(&pod), "another-uid"),
        Err(Refusal::Forbidden(m)) if m.contains("replaced")
    ));
    assert!(matches!(node_of_pod(None, uid), Err(Refusal::Forbidden(_))));
    let mut pending = pod.clone();
    pending.spec.as_mut().unwrap().node_name = None;
    assert!(matches!(
        node_of_pod(Some(&pending), uid),
        Err(Refusal::Forbidden(m)) if m.contains("not on a node")
    ));
}

#[test]
fn service_accounts_parse_as_namespace_slash_name() {
    assert_eq!(
        "mesh/r1-agent"
            .parse::<ServiceAccount>()
            .unwrap()
            .user_name(),
        "system:serviceaccount:mesh:r1-agent"
    );
    for bad in ["r1-agent", "/x", "x/", "a/b/c"] {
        assert!(bad.parse::<ServiceAccount>().is_err(), "{bad}");
    }
}

/// Answers reviews from fixtures by token, and pods by name; counts the pod reads.
struct Recorded {
    reviews: BTreeMap<&'static str, &'static str>,
    pods: Vec<Pod>,
    pod_reads: Mutex<usize>,
}

impl Reviewer for Recorded {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, String>> {
        assert_eq!(audience, "raftmesh");
        let answer = match self.reviews.get(token) {
            Some(file) => Ok(status(file)),
            None => Err("the API is unreachable".to_owned()),
        };
        Box::pin(async move { answer })
    }

    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, String>> {
        *self.pod_reads.lock().unwrap() += 1;
        let pod = self
            .pods
            .iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned();
        Box::pin(async move { Ok(pod) })
    }
}

fn issuer(dir: &std::path::Path, reviewer: Arc<Recorded>) -> Issuer {
    let ca = CertificateAuthority::generate("apps", Validity::days_from_now(30)).unwrap();
    certs::pki::write_pem(&dir.join("ca.crt"), ca.cert_pem()).unwrap();
    certs::pki::write_pem(&dir.join("ca.key"), &ca.key_pem()).unwrap();
    let settings = Settings {
        listen: Vec::new(),
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        service_accounts: agents(),
        audience: "raftmesh".to_owned(),
        validity: Duration::from_secs(24 * 3600),
    };
    assert!(
        Issuer::new(settings.clone(), "infra", reviewer.clone())
            .unwrap_err()
            .contains("cluster apps's")
    );
    Issuer::new(settings, "apps", reviewer).unwrap()
}

#[tokio::test]
async fn the_exchange_signs_the_node_the_token_proves_and_counts_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let reviewer = Arc::new(Recorded {
        reviews: BTreeMap::from([
            ("node-token", "review-node.json"),
            ("pod-token", "review-pod-only.json"),
            ("stranger", "review-other-account.json"),
        ]),
        pods: vec![fixture("pod-agent.json")],
        pod_reads: Mutex::new(0),
    });
    let issuer = issuer(dir.path(), reviewer.clone());
    let mut registry = Registry::default();
    issuer.register(&mut registry);
    let (csr, _key) = certs::pki::signing_request().unwrap();
    let ask = |token: &str| AgentCertificateRequest {
        token: token.to_owned(),
        csr: csr.clone(),
    };

    let got = issuer.issue(&ask("node-token")).await.unwrap();
    let (identity, not_after) = certs::pki::leaf_info(&got.certificate).unwrap();
    assert_eq!(
        identity,
        Identity::new(
            "apps",
            Role::Agent,
            "ip-10-0-12-34.eu-west-1.compute.internal"
        )
        .unwrap()
    );
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(24 * 3600) && left > Duration::from_secs(23 * 3600));
    certs::tls::verify_issued_by(&got.certificate, &got.ca).unwrap();
    assert_eq!(*reviewer.pod_reads.lock().unwrap(), 0, "the claim sufficed");

    let got = issuer.issue(&ask("pod-token")).await.unwrap();
    let (identity, _) = certs::pki::leaf_info(&got.certificate).unwrap();
    assert_eq!(identity.name, "talos-w1");
    assert_eq!(*reviewer.pod_reads.lock().unwrap(), 1);

    assert!(matches!(
        issuer.issue(&ask("stranger")).await,
        Err(Refusal::Forbidden(_))
    ));
    assert!(matches!(
        issuer.issue(&ask("unknown")).await,
        Err(Refusal::Unavailable(_))
    ));
    assert!(matches!(
        issuer.issue(&ask("")).await,
        Err(Refusal::BadRequest(_))
    ));
    let bad_csr = AgentCertificateRequest {
        token: "node-token".to_owned(),
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            .to_owned(),
    };
    assert!(matches!(
        issuer.issue(&bad_csr).await,
        Err(Refusal::BadRequest(_))
    ));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for (outcome, n) in [
        ("issued", 2),
        ("forbidden", 1),
        ("unavailable", 1),
        ("bad_request", 2),
    ] {
        let line = format!("bootstrap_requests_total{{outcome=\"{outcome}\"}} {n}");
        assert!(text.contains(&line), "{line} in {text}");
    }
}

/// Sends `raw` on a connection served as the bootstrap port serves one after TLS (hyper and
/// the real service), closing the sending side after it if `close`, and returns the raw
/// answer, read until the server ends the connection.
async fn over_http(issuer: &Arc<Issuer>, raw: &str, close: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(4 * MAX_REQUEST);
    let served = tokio::spawn(connection(server, issuer.clone()));
    // The server may answer and close before it has read all of an oversized request.
    let _ = client.write_all(raw.as_bytes()).await;
    if close {
        let _ = client.shutdown().await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the server ends the connection");
    served.await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code and body of a raw HTTP/1.1 answer.
fn status_and_body(answer: &str) -> (&str, &str) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    (head.split_whitespace().nth(1).unwrap_or_default(), body)
}

#[tokio::test]
async fn requests_are_read_bounded_and_only_at_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let reviewer = Arc::new(Recorded {
        reviews: BTreeMap::from([("node-token", "review-node.json")]),
        pods: Vec::new(),
        pod_reads: Mutex::new(0),
    });
    let issuer = Arc::new(issuer(dir.path(), reviewer));
    let mut registry = Registry::default();
    issuer.register(&mut registry);
    let (csr, _key) = certs::pki::signing_request().unwrap();
    let body = serde_json::to_string(&AgentCertificateRequest {
        token: "node-token".to_owned(),
        csr,
    })
    .unwrap();
    let request = |method: &str, path: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };

    // The exchange: JSON in, the certificate of the token's node out.
    let answer = over_http(&issuer, &request("POST", PATH, &body), false).await;
    let (status, text) = status_and_body(&answer);
    assert_eq!(status, "200", "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let got: AgentCertificateResponse = serde_json::from_str(text).unwrap();
    let (identity, _) = certs::pki::leaf_info(&got.certificate).unwrap();
    assert_eq!(identity.name, "ip-10-0-12-34.eu-west-1.compute.internal");

    // Refused by the service, with the reason as JSON.
    let chunked = |size: usize| {
        format!(
            "POST {PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size:x}\r\n{}\r\n0\r\n\r\n",
            "x".repeat(size)
        )
    };
    for (raw, why) in [
        (request("GET", PATH, ""), "only POST"),
        (request("POST", "/metrics", &body), "no such path"),
        // Without a Content-Length (nor chunks) the body is empty.
        (
            format!("POST {PATH} HTTP/1.1\r\nHost: x\r\n\r\n{body}"),
            "body: EOF",
        ),
        // Refused on the Content-Length alone, unread.
        (
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                MAX_REQUEST + 1
            ),
            "request body too large",
        ),
        // Refused once more than the bound has been read.
        (chunked(MAX_REQUEST + 1), "request body too large"),
        (request("POST", PATH, "{"), "body:"),
    ] {
        let answer = over_http(&issuer, &raw, false).await;
        let (status, text) = status_and_body(&answer);
        assert_eq!(status, "400", "{why}: {answer}");
        let error: ErrorResponse = serde_json::from_str(text).unwrap();
        assert!(error.error.contains(why), "{why}: {}", error.error);
    }

    // Refused by hyper before the service: a head beyond the bound, and what is not HTTP.
    let huge = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "x".repeat(MAX_HEAD)
    );
    let answer = over_http(&issuer, &huge, false).await;
    assert_eq!(status_and_body(&answer).0, "431", "{answer}");
    let answer = over_http(&issuer, "HELLO\r\n\r\n", false).await;
    assert_eq!(status_and_body(&answer).0, "400", "{answer}");
    // A head cut short by the client's close: nothing to answer, a bad request all the same.
    let answer = over_http(&issuer, &format!("POST {PATH} HTTP/1.1\r\nHo"), true).await;
    assert_eq!(answer, "");
    // A connection closed before any request is no request: not answered, not counted.
    assert_eq!(over_http(&issuer, "", true).await, "");

    // A body shorter than its Content-Length, then closed: no certificate.
    let short = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len() + 100
    );
    let answer = over_http(&issuer, &short, true).await;
    let (status, text) = status_and_body(&answer);
    assert_eq!(status, "400", "{answer}");
    let error: ErrorResponse = serde_json::from_str(text).unwrap();
    assert!(
        error.error.contains("reading the body") && error.error.contains("end of file"),
        "{}",
        error.error
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for (outcome, n) in [("issued", 1), ("bad_request", 10)] {
        let line = format!("bootstrap_requests_total{{outcome=\"{outcome}\"}} {n}");
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[tokio::test]
async fn idle_connections_cannot_hold_the_port_shut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let reviewer = Arc::new(Recorded {
        reviews: BTreeMap::new(),
        pods: Vec::new(),
        pod_reads: Mutex::new(0),
    });
    let issuer = Arc::new(issuer(dir.path(), reviewer));
    let mut registry = Registry::default();
    issuer.register(&mut registry);
    let ca =
        CertificateAuthority::load(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap();
    let server = ca
        .issue(&LeafSpec {
            identity: Identity::new("apps", Role::Apiserver, "n1").unwrap(),
            sans: vec!["localhost".to_owned()],
            validity: Validity::days_from_now(1),
        })
        .unwrap();
    certs::pki::write_pem(&dir.path().join("n1.crt"), &server.cert_pem).unwrap();
    certs::pki::write_pem(&dir.path().join("n1.key"), &server.key_pem).unwrap();
    let tls = Arc::new(
        ServerTls::server_without_client_auth(certs::tls::TlsFiles {
            cert: dir.path().join("n1.crt"),
            key: dir.path().join("n1.key"),
            ca: dir.path().join("ca.crt"),
        })
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    // 16 in progress at most, 2 from one address.
    tokio::spawn(serve(listener, tls, issuer, 16, stop.clone()));
    let connect_from = |source: &str| {
        let source: std::net::IpAddr = source.parse().unwrap();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((source, 0).into()).unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    // Closed: the server ends the connection (EOF or reset) within the wait.
    let closed = |mut c: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    let open = |mut c: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf))
            .await
            .is_err()
    };
    // One address opens three idle connections: its first is closed for its third.
    let a1 = connect_from("127.0.0.2").await;
    let a2 = connect_from("127.0.0.2").await;
    let a3 = connect_from("127.0.0.2").await;
    assert!(closed(a1).await, "the source's oldest is closed");
    // Idle connections from many addresses fill the port: the oldest go, newest stay.
    let mut idle = Vec::new();
    for i in 0..20 {
        idle.push(connect_from(&format!("127.0.1.{}", i + 1)).await);
    }
    assert!(
        closed(a2).await && closed(a3).await,
        "the oldest in all are closed"
    );
    let newest = idle.pop().unwrap();
    // An agent arriving now gets in, and its TLS handshake proceeds (the server answers the
    // ClientHello), rather than being closed unread as with a fixed number of slots.
    let mut agent = connect_from("127.0.0.1").await;
    agent.write_all(&client_hello()).await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), agent.read_exact(&mut buf))
        .await
        .expect("answered")
        .expect("a TLS record");
    assert_eq!(buf[0], 0x16, "a handshake record: {buf:?}");
    assert!(open(newest).await, "the newest idle one is still open");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("bootstrap_requests_total{outcome=\"evicted\"}"),
        "{text}"
    );
    stop.cancel();
}

/// A TLS 1.3 ClientHello for `localhost`, made by rustls itself.
fn client_hello() -> Vec<u8> {
    use std::io::Write as _;
    struct Capture(Vec<u8>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut out = Capture(Vec::new());
    conn.write_tls(&mut out).unwrap();
    out.flush().unwrap();
    out.0
}
