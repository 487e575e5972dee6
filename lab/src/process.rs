//! Child processes that die with their owner.

use std::process::{Child, Command, Stdio};

/// A child process, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    what: String,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log` (or inherited when `None`).
    pub fn spawn(mut command: Command, log: Option<&std::path::Path>) -> anyhow::Result<Process> {
        let what = format!("{command:?}");
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            command.stdout(Stdio::from(file.try_clone()?));
            command.stderr(Stdio::from(file));
        }
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {what}: {e}"))?;
        Ok(Process {
            child: Some(child),
            what,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for it to exit; returns whether it exited with success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().is_ok_and(|s| s.success())
    }

    /// Waits for it to exit on its own.
    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().and_then(|mut c| c.wait().ok())
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What was started, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
