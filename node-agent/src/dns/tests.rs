//! Golden answers: records (a ClusterSetIP import exported by infra only, a headless one
//! exported by both clusters) → what `clusterset.local` answers.

use super::*;
use crate::testing::*;

fn mesh() -> Mesh {
    let mut m = Mesh::default();
    m.cluster_in_clusterset("apps", 1, "198.18.0.0/16")
        .cluster("infra", 2)
        .exported("infra", "demo/echo", &["10.100.0.10"], 100)
        .slice("infra", "demo/echo", "x", 9090, &[ready("10.2.0.21")])
        .export_with(
            "infra",
            "demo/db",
            &[],
            50,
            true,
            vec![port("http", 80, "TCP")],
        )
        .named_slice(
            "infra",
            "demo/db",
            "d",
            5432,
            &[("10.2.0.31", "db-0"), ("10.2.0.32", "")],
        )
        .export_with(
            "apps",
            "demo/db",
            &[],
            60,
            true,
            vec![port("http", 80, "TCP")],
        )
        .named_slice("apps", "demo/db", "d", 5432, &[("10.1.0.31", "db-0")])
        .slice("apps", "demo/db", "e", 5432, &[not_ready("10.1.0.39")]);
    m.state.refresh_clusterset("apps");
    m
}

fn zone(m: &Mesh) -> Zone {
    let z = Zone::new(DEFAULT_ZONE).unwrap();
    z.replace(&m.state);
    z
}

/// `NAME TYPE -> CODE [records…] [soa]`, one line.
fn ask(z: &Zone, name: &str, qtype: RecordType) -> String {
    let qname = Name::from_str(name).unwrap().to_lowercase();
    let a = z.answer(&qname, qtype);
    let mut line = format!("{name} {qtype} -> {:?}", a.code);
    for r in &a.answers {
        line.push_str(&format!(" | {} {} {}", r.name, r.ttl, r.data));
    }
    if a.soa.is_some() {
        line.push_str(" | soa");
    }
    line
}

