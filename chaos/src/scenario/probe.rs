//! The connection probes: `mesh-echo probe` in a client pod, its answers recorded, and what
//! went wrong with the probe itself.

use super::*;

/// A client pod connecting to a service every 20 ms, its answers recorded.
pub(super) struct Probe {
    child: std::process::Child,
    /// Reads the answers; returns the lines that were not answers.
    reader: std::thread::JoinHandle<Vec<String>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    stopfile: PathBuf,
    /// Where its stderr goes.
    stderr: PathBuf,
}

impl Probe {
    /// Stops the probe: its answers, and what went wrong with the probe itself (it exited
    /// before it was stopped, or printed lines that are not answers) — a probe that records
    /// nothing must never read as a cluster that failed nothing.
    pub(super) fn stop(mut self) -> Result<(Vec<Answer>, Vec<String>)> {
        let mut problems = Vec::new();
        if let Some(status) = self.child.try_wait()? {
            let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            problems.push(format!(
                "the probe exited before it was stopped ({status}): {}",
                stderr.trim()
            ));
        }
        std::fs::write(&self.stopfile, b"")?;
        let _ = self.child.wait();
        match self.reader.join() {
            Ok(stray) => problems.extend(
                stray
                    .iter()
                    .take(3)
                    .map(|l| format!("the probe printed a line that is not an answer: {l}")),
            ),
            Err(_) => problems.push("the probe's reader panicked".to_owned()),
        }
        let answers = std::mem::take(&mut *self.answers.lock().expect("not poisoned"));
        Ok((answers, problems))
    }
}

impl Run<'_> {
    /// Starts `mesh-echo probe` in `cluster/client` against `demo/<service>`'s TCP port.
    pub(super) fn probe(&self, cluster: &str, service: &str) -> Result<Probe> {
        let c = self.lab.state.spec.cluster(cluster).context("cluster")?;
        let (index, svc) = c
            .services
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == service)
            .with_context(|| format!("demo/{service}"))?;
        let port = svc
            .ports
            .iter()
            .find(|p| p.protocol == "TCP")
            .context("a TCP port")?;
        let vip = Plan::vip(c, index);
        let stopfile = self
            .lab
            .dir
            .join(format!("chaos-probe-{cluster}-{service}.stop"));
        let stderr = stopfile.with_extension("stderr");
        let mut child = self
            .lab
            .exec(
                &format!("{cluster}/client"),
                &[
                    "mesh-echo".into(),
                    "probe".into(),
                    "--tcp".into(),
                    format!("{vip}:{}", port.port),
                    "--until".into(),
                    stopfile.to_string_lossy().into_owned(),
                    "--interval-ms".into(),
                    "20".into(),
                    "--timeout-ms".into(),
                    "1000".into(),
                ],
            )?
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let reader = {
            let answers = answers.clone();
            std::thread::spawn(move || {
                let mut stray = Vec::new();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let v = match serde_json::from_str::<Value>(&line) {
                        Ok(v) if v["ok"].is_boolean() => v,
                        _ => {
                            stray.push(line);
                            continue;
                        }
                    };
                    let by = v["reply"]
                        .as_str()
                        .and_then(|r| r.split_once('/'))
                        .map(|(c, _)| c.to_owned());
                    // When the attempt began: a failed one is read only after its timeout.
                    let took = Duration::from_micros(v["micros"].as_u64().unwrap_or(0));
                    let began = Instant::now()
                        .checked_sub(took)
                        .unwrap_or_else(Instant::now);
                    answers
                        .lock()
                        .expect("not poisoned")
                        .push((began, v["ok"] == true, by));
                }
                stray
            })
        };
        Ok(Probe {
            child,
            reader,
            answers,
            stopfile,
            stderr,
        })
    }
}
