use super::*;

fn cidr(s: &str) -> Cidr {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    (ip.parse().unwrap(), len.parse().unwrap())
}

/// What nft 1.0.6 prints (`nft -j list table ip raftmesh`) for the table [`script`] writes,
/// with sources {10.1.1.0/24, 10.1.2.10} and no destinations, after one exempted connection.
const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "raftmesh", "handle": 1}}, {"set": {"family": "ip", "name": "sources", "table": "raftmesh", "type": "ipv4_addr", "handle": 2, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.1.1.0", "len": 24}}, "10.1.2.10"]}}, {"set": {"family": "ip", "name": "destinations", "table": "raftmesh", "type": "ipv4_addr", "handle": 3, "flags": ["interval"]}}, {"chain": {"family": "ip", "table": "raftmesh", "name": "nomasq", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 90, "policy": "accept"}}, {"rule": {"family": "ip", "table": "raftmesh", "chain": "nomasq", "handle": 4, "comment": "raftmesh: pod traffic to other clusters keeps its pod address", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@sources"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@destinations"}}, {"counter": {"packets": 1, "bytes": 60}}, {"snat": {"addr": {"payload": {"protocol": "ip", "field": "saddr"}}}}]}}]}"#;

#[test]
fn reads_the_table_nft_lists() {
    let json: Value = serde_json::from_str(LISTED).unwrap();
    let (e, packets) = parse(&json).unwrap().expect("the table is complete");
    assert_eq!(
        e,
        Exemption::new([cidr("10.1.1.0/24"), cidr("10.1.2.10")], [])
    );
    assert_eq!(packets, 1);
}

#[test]
fn an_edited_table_is_not_the_exemption() {
    let edits: [(&str, &str); 4] = [
        (r#""prio": 90"#, r#""prio": 100"#),
        (
            r#"{"snat": {"addr": {"payload": {"protocol": "ip", "field": "saddr"}}}}"#,
            r#"{"accept": null}"#,
        ),
        (r#""right": "@destinations""#, r#""right": "@sources""#),
        (
            r#""name": "nomasq", "handle": 1"#,
            r#""name": "other", "handle": 1"#,
        ),
    ];
    for (from, to) in edits {
        assert!(LISTED.contains(from), "{from}");
        let json: Value = serde_json::from_str(&LISTED.replace(from, to)).unwrap();
        assert_eq!(parse(&json).unwrap(), None, "{from} → {to}");
    }
    let no_rule: Value = serde_json::from_str(
        r#"{"nftables": [{"table": {"family": "ip", "name": "raftmesh", "handle": 1}}]}"#,
    )
    .unwrap();
    assert_eq!(parse(&no_rule).unwrap(), None);
    assert!(parse(&serde_json::json!({"other": 1})).is_err());
}

#[test]
fn the_script_replaces_the_whole_table() {
    let e = Exemption::new(
        [cidr("10.1.1.0/24")],
        [cidr("10.2.1.0/24"), cidr("10.2.7.9")],
    );
    let s = script(&e);
    assert!(
        s.starts_with("table ip raftmesh {}\ndelete table ip raftmesh\n"),
        "{s}"
    );
    assert!(
        s.contains("set sources { type ipv4_addr; flags interval; elements = { 10.1.1.0/24 }; }"),
        "{s}"
    );
    assert!(s.contains("elements = { 10.2.1.0/24, 10.2.7.9 }"), "{s}");
    assert!(
        s.contains("type nat hook postrouting priority 90; policy accept;"),
        "{s}"
    );
    assert!(
        s.contains("ip saddr @sources ip daddr @destinations counter snat ip to ip saddr"),
        "{s}"
    );
    // Empty sets have no elements clause (nft refuses `elements = { }`).
    let empty = script(&Exemption::default());
    assert!(
        empty.contains("set destinations { type ipv4_addr; flags interval; }"),
        "{empty}"
    );
}

#[test]
fn sets_hold_only_the_outermost_cidrs() {
    let e = Exemption::new(
        [cidr("10.1.1.7/24"), cidr("10.1.1.10"), cidr("10.1.2.10")],
        [
            cidr("10.2.0.0/16"),
            cidr("10.2.3.0/24"),
            cidr("10.2.0.0/16"),
        ],
    );
    assert_eq!(
        e.sources.into_iter().collect::<Vec<_>>(),
        [cidr("10.1.1.0/24"), cidr("10.1.2.10")]
    );
    assert_eq!(
        e.destinations.into_iter().collect::<Vec<_>>(),
        [cidr("10.2.0.0/16")]
    );
}