#[test]
fn answers_are_as_the_mcs_dns_specification_says() {
    let m = mesh();
    let z = zone(&m);
    let ip = m.state.clusterset.ips["demo/echo"];
    let cases: Vec<(&str, RecordType, String)> = vec![
        (
            "echo.demo.svc.clusterset.local.",
            RecordType::A,
            format!("NoError | echo.demo.svc.clusterset.local. 5 {ip}"),
        ),
        // Case does not matter.
        (
            "Echo.DEMO.svc.clusterset.local.",
            RecordType::A,
            format!("NoError | echo.demo.svc.clusterset.local. 5 {ip}"),
        ),
        ("echo.demo.svc.clusterset.local.", RecordType::AAAA, "NoError | soa".into()),
        (
            "_http._tcp.echo.demo.svc.clusterset.local.",
            RecordType::SRV,
            "NoError | _http._tcp.echo.demo.svc.clusterset.local. 5 0 100 80 echo.demo.svc.clusterset.local.".into(),
        ),
        (
            "_dns._udp.echo.demo.svc.clusterset.local.",
            RecordType::SRV,
            "NoError | _dns._udp.echo.demo.svc.clusterset.local. 5 0 100 53 echo.demo.svc.clusterset.local.".into(),
        ),
        ("_http._udp.echo.demo.svc.clusterset.local.", RecordType::SRV, "NXDomain | soa".into()),
        // The bare name: every named port, as CoreDNS answers it.
        (
            "echo.demo.svc.clusterset.local.",
            RecordType::SRV,
            "NoError | echo.demo.svc.clusterset.local. 5 0 100 53 echo.demo.svc.clusterset.local. | echo.demo.svc.clusterset.local. 5 0 100 80 echo.demo.svc.clusterset.local.".into(),
        ),
        // Headless: the ready endpoints of both clusters; not-ready ones left out.
        (
            "db.demo.svc.clusterset.local.",
            RecordType::A,
            "NoError | db.demo.svc.clusterset.local. 5 10.1.0.31 | db.demo.svc.clusterset.local. 5 10.2.0.31 | db.demo.svc.clusterset.local. 5 10.2.0.32".into(),
        ),
        (
            "db-0.infra.db.demo.svc.clusterset.local.",
            RecordType::A,
            "NoError | db-0.infra.db.demo.svc.clusterset.local. 5 10.2.0.31".into(),
        ),
        (
            "db-0.apps.db.demo.svc.clusterset.local.",
            RecordType::A,
            "NoError | db-0.apps.db.demo.svc.clusterset.local. 5 10.1.0.31".into(),
        ),
        (
            "10-2-0-32.infra.db.demo.svc.clusterset.local.",
            RecordType::A,
            "NoError | 10-2-0-32.infra.db.demo.svc.clusterset.local. 5 10.2.0.32".into(),
        ),
        ("10-1-0-39.apps.db.demo.svc.clusterset.local.", RecordType::A, "NXDomain | soa".into()),
        ("db-1.infra.db.demo.svc.clusterset.local.", RecordType::A, "NXDomain | soa".into()),
        // SRV per endpoint at the endpoint's (slice) port.
        (
            "_http._tcp.db.demo.svc.clusterset.local.",
            RecordType::SRV,
            "NoError | _http._tcp.db.demo.svc.clusterset.local. 5 0 100 5432 db-0.apps.db.demo.svc.clusterset.local. | _http._tcp.db.demo.svc.clusterset.local. 5 0 100 5432 10-2-0-32.infra.db.demo.svc.clusterset.local. | _http._tcp.db.demo.svc.clusterset.local. 5 0 100 5432 db-0.infra.db.demo.svc.clusterset.local.".into(),
        ),
        // The names between the zone and a record exist, without records.
        ("infra.db.demo.svc.clusterset.local.", RecordType::A, "NoError | soa".into()),
        ("demo.svc.clusterset.local.", RecordType::A, "NoError | soa".into()),
        ("svc.clusterset.local.", RecordType::A, "NoError | soa".into()),
        ("edge.db.demo.svc.clusterset.local.", RecordType::A, "NXDomain | soa".into()),
        // Not exported anywhere.
        ("web.demo.svc.clusterset.local.", RecordType::A, "NXDomain | soa".into()),
        ("echo.prod.svc.clusterset.local.", RecordType::A, "NXDomain | soa".into()),
        ("prod.svc.clusterset.local.", RecordType::A, "NXDomain | soa".into()),
        ("x.echo.demo.svc.clusterset.local.", RecordType::A, "NXDomain | soa".into()),
        (
            "dns-version.clusterset.local.",
            RecordType::TXT,
            "NoError | dns-version.clusterset.local. 5 1.0.0".into(),
        ),
        (
            "clusterset.local.",
            RecordType::SOA,
            "NoError | clusterset.local. 5 ns.dns.clusterset.local. hostmaster.clusterset.local. 1 5 5 86400 5".into(),
        ),
        // Not ours: no recursion.
        ("echo.demo.svc.cluster.local.", RecordType::A, "Refused".into()),
        ("example.com.", RecordType::A, "Refused".into()),
    ];
    let mut wrong = Vec::new();
    for (name, qtype, want) in cases {
        let got = ask(&z, name, qtype);
        let want = format!("{name} {qtype} -> {want}");
        if got != want {
            wrong.push(format!("got  {got}\nwant {want}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn updates_follow_the_imports() {
    let mut m = mesh();
    let z = zone(&m);
    assert_eq!(z.len(), 2);
    // Unexported everywhere: NXDOMAIN once the zone is updated for the changed name.
    m.service(
        "infra",
        "demo/echo",
        &["10.100.0.10"],
        false,
        true,
        mesh_api::records::Affinity::None,
    );
    let changed = m.state.refresh_clusterset("apps");
    z.update(&m.state, &changed);
    assert!(ask(&z, "echo.demo.svc.clusterset.local.", RecordType::A).ends_with("NXDomain | soa"));
    assert_eq!(z.len(), 1);
    // A headless import whose endpoints all stop being ready: NXDOMAIN, per the spec.
    m.slice("infra", "demo/db", "d", 5432, &[not_ready("10.2.0.31")]);
    m.slice("apps", "demo/db", "d", 5432, &[not_ready("10.1.0.31")]);
    z.update(&m.state, &["demo/db".to_owned()]);
    assert!(ask(&z, "db.demo.svc.clusterset.local.", RecordType::A).ends_with("NXDomain | soa"));
}

#[test]
fn another_zone_name_is_served_and_a_bad_one_refused() {
    let m = mesh();
    let z = Zone::new("mesh.example").unwrap();
    z.replace(&m.state);
    let ip = m.state.clusterset.ips["demo/echo"];
    assert_eq!(
        ask(&z, "echo.demo.svc.mesh.example.", RecordType::A),
        format!("echo.demo.svc.mesh.example. A -> NoError | echo.demo.svc.mesh.example. 5 {ip}")
    );
    assert!(Zone::new("bad..zone").is_err());
}

#[test]
fn a_bare_srv_query_names_each_port_number_once() {
    // The conformance suite's `hello`: `tcp` 42/TCP and `udp` 42/UDP → one SRV record.
    let mut m = Mesh::default();
    m.cluster_in_clusterset("apps", 1, "198.18.0.0/16")
        .export_with(
            "apps",
            "demo/hello",
            &["10.96.0.42"],
            1,
            false,
            vec![port("tcp", 42, "TCP"), port("udp", 42, "UDP")],
        );
    m.state.refresh_clusterset("apps");
    let z = zone(&m);
    assert_eq!(
        ask(&z, "hello.demo.svc.clusterset.local.", RecordType::SRV),
        "hello.demo.svc.clusterset.local. SRV -> NoError | hello.demo.svc.clusterset.local. 5 0 100 42 hello.demo.svc.clusterset.local."
    );
}
