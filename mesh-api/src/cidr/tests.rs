use super::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

#[test]
fn parses_network_addresses_and_refuses_the_rest() {
    assert_eq!(cidr("10.1.0.0/16").to_string(), "10.1.0.0/16");
    assert_eq!(cidr("0.0.0.0/0").bits(), 0);
    assert_eq!(cidr("fd00:1::/64").to_string(), "fd00:1::/64");
    for bad in [
        "10.1.0.0",
        "10.1.0.1/16",
        "10.1.0.0/33",
        "10.1.0.0/016",
        "10.1.0.0/+16",
        "10.1.0.0/",
        "fd00::/129",
        "garbage/8",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
    }
}

#[test]
fn containment_and_overlap() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(cidr("10.1.2.0/24").contains(ip("10.1.2.255")));
    assert!(!cidr("10.1.2.0/24").contains(ip("10.1.3.0")));
    assert!(cidr("0.0.0.0/0").contains(ip("1.2.3.4")));
    assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
    assert!(cidr("fd00:1::/64").contains(ip("fd00:1::5")));
    assert!(!cidr("fd00:1::/64").contains(ip("fd00:2::5")));
    assert!(cidr("10.1.0.0/16").covers(&cidr("10.1.2.0/24")));
    assert!(!cidr("10.1.2.0/24").covers(&cidr("10.1.0.0/16")));
    assert!(cidr("10.1.2.0/24").overlaps(&cidr("10.1.0.0/16")));
    assert!(cidr("10.1.0.0/16").overlaps(&cidr("10.1.2.0/24")));
    assert!(!cidr("10.1.0.0/16").overlaps(&cidr("10.2.0.0/16")));
    assert!(!cidr("10.0.0.0/8").overlaps(&cidr("fd00::/8")));
}

#[test]
fn special_ranges_are_named() {
    for (ip, want) in [
        ("127.0.0.1", Some("loopback")),
        ("0.0.0.0", Some("\"this network\" (0.0.0.0/8)")),
        ("169.254.1.1", Some("link-local")),
        ("224.0.0.251", Some("multicast")),
        (
            "255.255.255.255",
            Some("reserved (240.0.0.0/4, with the broadcast address)"),
        ),
        ("::1", Some("the unspecified or loopback address")),
        ("::", Some("the unspecified or loopback address")),
        ("::ffff:127.0.0.1", Some("loopback")),
        ("fe80::1", Some("link-local")),
        ("ff02::1", Some("multicast")),
        ("10.0.0.1", None),
        ("192.168.1.1", None),
        ("100.64.0.1", None),
        ("fd00::1", None),
    ] {
        assert_eq!(special(ip.parse().unwrap()), want, "{ip}");
    }
    assert_eq!(
        special_overlap(&cidr("0.0.0.0/0")),
        Some("\"this network\" (0.0.0.0/8)")
    );
    assert_eq!(special_overlap(&cidr("169.254.0.0/24")), Some("link-local"));
    assert_eq!(special_overlap(&cidr("10.0.0.0/8")), None);
}
