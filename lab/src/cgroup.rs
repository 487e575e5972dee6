//! cgroup v2 directories owned by a test or a lab.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A cgroup directory, removed on drop after its processes are killed.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `root/name`.
    pub fn new(root: &Path, name: &str) -> anyhow::Result<Cgroup> {
        let path = root.join(name);
        fs::create_dir(&path)
            .map_err(|e| anyhow::anyhow!("creating cgroup {}: {e}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps `command` so that it joins this cgroup before it starts (`sh -c 'echo $$ >
    /// cgroup.procs && exec "$@"'`): every socket it opens belongs to the cgroup.
    pub fn wrap(&self, command: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.path.display()
            ))
            .arg("sh")
            .arg(command.get_program())
            .args(command.get_args());
        for (k, v) in command.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// The pids in it.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.path);
    }
}
