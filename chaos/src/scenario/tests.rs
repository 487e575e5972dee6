use super::*;

#[test]
fn tally_counts_answers_in_the_window_only() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let answers: Vec<Answer> = vec![
        (at(0), true, Some("apps".to_owned())),
        (at(100), true, Some("infra".to_owned())),
        (at(200), false, None),
        (at(300), true, Some("apps".to_owned())),
        (at(900), true, Some("infra".to_owned())),
    ];
    assert_eq!(tally(&answers, at(100), at(300), "apps"), (3, 1, 1));
    assert_eq!(tally(&answers, at(100), at(300), "infra"), (3, 1, 1));
    assert_eq!(tally(&answers, at(0), at(1000), "infra"), (5, 1, 2));
    assert_eq!(tally(&answers, at(400), at(800), "apps"), (0, 0, 0));
}

#[test]
fn the_chaos_lab_adds_churn_pods_and_an_unshared_local_service() {
    let spec = chaos_spec(Duration::from_millis(1500));
    assert_eq!(spec.remote_stale_after, "1500ms");
    assert!(lab::spec::parse_duration(&spec.remote_stale_after).is_some());
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
