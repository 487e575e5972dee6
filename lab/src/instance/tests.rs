use super::*;

fn p(s: &str) -> (Ipv4Addr, u8) {
    let (a, l) = s.split_once('/').unwrap();
    (a.parse().unwrap(), l.parse().unwrap())
}

#[test]
fn prefixes_overlap_when_they_share_an_address() {
    assert!(overlaps(p("198.18.0.0/24"), p("198.18.0.17/32")));
    assert!(overlaps(p("198.18.0.0/15"), p("198.19.4.0/24")));
    assert!(overlaps(p("0.0.0.0/0"), p("198.18.3.0/24")));
    assert!(!overlaps(p("198.18.0.0/24"), p("198.18.1.0/24")));
    assert!(!overlaps(p("10.0.0.0/8"), p("198.18.0.0/24")));
}

#[test]
fn a_target_names_its_program() {
    let t = Target::Node {
        cluster: "apps".into(),
        node: "node-1".into(),
    };
    assert_eq!(
        (t.label().as_str(), t.program()),
        ("apps/node-1", "node-agent")
    );
}
