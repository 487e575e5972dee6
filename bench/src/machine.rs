//! Facts about the machine a benchmark ran on, recorded beside its numbers.

use std::fmt;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    /// Where the clusters' data dirs live (`$TMPDIR`) and the file system under it.
    pub data_dir: String,
    /// Each server's name and the first line of its `--version`.
    pub servers: Vec<(String, String)>,
    /// The commit the raftmesh binaries were built from, when run inside the repository.
    pub git_commit: String,
    /// When the run started (UTC).
    pub started: String,
}

impl Machine {
    pub fn read<'a>(servers: impl IntoIterator<Item = (&'a str, &'a Path)>) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = field(&meminfo, "MemTotal")
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default();
        let temp = std::env::temp_dir();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu: field(&cpuinfo, "model name")
                .unwrap_or("unknown")
                .to_owned(),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            os,
            data_dir: format!("{} ({})", temp.display(), file_system_of(&temp)),
            servers: servers
                .into_iter()
                .map(|(name, program)| (name.to_owned(), version_of(program)))
                .collect(),
            git_commit: output("git", &["rev-parse", "--short", "HEAD"]),
            started: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores ({}), {} GiB, Linux {}, {}; data in {}",
            self.cores, self.cpu, self.memory_gib, self.kernel, self.os, self.data_dir
        )
    }
}

/// The first line `program --version` prints.
pub fn version_of(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of the first `name: value` line.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `<fstype> on <device>` of the mount holding `path` (the longest mount point prefix).
fn file_system_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    read("/proc/mounts")
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (device, mount, fstype) = (parts.next()?, parts.next()?, parts.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), format!("{fstype} on {device}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_owned(), |(_, fs)| fs)
}
