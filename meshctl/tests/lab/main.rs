//! Acceptance tests of the lab (issues 14 and 25), driven through `meshctl lab` as a user would and
//! checked with tools we did not write where one exists: etcdctl for writes, nft for the
//! fabric's counters, ip/ls for what `down` leaves behind.
//!
//! One binary whose tests run one at a time (the `lab` test group in `.config/nextest.toml`):
//! each builds a whole lab. Every lab has a name unique to this process and its own lab
//! directory and meshctl config, so a developer's lab keeps running beside them; a guard runs
//! `meshctl lab down` on drop, also when a test panics.

mod support;
mod t10_default_lab;
mod t20_refusals;
mod t30_flavors;
mod t40_mcs;
