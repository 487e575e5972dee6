use super::*;

#[test]
fn keys_and_values_round_trip_with_the_c_layout() {
    let f = Frontend {
        vip: Ipv4Addr::new(10, 96, 0, 10),
        port: 8080,
        proto: PROTO_TCP,
    };
    // struct svc_key: vip (network order), port (network order), proto, pad.
    assert_eq!(svc_key(&f), [10, 96, 0, 10, 0x1f, 0x90, 6, 0]);
    assert_eq!(frontend_of(&svc_key(&f)), f);
    let k = backend_key(&f, 7);
    assert_eq!(&k[8..], &7u32.to_ne_bytes());
    assert_eq!(slot_of(&k), (f, 7));
    let b = Backend {
        ip: Ipv4Addr::new(10, 1, 2, 3),
        port: 80,
        cluster_id: 2,
        flags: backend_flags::READY | backend_flags::LOCAL,
    };
    assert_eq!(&backend_value(&b)[..6], &[10, 1, 2, 3, 0, 80]);
    assert_eq!(backend_of(&backend_value(&b)), b);
    let i = IpInfo {
        identity: 2 << 16 | 300,
        cluster_id: 2,
        flags: ipcache_flags::POD,
    };
    assert_eq!(ipinfo_of(&ipcache_value(&i)), i);
    let r = Rule {
        endpoint: 1 << 16 | 256,
        peer: 2 << 16 | 6,
        port: 443,
        proto: PROTO_TCP,
    };
    assert_eq!(rule_of(&rule_key(&r)), r);
    assert_eq!(count_of(&svc_value(3)), 3);
}

#[test]
fn protocol_names() {
    assert_eq!(protocol_number("TCP"), Some(6));
    assert_eq!(protocol_number(""), Some(0));
    assert_eq!(protocol_number("ICMP"), None);
    assert_eq!(protocol_name(17), "UDP");
}

#[test]
fn the_encoders_fill_every_byte_but_padding_and_unread_flags() {
    // Every field the encoders write, at the offsets of the mirror the build checked against
    // ebpf/abi.h: all-ones inputs leave zero only where the header has padding (or fields the
    // agent leaves 0).
    let f = Frontend {
        vip: Ipv4Addr::new(255, 255, 255, 255),
        port: u16::MAX,
        proto: u8::MAX,
    };
    let k = svc_key(&f);
    assert_eq!(k[abi::svc_key::PAD.range()], [0]);
    assert!(k[..abi::svc_key::PAD.offset].iter().all(|b| *b == 0xff));
    let b = Backend {
        ip: Ipv4Addr::new(255, 255, 255, 255),
        port: u16::MAX,
        cluster_id: u16::MAX,
        flags: u32::MAX,
    };
    assert!(backend_value(&b).iter().all(|b| *b == 0xff));
    let r = Rule {
        endpoint: u32::MAX,
        peer: u32::MAX,
        port: u16::MAX,
        proto: u8::MAX,
    };
    let k = rule_key(&r);
    assert_eq!(k[abi::policy_key::PAD.range()], [0]);
    assert!(k[..abi::policy_key::PAD.offset].iter().all(|b| *b == 0xff));
    let i = Iface {
        identity: u32::MAX,
        flags: u32::MAX,
        pod_ip: Ipv4Addr::new(255, 255, 255, 255),
        host: u32::MAX,
    };
    assert!(iface_value(&i).iter().all(|b| *b == 0xff));
    assert_eq!(iface_of(&iface_value(&i)), i);
    let v = svc_value(u32::MAX);
    assert_eq!(v[abi::svc_value::FLAGS.range()], [0; 4]);
    let mut key = [0u8; abi::pod_flow_key::SIZE];
    key[abi::pod_flow_key::IFINDEX.range()].copy_from_slice(&7u32.to_ne_bytes());
    assert_eq!(pod_flow_ifindex(&key), 7);
}
