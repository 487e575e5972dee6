use std::time::{Duration, Instant};

use super::*;

const SECRET: u64 = 0x5eed_cafe_f00d_0001;

fn settings() -> Settings {
    Settings {
        port: 51872,
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(800),
        max_rate: 2_000,
    }
}

fn node(cluster: &str, name: &str) -> NodeRef {
    (cluster.to_owned(), name.to_owned())
}

fn listed(nodes: &[(&str, &str, &str)]) -> Targets {
    nodes
        .iter()
        .map(|(c, n, addr)| (node(c, n), Some(addr.parse().unwrap())))
        .collect()
}

/// What the remote agent at the probe's destination sends back.
fn answered(probe: &[u8; LEN]) -> [u8; LEN] {
    answer_to(probe).expect("a probe")
}

/// Runs the tracker from `start` for `steps` ticks of 50 ms; the nodes in `silent` answer
/// nothing, the others every probe. Returns the transitions with the tick they happened at.
fn run(t: &mut Tracker, start: Instant, steps: u32, silent: &[NodeRef]) -> Vec<(u32, Transition)> {
    let mut out = Vec::new();
    let addresses: BTreeMap<SocketAddrV4, NodeRef> =
        t.nodes.iter().map(|(n, p)| (p.addr, n.clone())).collect();
    for step in 1..=steps {
        let now = start + Duration::from_millis(50) * step;
        for (addr, probe) in t.due(now) {
            if !silent.contains(&addresses[&addr]) {
                assert!(t.answer(&answered(&probe), now));
            }
        }
        out.extend(t.evaluate(now).into_iter().map(|x| (step, x)));
    }
    out
}

#[test]
fn a_silent_node_is_unreachable_after_the_timeout_and_back_after_three_answers() {
    let start = Instant::now();
    let mut t = Tracker::new(settings(), SECRET);
    t.set_targets(
        &listed(&[
            ("infra", "node-1", "10.1.0.11:51872"),
            ("infra", "node-2", "10.1.0.12:51872"),
        ]),
        start,
    );
    // Both answer for two seconds: nothing changes.
    assert!(run(&mut t, start, 40, &[]).is_empty());
    // node-2 goes silent: unreachable once 800 ms have passed since its last answer, not
    // before (its last answer was at most one interval before the silence began).
    let silent_from = start + Duration::from_secs(2);
    let changes = run(&mut t, silent_from, 40, &[node("infra", "node-2")]);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let (step, change) = &changes[0];
    assert_eq!(
        *change,
        Transition {
            node: node("infra", "node-2"),
            down: true
        }
    );
    assert!((13..=21).contains(step), "judged at tick {step}");
    assert_eq!(
        t.unreachable(),
        Unreachable {
            nodes: BTreeMap::from([("infra".to_owned(), BTreeSet::from(["node-2".to_owned()]))]),
            clusters: BTreeSet::new(),
            probed: BTreeMap::from([("infra".to_owned(), 2)]),
        }
    );
    // It answers again: reachable after three consecutive answers, i.e. three intervals.
    let back_from = silent_from + Duration::from_secs(2);
    let changes = run(&mut t, back_from, 40, &[]);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(!changes[0].1.down);
    assert!(
        (8..=13).contains(&changes[0].0),
        "back at tick {}",
        changes[0].0
    );
    assert!(t.unreachable().is_empty());
}

#[test]
fn answers_that_skip_probes_do_not_bring_a_node_back() {
    let start = Instant::now();
    let mut t = Tracker::new(settings(), SECRET);
    t.set_targets(&listed(&[("infra", "node-1", "10.1.0.11:51872")]), start);
    let mut now = start;
    let mut step = |t: &mut Tracker, answer: bool| {
        now += Duration::from_millis(200);
        for (_, probe) in t.due(now) {
            if answer {
                t.answer(&answered(&probe), now);
            }
        }
        t.evaluate(now)
    };
    for _ in 0..6 {
        step(&mut t, false);
    }
    assert!(!t.unreachable().is_empty());
    // A flapping link: two answers, one loss, over and over — never three in a row.
    for _ in 0..10 {
        for answer in [true, true, false] {
            assert!(step(&mut t, answer).is_empty());
        }
    }
    assert!(!t.unreachable().is_empty());
    for _ in 0..3 {
        step(&mut t, true);
    }
    assert!(t.unreachable().is_empty());
}

