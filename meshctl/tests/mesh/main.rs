//! Acceptance tests of connected clusters (issue 10): TLS clusters of mesh-apiserver processes
//! that publish manifests, joined with `meshctl connect`, checked through their stores with
//! etcd clients and etcdctl.
//!
//! One binary; its tests run one at a time (the `clusters` test group in `.config/nextest.toml`),
//! since each starts several clusters.

mod support;
mod t10_connect;
mod t20_faults;
mod t30_kube;
