//! The mesh of these tests is the test kit's ([`testkit::mesh`]), run from this build's binaries.

pub use testkit::eventually;
pub use testkit::mesh::*;

/// Two connected clusters of two nodes, no agents yet.
pub fn mesh() -> Mesh {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_node-agent"))
        .parent()
        .expect("target dir");
    Mesh::new(Binaries::in_dir(dir))
}
