//! The programs a lab runs ([`Binaries`]): the workspace's binaries found in a build's
//! directory, and boringtun from PATH or cargo's bin directory. A lab's state records them
//! (`lab.json`), so `down` runs the same programs `up` did.

use std::path::{Path, PathBuf};

/// The programs a mesh runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Binaries {
    /// `node-agent`.
    pub node_agent: PathBuf,
    /// `mesh-apiserver`.
    pub apiserver: PathBuf,
    /// `meshctl`.
    pub meshctl: PathBuf,
    /// `mesh-echo`.
    pub echo: PathBuf,
    /// `mesh-delay`, the lab's delay stage (empty in the state of a lab made before it
    /// existed, which `down` must still read).
    #[serde(default)]
    pub delay: PathBuf,
    /// `boringtun-cli`.
    pub boringtun: PathBuf,
}

impl Binaries {
    /// The workspace's binaries in `dir` (a target directory's `debug` or `release`), and
    /// boringtun from PATH or cargo's bin directory; panics if one is missing.
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries::find(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The workspace's binaries in `dir`, and boringtun from PATH or cargo's bin directory.
    pub fn find(dir: &Path) -> anyhow::Result<Binaries> {
        let bin = |name: &str| {
            let p = dir.join(name);
            anyhow::ensure!(
                p.is_file(),
                "{} is missing: build the workspace (cargo build --workspace) first",
                p.display()
            );
            Ok(p)
        };
        Ok(Binaries {
            node_agent: bin("node-agent")?,
            apiserver: bin("mesh-apiserver")?,
            meshctl: bin("meshctl")?,
            echo: bin("mesh-echo")?,
            delay: bin("mesh-delay")?,
            boringtun: find_boringtun().ok_or_else(|| {
                anyhow::anyhow!(
                    "boringtun-cli is missing: `cargo install --locked boringtun-cli` (scripts/lab and scripts/test install it)"
                )
            })?,
        })
    }
}

/// `boringtun-cli`, from PATH or cargo's bin directory, if it is there.
pub fn find_boringtun() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("boringtun-cli"))
        .find(|p| p.is_file())
}