#[test]
fn only_answers_to_our_recent_probes_count() {
    let start = Instant::now();
    let mut t = Tracker::new(settings(), SECRET);
    t.set_targets(&listed(&[("infra", "node-1", "10.1.0.11:51872")]), start);
    let now = start + Duration::from_millis(200);
    let probes = t.due(now);
    assert_eq!(probes.len(), 1);
    let probe = probes[0].1;
    assert_eq!(&probe[..4], b"RMp1");
    let answer = answered(&probe);
    assert_eq!(&answer[..4], b"RMa1");
    assert_eq!(answer[4..], probe[4..]);

    // Not an answer: a probe, a short or long packet, another magic.
    assert!(!t.answer(&probe, now));
    assert!(!t.answer(&answer[..LEN - 1], now));
    assert!(!t.answer(&[&answer[..], &[0]].concat(), now));
    let mut other = answer;
    other[..4].copy_from_slice(b"RMx1");
    assert!(!t.answer(&other, now));
    // Another process's answer (another secret), and a sequence number not yet sent.
    let mut foreign = Tracker::new(settings(), SECRET ^ 1);
    foreign.set_targets(&listed(&[("infra", "node-1", "10.1.0.11:51872")]), start);
    let theirs = answered(&foreign.due(now)[0].1);
    assert!(!t.answer(&theirs, now));
    let mut ahead = answer;
    ahead[11] ^= 0x02; // sequence 1 → 3
    assert!(!t.answer(&ahead, now));
    // The real one counts once; a replay does not.
    assert!(t.answer(&answer, now));
    assert!(!t.answer(&answer, now));
    // An answer to a probe more than the window behind is ignored.
    let mut later = now;
    let mut old = None;
    for i in 0..WINDOW + 1 {
        later += Duration::from_millis(200);
        let p = t.due(later)[0].1;
        if i == 0 {
            old = Some(p);
        }
    }
    assert!(!t.answer(&answered(&old.unwrap()), later));
    // Not a probe: nothing to answer.
    assert_eq!(answer_to(&answer), None);
    assert_eq!(answer_to(b"RMp1"), None);
}

#[test]
fn a_cluster_is_unreachable_when_none_of_its_probed_nodes_answers() {
    let start = Instant::now();
    let mut t = Tracker::new(settings(), SECRET);
    t.set_targets(
        &listed(&[
            ("infra", "node-1", "10.1.0.11:51872"),
            ("infra", "node-2", "10.1.0.12:51872"),
            ("edge", "node-1", "10.2.0.11:51872"),
        ]),
        start,
    );
    let silent = [node("infra", "node-1"), node("infra", "node-2")];
    run(&mut t, start, 40, &silent);
    let u = t.unreachable();
    assert_eq!(u.clusters, BTreeSet::from(["infra".to_owned()]));
    assert_eq!(u.nodes["infra"].len(), 2);
    assert!(!u.nodes.contains_key("edge"));
    assert_eq!(
        t.counts(),
        BTreeMap::from([("edge".to_owned(), (1, 0)), ("infra".to_owned(), (2, 2))])
    );
}

#[test]
fn targets_come_and_go_and_a_new_address_is_probed_afresh() {
    let start = Instant::now();
    let mut t = Tracker::new(settings(), SECRET);
    t.set_targets(&listed(&[("infra", "node-1", "10.1.0.11:51872")]), start);
    run(&mut t, start, 40, &[node("infra", "node-1")]);
    assert!(!t.unreachable().is_empty());
    // The node comes back at another address: probed there, and still unreachable until it
    // answers 3 probes in a row.
    let later = start + Duration::from_secs(2);
    t.set_targets(&listed(&[("infra", "node-1", "10.1.0.99:51872")]), later);
    assert!(!t.unreachable().is_empty());
    let back = run(&mut t, later, 20, &[]);
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(t.unreachable().is_empty());
    // A node the records no longer have is forgotten, and so are late answers to its probes.
    let later = later + Duration::from_secs(1);
    let probe = t.due(later + Duration::from_millis(200))[0].1;
    t.set_targets(&Targets::new(), later + Duration::from_millis(250));
    assert!(t.unreachable().is_empty());
    assert!(t.counts().is_empty());
    assert!(!t.answer(&answered(&probe), later + Duration::from_millis(300)));
    // A new tracker's first probes are spread over one interval, not sent at once.
    let many: Targets = (0..8)
        .map(|i| {
            (
                node("infra", &format!("node-{i}")),
                Some(SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, i), 51872)),
            )
        })
        .collect();
    let mut fresh = Tracker::new(settings(), SECRET);
    fresh.set_targets(&many, start);
    assert_eq!(fresh.due(start).len(), 1);
    assert_eq!(fresh.due(start + Duration::from_millis(199)).len(), 7);
}

