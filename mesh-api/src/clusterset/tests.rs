use super::*;

fn port(name: &str, port: u16, protocol: &str) -> ImportPort {
    ImportPort {
        name: name.to_owned(),
        port,
        protocol: protocol.to_owned(),
    }
}

fn export(cluster: &str, created: i64, ports: Vec<ImportPort>) -> Export {
    Export {
        cluster: cluster.to_owned(),
        created,
        headless: false,
        ports,
        session_affinity: SessionAffinity::None,
        internal_traffic_policy: None,
        traffic_distribution: None,
    }
}

#[test]
fn no_exports_no_import() {
    assert_eq!(merge(&[]), None);
}

#[test]
fn agreeing_exports_have_no_conflict() {
    let ports = vec![port("http", 80, "TCP"), port("dns", 53, "UDP")];
    let import = merge(&[
        export("infra", 20, ports.clone()),
        export("apps", 10, ports.into_iter().rev().collect()),
    ])
    .unwrap();
    assert_eq!(import.type_, ImportType::ClusterSetIp);
    assert_eq!(
        import.ports,
        vec![port("dns", 53, "UDP"), port("http", 80, "TCP")]
    );
    assert_eq!(import.clusters, vec!["apps", "infra"]);
    assert_eq!(import.decided_by, "apps");
    assert_eq!(import.created, 10);
    assert!(import.conflicts.is_empty(), "{:?}", import.conflicts);
    assert_eq!(import.conflict_reasons(), "");
}

#[test]
fn different_port_sets_give_the_union_and_a_port_conflict() {
    // The conformance suite's "union of the constituent service ports and raise a conflict".
    let import = merge(&[
        export(
            "infra",
            20,
            vec![port("http", 80, "TCP"), port("stcp", 142, "SCTP")],
        ),
        export("apps", 10, vec![port("http", 80, "TCP")]),
    ])
    .unwrap();
    assert_eq!(
        import.ports,
        vec![port("http", 80, "TCP"), port("stcp", 142, "SCTP")]
    );
    assert_eq!(import.conflict_reasons(), "PortConflict");
    assert_eq!(import.conflicts.len(), 1);
    assert_eq!(import.conflicts[0].cluster, "apps");
    assert_eq!(
        import.conflicts[0].message,
        r#"the export in apps lacks port "stcp" 142/SCTP: the import has the union of the exports' ports"#
    );
}

#[test]
fn the_oldest_export_wins_a_port_conflict_whatever_the_input_order() {
    let old = export("infra", 10, vec![port("http", 80, "TCP")]);
    let new = export("apps", 20, vec![port("http", 8080, "TCP")]);
    for exports in [
        vec![old.clone(), new.clone()],
        vec![new.clone(), old.clone()],
    ] {
        let import = merge(&exports).unwrap();
        assert_eq!(import.ports, vec![port("http", 80, "TCP")]);
        assert_eq!(import.decided_by, "infra");
        assert_eq!(import.conflicts.len(), 1);
        assert_eq!(import.conflicts[0].reason.reason(), "PortConflict");
        assert_eq!(import.conflicts[0].cluster, "apps");
        assert_eq!(
            import.conflicts[0].message,
            r#"port "http": 8080/TCP in apps, 80/TCP in infra (exported first)"#
        );
    }
}

#[test]
fn one_number_under_two_names_is_a_port_conflict() {
    let import = merge(&[
        export("infra", 10, vec![port("http", 80, "TCP")]),
        export("apps", 20, vec![port("web", 80, "TCP")]),
    ])
    .unwrap();
    assert_eq!(import.ports, vec![port("http", 80, "TCP")]);
    assert_eq!(import.conflicts[0].reason, ConflictReason::Port);
    assert_eq!(
        import.conflicts[0].message,
        r#"port 80/TCP is named "web" in apps, "http" in infra (exported first)"#
    );
}

#[test]
fn a_tie_in_age_goes_to_the_cluster_name() {
    let import = merge(&[
        export("b", 10, vec![port("http", 81, "TCP")]),
        export("a", 10, vec![port("http", 80, "TCP")]),
    ])
    .unwrap();
    assert_eq!(import.decided_by, "a");
    assert_eq!(import.ports, vec![port("http", 80, "TCP")]);
    assert_eq!(import.conflicts[0].cluster, "b");
}

