//! Privileged tests of the datapath (root: network namespaces, cgroups, eBPF). Each test owns a
//! node built by [`support::Node`] and cleans it up on drop.

mod support;
mod t10_load_balancing;
mod t20_policy;
mod t30_restart;
mod t40_maps_uninstall;
mod t50_coexist;
mod t60_reconnect;
mod t70_tc_order;
mod t80_unenforced;
mod t90_masquerade;
mod t95_trust;