#[test]
fn a_node_unreachable_when_its_peer_goes_stays_unreachable_while_the_records_have_it() {
    let start = Instant::now();
    let mut t = Tracker::new(settings(), SECRET);
    let both = listed(&[
        ("infra", "node-1", "10.1.0.11:51872"),
        ("infra", "node-2", "10.1.0.12:51872"),
    ]);
    t.set_targets(&both, start);
    run(&mut t, start, 40, &[node("infra", "node-1")]);
    assert_eq!(t.unreachable().nodes["infra"].len(), 1);
    // node-1's WireGuard peer goes (its key expired while it was cut off), node-2's stays:
    // node-1 is no longer probed but still unreachable, and node-2, reachable, is not
    // demoted for it.
    let later = start + Duration::from_secs(2);
    let mut unprobed = both.clone();
    unprobed.insert(node("infra", "node-1"), None);
    t.set_targets(&unprobed, later);
    let u = t.unreachable();
    assert_eq!(u.nodes["infra"], BTreeSet::from(["node-1".to_owned()]));
    assert!(u.clusters.is_empty());
    assert_eq!(t.counts()["infra"], (2, 1));
    // Its peer comes back: probed again, but unreachable until it answers 3 in a row.
    t.set_targets(&both, later + Duration::from_secs(1));
    assert_eq!(t.unreachable().nodes["infra"].len(), 1);
    let changes = run(&mut t, later + Duration::from_secs(1), 20, &[]);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(!changes[0].1.down);
    assert!(t.unreachable().is_empty());
    // A node that was reachable when it stopped being probed is simply forgotten, and one
    // the records lost is forgotten even if it was unreachable.
    run(
        &mut t,
        later + Duration::from_secs(3),
        40,
        &[node("infra", "node-2")],
    );
    let mut gone = both.clone();
    gone.remove(&node("infra", "node-2"));
    gone.insert(node("infra", "node-1"), None);
    t.set_targets(&gone, later + Duration::from_secs(6));
    assert!(t.unreachable().is_empty(), "{:?}", t.unreachable());
    assert!(t.counts().is_empty());
}

#[test]
fn the_probe_rate_is_bounded_and_the_timeout_grows_with_the_interval() {
    let s = settings();
    assert_eq!(
        s.effective(400),
        (Duration::from_millis(200), Duration::from_millis(800))
    );
    // 25,500 nodes at 2,000 probes a second: every node every 12.75 s, judged after 51 s.
    let (interval, timeout) = s.effective(25_500);
    assert_eq!(interval, Duration::from_millis(12_750));
    assert_eq!(timeout, Duration::from_secs(51));
    let start = Instant::now();
    let mut t = Tracker::new(s, SECRET);
    let many: Targets = (0..25_500u32)
        .map(|i| {
            (
                node("c", &i.to_string()),
                Some(SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 51872)),
            )
        })
        .collect();
    t.set_targets(&many, start);
    let sent: usize = (0..255)
        .map(|ms| t.due(start + Duration::from_millis(50 * ms)).len())
        .sum();
    // Just under 12.75 s of ticks: each node at most once, 2,000 a second.
    assert!((25_400..=25_500).contains(&sent), "{sent}");
}

#[test]
fn targets_are_the_peers_whose_agents_answer_probes() {
    let mut m = crate::testing::Mesh::default();
    m.cluster("apps", 1)
        .cluster("infra", 2)
        .node("infra", "node-1", "10.1.0.11")
        .nodekey("infra", "node-1", 1, 51871)
        .node("infra", "node-2", "10.1.0.12")
        .nodekey("infra", "node-2", 2, 51871);
    let peers = [
        Peer {
            cluster: "infra".into(),
            node: "node-1".into(),
            endpoint: Some("10.1.0.11:51871".parse().unwrap()),
            allowed: BTreeSet::new(),
        },
        // No endpoint (a refused address): nothing to probe.
        Peer {
            cluster: "infra".into(),
            node: "node-2".into(),
            endpoint: None,
            allowed: BTreeSet::new(),
        },
    ];
    assert_eq!(
        targets(&m.state, "apps", &peers),
        BTreeMap::from([
            (
                node("infra", "node-1"),
                Some("10.1.0.11:51872".parse().unwrap())
            ),
            (node("infra", "node-2"), None),
        ])
    );
    // An agent that publishes no probe port is not probed.
    let mut record = m.state.clusters["infra"].nodekeys["node-1"];
    record.probe_port = None;
    m.state
        .clusters
        .get_mut("infra")
        .unwrap()
        .nodekeys
        .insert("node-1".into(), record);
    assert!(
        targets(&m.state, "apps", &peers)
            .values()
            .all(Option::is_none)
    );
}

/// Waits (on the prober's changes) until its judgement satisfies `done`.
async fn until(p: &mut Prober, done: impl Fn(&Unreachable) -> bool) -> Unreachable {
    let wait = async {
        let mut u = p.unreachable();
        while !done(&u) {
            u = p.changed().await;
        }
        u
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the judgement never came")
}

#[tokio::test]
async fn two_probers_judge_each_other_over_loopback() {
    let settings = |port| Settings {
        port,
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(100),
        max_rate: 2_000,
    };
    let free_port = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (pa, pb) = (free_port(), free_port());
    let mut a = Prober::start(settings(pa), ReachMetrics::default())
        .await
        .unwrap();
    let b = Prober::start(settings(pb), ReachMetrics::default())
        .await
        .unwrap();
    a.set_targets(BTreeMap::from([(
        node("infra", "node-1"),
        Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, pb)),
    )]));
    // b answers; then it is gone: a finds node-1, and so its cluster, unreachable.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(b);
    let u = until(&mut a, |u| !u.clusters.is_empty()).await;
    assert_eq!(u.clusters, BTreeSet::from(["infra".to_owned()]));
    assert_eq!(u.nodes["infra"], BTreeSet::from(["node-1".to_owned()]));
    // Someone answers at that port again: reachable again.
    let _b = Prober::start(settings(pb), ReachMetrics::default())
        .await
        .unwrap();
    until(&mut a, Unreachable::is_empty).await;
}
