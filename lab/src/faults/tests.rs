use std::net::Ipv4Addr;

use super::*;

#[test]
fn partitions_and_heals_are_per_unordered_pair() {
    let mut f = Faults::default();
    assert!(f.partition("infra", "apps"));
    assert!(!f.partition("apps", "infra"), "the same pair");
    assert_eq!(f.partitions, [("apps".to_owned(), "infra".to_owned())]);
    f.degrade(
        "apps",
        "infra",
        Degrade {
            delay_ms: 50,
            jitter_ms: 0,
            loss_pct: 5,
        },
    );
    assert!(f.delays());
    assert!(f.heal("infra", "apps"));
    assert!(f.partitions.is_empty() && f.degraded.is_empty());
    assert!(!f.heal("apps", "infra"));
}

#[test]
fn the_ruleset_cuts_both_ways_and_degrades_by_pair() {
    let spec = crate::spec::LabSpec::default_lab();
    let plan = Plan::new(4);
    let mut f = Faults::default();
    let clean = f.ruleset(&plan, &spec);
    assert!(
        !clean.contains("drop") && !clean.contains("queue"),
        "{clean}"
    );
    assert!(
        clean.contains("elements = { 192.168.1.0/24, 10.1.0.0/16, 198.18.4.16/28 }"),
        "{clean}"
    );
    f.partition("apps", "infra");
    let cut = f.ruleset(&plan, &spec);
    assert!(
        cut.contains("ip saddr @c_apps ip daddr @c_infra counter drop"),
        "{cut}"
    );
    assert!(
        cut.contains("ip saddr @c_infra ip daddr @c_apps counter drop"),
        "{cut}"
    );
    f.heal("apps", "infra");
    f.degrade(
        "infra",
        "apps",
        Degrade {
            delay_ms: 0,
            jitter_ms: 0,
            loss_pct: 5,
        },
    );
    let lossy = f.ruleset(&plan, &spec);
    assert!(
        lossy.contains("numgen random mod 100 < 5 counter drop"),
        "{lossy}"
    );
    assert!(!lossy.contains("queue"));
    f.degrade(
        "apps",
        "infra",
        Degrade {
            delay_ms: 0,
            jitter_ms: 0,
            loss_pct: 100,
        },
    );
    let all = f.ruleset(&plan, &spec);
    assert!(
        all.contains("ip saddr @c_apps ip daddr @c_infra counter drop comment \"loss apps infra\""),
        "100% needs no numgen (its range is 0..=99): {all}"
    );
    let slow_pair = Degrade {
        delay_ms: 200,
        jitter_ms: 50,
        loss_pct: 0,
    };
    f.degrade("apps", "infra", slow_pair);
    assert_eq!(
        f.ruleset(&plan, &spec),
        clean,
        "delay is not in the nftables rules"
    );
    let slow = f.delay_rules(&plan, &spec);
    let rules: Vec<&str> = slow.lines().filter(|l| l.starts_with("-A")).collect();
    assert_eq!(rules.len(), 18, "3 × 3 prefixes each way: {slow}");
    assert!(slow.contains("-A RAFTMESH_LAB_DELAY -s 10.1.0.0/16 -d 198.18.4.32/28 -j NFQUEUE --queue-num 100 --queue-bypass"), "{slow}");
    assert!(
        slow.contains(
            "-A RAFTMESH_LAB_DELAY -s 192.168.2.0/24 -d 10.1.0.0/16 -j NFQUEUE --queue-num 100"
        ),
        "{slow}"
    );
    assert_eq!(f.delay_queues(), [(100, slow_pair)]);
    let none = Degrade {
        delay_ms: 0,
        jitter_ms: 0,
        loss_pct: 0,
    };
    f.degrade("apps", "infra", none);
    assert_eq!(
        f.ruleset(&plan, &spec),
        clean,
        "zero delay and loss removes it"
    );
    assert!(f.delay_queues().is_empty());
    assert!(
        !f.delay_rules(&plan, &spec).contains("-A"),
        "an empty chain"
    );
}

#[test]
fn an_isolated_member_drops_its_peers_both_ways_and_rejoining_removes_the_table() {
    let mut f = Faults::default();
    assert!(f.isolate("apps/m2"));
    assert!(!f.isolate("apps/m2"), "once");
    assert!(f.isolate("apps/m1"));
    assert_eq!(f.isolated, ["apps/m1", "apps/m2"]);
    let peers = [
        Ipv4Addr::new(192, 168, 1, 101),
        Ipv4Addr::new(198, 18, 0, 17),
    ];
    let on = isolation_ruleset(true, &peers);
    assert!(
        on.contains("elements = { 192.168.1.101, 198.18.0.17 }"),
        "{on}"
    );
    assert!(on.contains("ip saddr @peers counter drop"), "{on}");
    assert!(on.contains("ip daddr @peers counter drop"), "{on}");
    let off = isolation_ruleset(false, &peers);
    assert_eq!(
        off,
        format!("table ip {ISOLATE_TABLE} {{}}\ndelete table ip {ISOLATE_TABLE}\n")
    );
    assert!(f.rejoin("apps/m2"));
    assert!(!f.rejoin("apps/m2"));
    assert_eq!(f.isolated, ["apps/m1"]);
}

#[test]
fn an_unplugged_node_loses_its_address_and_pod_range_both_ways() {
    let spec = crate::spec::LabSpec::default_lab();
    let plan = Plan::new(4);
    let mut f = Faults::default();
    assert!(f.unplug("infra/node-2"));
    assert!(!f.unplug("infra/node-2"), "already");
    let rules = f.ruleset(&plan, &spec);
    for dir in ["saddr", "daddr"] {
        let rule = format!(
            "ip {dir} {{ 192.168.2.2, 10.2.2.0/24 }} counter drop comment \"unplugged infra/node-2\""
        );
        assert!(rules.contains(&rule), "{rules}");
    }
    // Nothing else of infra is cut.
    assert_eq!(rules.matches("drop").count(), 2, "{rules}");
    assert!(f.plug("infra/node-2"));
    assert!(!f.plug("infra/node-2"));
    assert!(!f.ruleset(&plan, &spec).contains("drop"));
    // A node the lab does not have cuts nothing (the lab refuses it before it is recorded).
    f.unplug("infra/node-9");
    assert!(!f.ruleset(&plan, &spec).contains("drop"));
}