#[test]
fn type_and_affinity_come_from_the_oldest_and_differences_are_conflicts() {
    let mut old = export("infra", 10, vec![port("", 80, "TCP")]);
    old.headless = true;
    old.session_affinity = SessionAffinity::ClientIp { timeout: 60 };
    let mut same_kind = export("apps", 20, vec![port("", 80, "TCP")]);
    same_kind.session_affinity = SessionAffinity::ClientIp { timeout: 30 };
    let mut no_affinity = export("edge", 30, vec![port("", 80, "TCP")]);
    no_affinity.headless = true;
    let import = merge(&[old, same_kind, no_affinity]).unwrap();
    assert_eq!(import.type_, ImportType::Headless);
    assert_eq!(
        import.session_affinity,
        SessionAffinity::ClientIp { timeout: 60 }
    );
    let reasons = |c: &str| -> Vec<&str> {
        import
            .conflicts
            .iter()
            .filter(|x| x.cluster == c)
            .map(|x| x.reason.reason())
            .collect()
    };
    assert_eq!(
        reasons("apps"),
        ["TypeConflict", "SessionAffinityConfigConflict"]
    );
    assert_eq!(reasons("edge"), ["SessionAffinityConflict"]);
    assert_eq!(
        import.conflict_reasons(),
        "TypeConflict,SessionAffinityConflict,SessionAffinityConfigConflict"
    );
    assert_eq!(
        import.conflicts[0].message,
        "ClusterSetIP in apps, Headless in infra (exported first)"
    );
}

/// Conformance: "The InternalTrafficPolicy (TrafficDistribution) for a ClusterSetIP
/// ServiceImport should match the exported service's" (Required), and the mcs-api's conflict
/// reasons for them.
#[test]
fn traffic_policy_and_distribution_come_from_the_oldest_and_differences_are_conflicts() {
    let mut old = export("infra", 10, vec![port("", 80, "TCP")]);
    old.internal_traffic_policy = Some("Local".into());
    old.traffic_distribution = Some("PreferClose".into());
    let alone = merge(std::slice::from_ref(&old)).unwrap();
    assert_eq!(alone.internal_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(alone.traffic_distribution.as_deref(), Some("PreferClose"));
    assert!(alone.conflicts.is_empty());

    let mut newer = export("apps", 20, vec![port("", 80, "TCP")]);
    newer.internal_traffic_policy = Some("Cluster".into());
    let import = merge(&[newer, old]).unwrap();
    assert_eq!(import.internal_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(import.traffic_distribution.as_deref(), Some("PreferClose"));
    assert_eq!(
        import.conflict_reasons(),
        "InternalTrafficPolicyConflict,TrafficDistributionConflict"
    );
    assert_eq!(
        import.conflicts[0].message,
        "internalTrafficPolicy Cluster in apps, Local in infra (exported first)"
    );
    assert_eq!(
        import.conflicts[1].message,
        "trafficDistribution unset in apps, PreferClose in infra (exported first)"
    );
}

/// A record's values reach an import only when they are what Kubernetes allows (a remote's
/// records are not trusted to be).
#[test]
fn a_record_s_traffic_fields_are_taken_only_when_well_formed() {
    let record = |itp: &str, td: &str| crate::records::ServiceRecord {
        exported: true,
        internal_traffic_policy: itp.into(),
        traffic_distribution: td.into(),
        ..Default::default()
    };
    let e = Export::of_record("infra", &record("Local", "PreferSameZone"));
    assert_eq!(e.internal_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(e.traffic_distribution.as_deref(), Some("PreferSameZone"));
    for (itp, td) in [
        ("", ""),
        ("Everywhere", "Prefer Close"),
        ("local", &"x".repeat(64)),
    ] {
        let e = Export::of_record("infra", &record(itp, td));
        assert_eq!(
            (e.internal_traffic_policy, e.traffic_distribution),
            (None, None),
            "{itp:?} {td:?}"
        );
    }
}

fn imports(list: &[(&str, &str, i64)]) -> BTreeMap<(String, String), i64> {
    list.iter()
        .map(|(ns, name, t)| (((*ns).to_owned(), (*name).to_owned()), *t))
        .collect()
}

#[test]
fn the_hash_is_fnv1a_64_as_documented() {
    // Published FNV-1a 64 test vectors.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn an_address_is_the_same_for_the_same_set_in_any_order_and_inside_the_range() {
    let range: Cidr = "10.255.0.0/16".parse().unwrap();
    let set = imports(&[("demo", "echo", 5), ("demo", "db", 7), ("prod", "web", 1)]);
    let a = allocate(&range, &set);
    // Another cluster builds its map from records arriving in another order.
    let mut reordered = BTreeMap::new();
    for (k, v) in set.iter().rev() {
        reordered.insert(k.clone(), *v);
    }
    assert_eq!(a, allocate(&range, &reordered));
    assert_eq!(a.len(), 3);
    let unique: BTreeSet<_> = a.values().collect();
    assert_eq!(unique.len(), 3);
    for ip in a.values() {
        assert!(range.contains((*ip).into()), "{ip}");
        assert_ne!(*ip, Ipv4Addr::new(10, 255, 0, 0), "network address");
        assert_ne!(*ip, Ipv4Addr::new(10, 255, 255, 255), "broadcast address");
    }
    // Pinned: a change of the rule would move every ClusterSetIP of a running clusterset.
    let key = ("demo".to_owned(), "echo".to_owned());
    let offset = fnv1a64(b"demo/echo#0") % 65534;
    assert_eq!(
        a[&key],
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 255, 0, 1)) + offset as u32)
    );
}

