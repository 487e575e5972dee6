use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};

use super::pick_free_ports;

#[test]
fn ports_are_distinct_within_one_call() {
    let ports = pick_free_ports(50).unwrap();
    assert_eq!(ports.len(), 50);
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 50);
    assert!(ports.iter().all(|&p| p != 0));
}

#[test]
fn ports_are_never_handed_out_twice() {
    let first = pick_free_ports(20).unwrap();
    let second = pick_free_ports(20).unwrap();
    let all: HashSet<_> = first.iter().chain(&second).collect();
    assert_eq!(all.len(), 40);
}

#[test]
fn picked_ports_are_bindable() {
    let ports = pick_free_ports(5).unwrap();
    let listeners: Vec<_> = ports
        .iter()
        .map(|&p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap())
        .collect();
    assert_eq!(listeners.len(), 5);
}

#[test]
fn zero_ports() {
    assert_eq!(pick_free_ports(0).unwrap(), Vec::<u16>::new());
}
