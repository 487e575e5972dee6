use clap::Parser;

use super::*;

fn flags(args: &[&str]) -> Flags {
    let mut all = vec!["mesh-apiserver", "--insecure-plaintext"];
    all.extend(args);
    let mut f = Flags::try_parse_from(all).unwrap();
    // The defaults are https:// URLs; these tests run plaintext.
    for urls in [
        &mut f.listen_client_urls,
        &mut f.advertise_client_urls,
        &mut f.listen_peer_urls,
        &mut f.initial_advertise_peer_urls,
    ] {
        for u in urls.iter_mut() {
            *u = u.replace("https://", "http://");
        }
    }
    f.initial_cluster = f.initial_cluster.replace("https://", "http://");
    f
}

fn error(args: &[&str]) -> String {
    Config::validate(&flags(args)).unwrap_err().to_string()
}

#[test]
fn defaults_validate() {
    let c = Config::validate(&flags(&[])).unwrap();
    assert_eq!(c.listen_client, ["127.0.0.1:2379"]);
    assert!(c.publisher.is_none() && c.local_tls.is_none());
    assert_eq!((c.mirror.cluster, c.mirror.cluster_id), (None, None));
    assert_eq!(c.mirror.settings.disconnect_grace, Duration::from_secs(180));
    assert_eq!(c.mirror.settings.max_bytes, 256 << 20);
}

#[test]
fn the_cluster_record_flags_are_checked_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let c = Config::validate(&flags(&[
        "--cluster-name",
        "apps",
        "--cluster-id",
        "1",
        "--manifests-dir",
        d,
        "--pod-cidr",
        "10.1.0.0/16,fd00:1::/64",
        "--service-cidr",
        "10.96.0.0/12",
        "--advertise-remote-urls",
        "https://lb.apps.example.com:2379",
    ]))
    .unwrap();
    assert_eq!(c.mirror.cluster.as_deref(), Some("apps"));
    assert_eq!(c.mirror.cluster_id, Some(1));
    let publisher = c.publisher.unwrap();
    assert_eq!(publisher.settings.cluster, "apps");
    assert_eq!(publisher.settings.cluster_id, 1);
    assert_eq!(
        publisher.source,
        crate::publish::SourceConfig::Manifests(d.into())
    );
    let record = publisher.record;
    assert_eq!(record.pod_cidrs.len(), 2);
    assert_eq!(record.service_cidrs[0].to_string(), "10.96.0.0/12");
    assert_eq!(record.remote_urls, ["https://lb.apps.example.com:2379"]);
    assert!(record.ca_fingerprint.is_empty(), "plaintext: no CA");
}

#[test]
fn bad_values_name_the_flag() {
    let e = error(&[
        "--pod-cidr",
        "10.1.0.1/16",
        "--cluster-name",
        "a",
        "--cluster-id",
        "1",
    ]);
    assert!(e.contains("--pod-cidr") && e.contains("host bits"), "{e}");
    let e = error(&[
        "--advertise-remote-urls",
        "lb:2379",
        "--cluster-name",
        "a",
        "--cluster-id",
        "1",
    ]);
    assert!(e.contains("--advertise-remote-urls"), "{e}");
    let e = error(&["--pod-cidr", "10.1.0.0/16"]);
    assert!(e.contains("need --cluster-name"), "{e}");
    let e = error(&["--disconnect-grace", "soon"]);
    assert!(e.contains("--disconnect-grace"), "{e}");
    let e = error(&["--cluster-name", "apps"]);
    assert!(e.contains("go together"), "{e}");
    let e = error(&["--election-timeout", "100"]);
    assert!(e.contains("--election-timeout"), "{e}");
    let e = error(&["--remote-max-keys", "0"]);
    assert!(e.contains("--remote-max-keys"), "{e}");
}

#[test]
fn tls_is_required_unless_plaintext_is_asked_for() {
    let f = Flags::try_parse_from(["mesh-apiserver"]).unwrap();
    let e = Config::validate(&f).unwrap_err().to_string();
    assert!(
        e.contains("--cert-file") && e.contains("meshctl pki init"),
        "{e}"
    );
    let e = error(&["--cert-file", "/x"]);
    assert!(e.contains("serves no TLS"), "{e}");
}

#[test]
fn durations_take_units_or_etcds_bare_numbers() {
    let secs = Duration::from_secs(1);
    let hours = Duration::from_secs(3600);
    assert_eq!(
        member::duration_or_number("90s", secs),
        Ok(Duration::from_secs(90))
    );
    assert_eq!(
        member::duration_or_number("3m", secs),
        Ok(Duration::from_secs(180))
    );
    assert_eq!(
        member::duration_or_number("1.5h", secs),
        Ok(Duration::from_secs(5400))
    );
    assert_eq!(
        member::duration_or_number("250ms", secs),
        Ok(Duration::from_millis(250))
    );
    assert_eq!(
        member::duration_or_number("2", hours),
        Ok(Duration::from_secs(7200))
    );
    assert!(member::duration_or_number("-1s", secs).is_err());
    assert!(member::duration_or_number("-1", secs).is_err());
    assert!(member::duration_or_number("", secs).is_err());
}

#[test]
fn the_clusterset_range_is_ipv4_large_enough_and_clear_of_the_clusters_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = [
        "--cluster-name",
        "apps",
        "--cluster-id",
        "1",
        "--service-cidr",
        "10.96.0.0/12",
        "--manifests-dir",
        d,
    ];
    let with = |range: &'static str| {
        let mut args = base.to_vec();
        args.extend(["--clusterset-service-cidr", range]);
        args
    };
    let c = Config::validate(&flags(&with("198.18.0.0/16"))).unwrap();
    let range = c.publisher.unwrap().record.clusterset_cidr.unwrap();
    assert_eq!(range.to_string(), "198.18.0.0/16");
    for (range, says) in [
        ("10.100.0.0/16", "overlaps the cluster's range 10.96.0.0/12"),
        ("fd00::/64", "IPv4"),
        ("198.18.0.0/31", "at least a /30"),
        ("198.18.0.1/16", "host bits"),
    ] {
        let e = error(&with(range));
        assert!(
            e.contains("--clusterset-service-cidr") && e.contains(says),
            "{range}: {e}"
        );
    }
    let e = error(&["--clusterset-service-cidr", "198.18.0.0/16"]);
    assert!(e.contains("need --cluster-name"), "{e}");
}