#[test]
fn unrelated_imports_coming_and_going_move_no_address() {
    let range: Cidr = "10.255.0.0/16".parse().unwrap();
    let base: Vec<(String, i64)> = (0..200).map(|i| (format!("svc-{i}"), i)).collect();
    let set: BTreeMap<(String, String), i64> = base
        .iter()
        .map(|(n, t)| (("demo".to_owned(), n.clone()), *t))
        .collect();
    let before = allocate(&range, &set);
    // Newer imports never move older ones, collisions or not.
    let mut grown = set.clone();
    for i in 0..500 {
        grown.insert(("other".to_owned(), format!("new-{i}")), 1_000 + i);
    }
    let after = allocate(&range, &grown);
    for (k, ip) in &before {
        assert_eq!(after[k], *ip, "{k:?} moved when newer imports came");
    }
    // Removing an import that collided with nobody moves nobody.
    let lone = before
        .iter()
        .find(|(k, _)| {
            let first = candidate(&k.0, &k.1, 0, 65534);
            set.keys()
                .filter(|o| *o != *k)
                .all(|o| (0..HASHED_CANDIDATES).all(|j| candidate(&o.0, &o.1, j, 65534) != first))
        })
        .map(|(k, _)| k.clone())
        .unwrap();
    let mut shrunk = set.clone();
    shrunk.remove(&lone);
    let after = allocate(&range, &shrunk);
    for (k, ip) in &after {
        assert_eq!(before[k], *ip, "{k:?} moved when {lone:?} went");
    }
}

#[test]
fn a_collision_goes_to_the_older_import_and_a_full_range_is_filled_exactly() {
    // A /30 has two usable addresses: the third import gets none, the older two keep theirs.
    let range: Cidr = "192.0.2.0/30".parse().unwrap();
    let set = imports(&[("a", "x", 3), ("a", "y", 1), ("a", "z", 2)]);
    let got = allocate(&range, &set);
    assert_eq!(got.len(), 2);
    assert!(got.contains_key(&("a".to_owned(), "y".to_owned())));
    assert!(got.contains_key(&("a".to_owned(), "z".to_owned())));
    let addrs: BTreeSet<_> = got.values().copied().collect();
    assert_eq!(
        addrs,
        BTreeSet::from([Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)])
    );
}

#[test]
fn an_ipv6_range_allocates_nothing_yet() {
    let range: Cidr = "fd00::/64".parse().unwrap();
    assert!(allocate(&range, &imports(&[("a", "x", 1)])).is_empty());
}
