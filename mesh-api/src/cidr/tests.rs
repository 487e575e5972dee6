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
