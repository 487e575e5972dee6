use super::*;

fn with_cluster(extra: &str) -> String {
    format!("clusters:\n- name: apps\n  id: 1\n{extra}")
}

fn field_of(e: SpecError) -> String {
    match e {
        SpecError::Invalid { field, .. } => field,
        SpecError::Parse(p) => panic!("parse error {p}"),
    }
}

#[test]
fn the_default_lab_is_two_clusters_with_a_global_service_in_both() {
    let spec = LabSpec::default_lab();
    let names: Vec<&str> = spec.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["apps", "infra"]);
    for c in &spec.clusters {
        assert_eq!((c.members, c.nodes), (3, 2), "{}", c.name);
        let echo = c.services.iter().find(|s| s.name == "echo").unwrap();
        assert!(echo.global);
        let backends = c
            .pods
            .iter()
            .filter(|p| p.labels.get("app").map(String::as_str) == Some("echo"));
        assert_eq!(backends.count(), 2, "{}", c.name);
        assert!(c.pods.iter().any(|p| p.name == "client"));
    }
    let apps = spec.cluster("apps").unwrap();
    let other = apps.pods.iter().find(|p| p.name == "other").unwrap();
    assert_ne!(other.labels.get("app").map(String::as_str), Some("client"));
    assert_eq!(spec.cluster("infra").unwrap().policies.len(), 1);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let spec = LabSpec::parse(&with_cluster(
        "  pods: [{name: a}, {name: b}, {name: c}]\n  services: [{name: s, selector: {app: a}, ports: [{name: p, port: 80}]}]\n",
    ))
    .unwrap();
    let c = &spec.clusters[0];
    assert_eq!((c.members, c.nodes), (3, 2));
    assert_eq!(spec.remote_stale_after, Duration::from_secs(10));
    let nodes: Vec<&str> = c.pods.iter().map(|p| p.node.as_deref().unwrap()).collect();
    assert_eq!(
        nodes,
        ["node-1", "node-2", "node-1"],
        "pods go to the nodes in turn"
    );
    assert!(c.pods.iter().all(|p| p.namespace == "demo" && p.ready));
    let s = &c.services[0];
    assert_eq!(
        (s.affinity.as_str(), s.shared, s.global),
        ("none", true, false)
    );
    assert_eq!(
        (s.ports[0].target_port, s.ports[0].protocol.as_str()),
        (8080, "TCP")
    );
}

#[test]
fn bad_specs_name_the_field() {
    let cases = [
        ("clusters: []\n", "clusters"),
        (&with_cluster("  members: 8\n"), "clusters[0].members"),
        (&with_cluster("  nodes: 0\n"), "clusters[0].nodes"),
        (
            &with_cluster("  pods: [{name: a, node: node-3}]\n"),
            "clusters[0].pods[0].node",
        ),
        (
            &with_cluster("  pods: [{name: a}, {name: a}]\n"),
            "clusters[0].pods[1].name",
        ),
        (
            &with_cluster("  pods: [{name: A}]\n"),
            "clusters[0].pods[0]",
        ),
        (
            &with_cluster(
                "  services: [{name: s, affinity: near, selector: {a: b}, ports: [{name: p, port: 1}]}]\n",
            ),
            "clusters[0].services[0].affinity",
        ),
        (
            &with_cluster(
                "  services: [{name: s, selector: {a: b}, ports: [{name: p, port: 1, protocol: SCTP}]}]\n",
            ),
            "clusters[0].services[0].ports[0].protocol",
        ),
        (
            &with_cluster("  services: [{name: s, selector: {}, ports: [{name: p, port: 1}]}]\n"),
            "clusters[0].services[0].selector",
        ),
        (
            "clusters:\n- {name: a, id: 1}\n- {name: b, id: 1}\n",
            "clusters[1].id",
        ),
        (
            "clusters:\n- {name: a, id: 1}\n- {name: a, id: 2}\n",
            "clusters[1].name",
        ),
        ("clusters:\n- {name: a, id: 251}\n", "clusters[0].id"),
    ];
    for (text, field) in cases {
        let e = LabSpec::parse(text).expect_err(text);
        assert_eq!(field_of(e), field, "{text}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let e = LabSpec::parse(&with_cluster("  node: 2\n")).unwrap_err();
    assert!(
        matches!(e, SpecError::Parse(ref m) if m.contains("unknown field")),
        "{e}"
    );
}

#[test]
fn the_stale_time_is_a_duration_written_back_as_given() {
    let spec = LabSpec::parse("remoteStaleAfter: 1500ms\nclusters:\n- {name: a, id: 1}\n").unwrap();
    assert_eq!(spec.remote_stale_after, Duration::from_millis(1500));
    let text = serde_yaml::to_string(&spec).unwrap();
    assert!(text.contains("remoteStaleAfter: 1500ms"), "{text}");
    let e = LabSpec::parse("remoteStaleAfter: soon\nclusters:\n- {name: a, id: 1}\n").unwrap_err();
    assert!(
        matches!(e, SpecError::Parse(ref m) if m.contains("remoteStaleAfter") && m.contains("\"soon\" is not a duration")),
        "{e}"
    );
}

#[test]
fn flavors_parse_default_to_plain_and_unknown_ones_are_refused() {
    let spec =
        LabSpec::parse("clusters:\n- {name: a, id: 1}\n- {name: b, id: 2, flavor: eks}\n").unwrap();
    assert_eq!(spec.clusters[0].flavor, crate::flavor::Flavor::Plain);
    assert_eq!(spec.clusters[1].flavor, crate::flavor::Flavor::Eks);
    let default = LabSpec::default_lab();
    assert_eq!(
        default.cluster("apps").unwrap().flavor,
        crate::flavor::Flavor::Talos
    );
    assert_eq!(
        default.cluster("infra").unwrap().flavor,
        crate::flavor::Flavor::Eks
    );
    let e = LabSpec::parse("clusters:\n- {name: a, id: 1, flavor: gke}\n").unwrap_err();
    assert!(
        matches!(e, SpecError::Parse(ref m) if m.contains("unknown variant `gke`") && m.contains("talos")),
        "{e}"
    );
}

#[test]
fn extra_flags_for_members_and_agents_must_be_flags() {
    let spec = LabSpec::parse(&format!(
        "apiserverArgs: [--remote-write-mib-per-minute, \"2\"]\nagentArgs: [--remote-pod-limit, \"1000\"]\n{}",
        with_cluster("")
    ))
    .unwrap();
    assert_eq!(spec.apiserver_args, ["--remote-write-mib-per-minute", "2"]);
    assert_eq!(spec.agent_args, ["--remote-pod-limit", "1000"]);
    let e = LabSpec::parse(&format!("agentArgs: [oops]\n{}", with_cluster(""))).unwrap_err();
    assert_eq!(field_of(e), "agentArgs");
}
