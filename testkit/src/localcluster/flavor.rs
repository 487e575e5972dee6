//! Which server binary a cluster runs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Environment variable selecting the server under test: unset, empty or `raftmesh` for our
/// server, `etcd` for the real etcd.
pub const SERVER_ENV: &str = "RAFTMESH_TEST_SERVER";
/// Environment variable overriding the etcd binary used by [`Flavor::from_env`].
pub const ETCD_BIN_ENV: &str = "RAFTMESH_ETCD_BIN";
/// The etcd binary used when [`ETCD_BIN_ENV`] is not set (Debian's `etcd-server` package).
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

/// The server a [`super::Cluster`] runs. Both flavors are started with the same etcd flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// raftmesh's `mesh-apiserver` at this path.
    Raftmesh(PathBuf),
    /// etcd at this path: the reference our server must match.
    Etcd(PathBuf),
}

impl Flavor {
    /// `RAFTMESH_TEST_SERVER=etcd` selects etcd (`/usr/bin/etcd`, or the path in
    /// `RAFTMESH_ETCD_BIN`); unset, empty or `raftmesh` selects `Raftmesh(default_bin)`.
    ///
    /// # Panics
    /// On any other value of `RAFTMESH_TEST_SERVER`, so a typo never silently tests the wrong
    /// server.
    pub fn from_env(default_bin: impl Into<PathBuf>) -> Flavor {
        let server = std::env::var_os(SERVER_ENV);
        let etcd_bin = std::env::var_os(ETCD_BIN_ENV);
        select(server.as_deref(), etcd_bin.as_deref(), default_bin.into())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether this is the real etcd.
    pub fn is_etcd(&self) -> bool {
        matches!(self, Flavor::Etcd(_))
    }

    /// The server binary.
    pub fn program(&self) -> &Path {
        match self {
            Flavor::Raftmesh(path) | Flavor::Etcd(path) => path,
        }
    }
}

/// The `fault-injection` build of mesh-apiserver (test-only faults, `kvstore::fault`), which
/// `scripts/test` copies to `<target>/fault-injection/mesh-apiserver`, found from `beside`, a
/// binary of the same build (`target/<profile>/…`).
///
/// # Panics
/// When it is missing, saying how it is built: a test that needs it must not pass without it.
pub fn fault_injection_server(beside: &Path) -> PathBuf {
    let path = beside
        .parent()
        .expect("a binary has a directory")
        .join("../fault-injection/mesh-apiserver");
    assert!(
        path.is_file(),
        "{} is missing: scripts/test builds it (cargo build -p mesh-apiserver --features \
         fault-injection, copied there)",
        path.display()
    );
    path
}

/// [`Flavor::from_env`] without the environment, so it can be unit-tested without `set_var`.
fn select(
    server: Option<&OsStr>,
    etcd_bin: Option<&OsStr>,
    default_bin: PathBuf,
) -> Result<Flavor, String> {
    let Some(server) = server else {
        return Ok(Flavor::Raftmesh(default_bin));
    };
    match server.to_str() {
        Some("" | "raftmesh") => Ok(Flavor::Raftmesh(default_bin)),
        Some("etcd") => Ok(Flavor::Etcd(
            etcd_bin.map_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN), PathBuf::from),
        )),
        _ => Err(format!(
            "{SERVER_ENV}={:?} is not a server; use `etcd` or `raftmesh` (or leave it unset)",
            server.display().to_string()
        )),
    }
}

#[cfg(test)]
mod tests;
