use super::*;

#[test]
fn the_chaos_lab_adds_churn_pods_and_an_unshared_local_service() {
    let spec = chaos_spec(Duration::from_millis(1500));
    assert_eq!(spec.remote_stale_after, Duration::from_millis(1500));
    for c in &spec.clusters {
        let local = c.services.iter().find(|s| s.name == "local").unwrap();
        assert!(
            local.global && !local.shared,
            "programmed, but local backends only"
        );
        assert_eq!(
            c.pods
                .iter()
                .filter(|p| p.name.starts_with("churn-"))
                .count(),
            4
        );
        assert!(c.services.iter().any(|s| s.name == "churn" && s.global));
    }
    // The spec the lab gets is one it accepts (JSON is YAML).
    let text = serde_json::to_string(&spec).unwrap();
    assert_eq!(LabSpec::parse(&text).unwrap(), spec);
}

#[test]
fn every_scenario_is_known_and_nothing_else() {
    for (name, _) in SCENARIOS {
        assert!(known(name).is_ok());
    }
    let err = known("nope").unwrap_err().to_string();
    assert!(err.contains("partition") && err.contains("nope"), "{err}");
}
