//! Privileged WireGuard tests (root): two clusters of two nodes on network namespaces, the
//! agents running boringtun (no kernel module here). One test at a time (nextest group
//! `wireguard`): each runs two API servers, four agents and four daemons.

mod support;
mod t10_tunnel;
mod t20_keys_and_peers;
mod t30_backends;
mod t40_external_daemon;
