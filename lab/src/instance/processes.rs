//! The lab's processes: targets (members, agents), their cgroups, starting them with their
//! command lines, signals, and taking cgroups down.

use certs::Role;
use mesh_client::pki::PkiDir;

use super::*;

impl Lab {
    pub(super) fn cgroup(&self) -> PathBuf {
        self.plan.cgroup(&self.state.cgroup_root)
    }

    /// The cgroup a target's process runs in.
    pub(super) fn cgroup_of(&self, t: &Target) -> PathBuf {
        let root = self.cgroup();
        let flavor = |cluster: &str| {
            self.state
                .spec
                .cluster(cluster)
                .expect("a cluster of the spec")
                .flavor
        };
        match t {
            Target::Member { cluster, member } => root.join(cluster).join(member),
            Target::Node { cluster, node } => {
                flavor(cluster).agent_cgroup(&root.join(cluster).join(node))
            }
            Target::Pod { cluster, pod } => {
                let c = self
                    .state
                    .spec
                    .cluster(cluster)
                    .expect("a cluster of the spec");
                let node = c
                    .pods
                    .iter()
                    .find(|p| p.name == *pod)
                    .and_then(|p| p.node.clone())
                    .expect("a pod of the spec");
                c.flavor.pod_cgroup(&root.join(cluster).join(node), pod)
            }
            Target::Delay => root.join("fabric-delay"),
        }
    }

    /// The cgroup root of `cluster`'s agent on `node`.
    pub(super) fn agent_cgroup_root(&self, c: &ClusterSpec, node: &str) -> PathBuf {
        c.flavor
            .agent_cgroup_root(&self.cgroup().join(&c.name).join(node))
    }

    pub(super) fn build_cgroups(&self) -> Result<()> {
        // Every node's agent cgroup root, also of a node without pods.
        let pods = self.state.spec.clusters.iter().flat_map(|c| {
            c.node_names()
                .map(|n| self.agent_cgroup_root(c, &n))
                .collect::<Vec<_>>()
        });
        for dir in self.targets().iter().map(|t| self.cgroup_of(t)).chain(pods) {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        Ok(())
    }

    /// Every process of the lab: members, agents, pods.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for (i, c) in indexed(&self.state.spec) {
            for m in self.plan.members(i, c) {
                out.push(Target::Member {
                    cluster: c.name.clone(),
                    member: m.name,
                });
            }
            for n in self.plan.nodes(c) {
                out.push(Target::Node {
                    cluster: c.name.clone(),
                    node: n.name,
                });
            }
            for p in &c.pods {
                out.push(Target::Pod {
                    cluster: c.name.clone(),
                    pod: p.name.clone(),
                });
            }
        }
        out
    }

    /// Parses `cluster/name` (a member, node or pod of the lab).
    pub fn target(&self, s: &str) -> Result<Target> {
        let Some((cluster, name)) = s.split_once('/') else {
            return Err(refused(format!(
                "{s:?}: expected <cluster>/<member|node|pod>, e.g. apps/m1, apps/node-1, apps/client"
            )));
        };
        self.cluster(cluster)?;
        self.targets()
            .into_iter()
            .find(|t| t.label() == s)
            .ok_or_else(|| {
                let names: Vec<String> = self
                    .targets()
                    .iter()
                    .map(Target::label)
                    .filter(|l| l.starts_with(&format!("{cluster}/")))
                    .collect();
                refused(format!(
                    "no member, node or pod {name:?} in {cluster} (there are {})",
                    names.join(", ")
                ))
            })
    }

    /// The pids of `t`'s program in its cgroup.
    pub fn pids(&self, t: &Target) -> Vec<i32> {
        let procs =
            std::fs::read_to_string(self.cgroup_of(t).join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|pid: &i32| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == t.program())
            })
            .collect()
    }

    /// Whether `t` runs, is frozen or is stopped.
    pub fn run_state(&self, t: &Target) -> Run {
        let pids = self.pids(t);
        let Some(pid) = pids.first() else {
            return Run::Stopped;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
        {
            Some("T") | Some("t") => Run::Frozen,
            Some(_) => Run::Running,
            None => Run::Stopped,
        }
    }

    /// Fails if `t` exited (during `up`), with the end of its log.
    pub(super) fn still_running(&self, t: &Target) -> Result<()> {
        if self.run_state(t) != Run::Stopped {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.log(t)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{} exited; the end of {}:\n{}",
            t.label(),
            self.log(t).display(),
            tail.join("\n")
        )
    }

    pub(super) fn log(&self, t: &Target) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{}.log", t.label().replace('/', "-")))
    }

    /// Starts `t` (refused if it runs). It is detached: it outlives this process.
    pub fn start(&self, t: &Target) -> Result<()> {
        if self.run_state(t) != Run::Stopped {
            return Err(refused(format!("{} is already running", t.label())));
        }
        let (netns, program, args) = self.command(t)?;
        let log_path = self.log(t);
        std::fs::create_dir_all(log_path.parent().expect("logs dir"))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(log, "--- started by meshctl lab at {}", unix_now())?;
        let cgroup = self.cgroup_of(t);
        // nsenter enters the namespace and execs sh, which joins the cgroup and execs the
        // program: the pid is the program's, and everything it opens is in both.
        let mut cmd = in_netns(&netns, "sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
                cgroup.display()
            ))
            .arg("sh")
            .arg(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // Its own process group: a ^C to meshctl does not reach the lab.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", t.label()))?;
        // Started once it is in its cgroup under its own name; an early exit fails here.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pids(t).is_empty() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "{} exited at start ({status}); the end of {}:\n{}",
                    t.label(),
                    log_path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not start within 10s", t.label());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Reaped when it exits (meshctl exits first; then init reaps it).
        std::thread::spawn(move || child.wait());
        Ok(())
    }

    /// The namespace, program and arguments of `t`.
    pub(super) fn command(&self, t: &Target) -> Result<(String, PathBuf, Vec<String>)> {
        let bins = &self.state.bins;
        let d = |p: PathBuf| p.to_string_lossy().into_owned();
        Ok(match t {
            Target::Member { cluster, member } => {
                let c = self.cluster(cluster)?;
                let members = self.plan.members(self.index(cluster), c);
                let m = members.iter().find(|m| m.name == *member).expect("member");
                let pki = self.pki_dir(cluster);
                let initial: Vec<String> = members
                    .iter()
                    .map(|m| format!("{}=https://{}:{PEER_PORT}", m.name, m.ip))
                    .collect();
                let mut args = vec![
                    "--name".into(),
                    m.name.clone(),
                    "--data-dir".into(),
                    d(self.dir.join("data").join(format!("{cluster}-{member}"))),
                    "--listen-client-urls".into(),
                    format!(
                        "https://{}:{CLIENT_PORT},https://{}:{CLIENT_PORT}",
                        m.ip, m.host_ip
                    ),
                    "--advertise-client-urls".into(),
                    format!("https://{}:{CLIENT_PORT}", m.host_ip),
                    "--listen-peer-urls".into(),
                    format!("https://{}:{PEER_PORT}", m.ip),
                    "--initial-advertise-peer-urls".into(),
                    format!("https://{}:{PEER_PORT}", m.ip),
                    "--initial-cluster".into(),
                    initial.join(","),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    format!("{}-{cluster}", self.plan.tag()),
                ];
                let files = PkiDir::new(&pki);
                let (cert, key) = files.pair(Role::Apiserver, member);
                for prefix in ["--", "--peer-"] {
                    args.extend([
                        format!("{prefix}cert-file"),
                        d(cert.clone()),
                        format!("{prefix}key-file"),
                        d(key.clone()),
                        format!("{prefix}trusted-ca-file"),
                        d(files.ca_cert()),
                        format!("{prefix}client-cert-auth"),
                    ]);
                }
                args.extend([
                    "--cluster-name".into(),
                    cluster.clone(),
                    "--cluster-id".into(),
                    c.id.to_string(),
                    "--pod-cidr".into(),
                    Plan::pod_range(c),
                    "--clusterset-service-cidr".into(),
                    crate::plan::CLUSTERSET_CIDR.into(),
                    "--manifests-dir".into(),
                    d(self.manifests_dir(cluster)),
                    "--listen-metrics-urls".into(),
                    format!("http://0.0.0.0:{APISERVER_METRICS_PORT}"),
                ]);
                args.extend(self.state.spec.apiserver_args.iter().cloned());
                (m.netns.clone(), bins.apiserver.clone(), args)
            }
            Target::Node { cluster, node } => {
                let c = self.cluster(cluster)?;
                let n = self
                    .plan
                    .nodes(c)
                    .into_iter()
                    .find(|n| n.name == *node)
                    .expect("node");
                let pki = PkiDir::new(self.pki_dir(cluster));
                let (cert, key) = pki.pair(Role::Agent, node);
                let endpoints: Vec<String> = self
                    .plan
                    .members(self.index(cluster), c)
                    .iter()
                    .map(|m| format!("https://{}:{CLIENT_PORT}", m.ip))
                    .collect();
                let mut args = vec![
                    "--node".into(),
                    node.clone(),
                    "--cluster".into(),
                    cluster.clone(),
                    "--endpoints".into(),
                    endpoints.join(","),
                    "--cacert".into(),
                    d(pki.ca_cert()),
                    "--cert".into(),
                    d(cert),
                    "--key".into(),
                    d(key),
                    "--cgroup-root".into(),
                    d(self.agent_cgroup_root(c, node)),
                    "--bpffs".into(),
                    d(self.pins(cluster, node)),
                    "--state-dir".into(),
                    d(self.dir.join("agents").join(format!("{cluster}-{node}"))),
                    "--listen-metrics".into(),
                    "0.0.0.0:9964".into(),
                    "--remote-stale-after".into(),
                    mesh_api::duration::format(self.state.spec.remote_stale_after),
                    "--wg-backend".into(),
                    "userspace".into(),
                    "--wg-interface".into(),
                    n.wg_if.clone(),
                    "--wg-port".into(),
                    WG_PORT.to_string(),
                    "--wg-userspace-program".into(),
                    d(bins.boringtun.clone()),
                    "--dns-listen".into(),
                    format!("{}:{}", n.ip, crate::plan::DNS_PORT),
                ];
                args.extend(c.flavor.agent_args());
                args.extend(self.state.spec.agent_args.iter().cloned());
                (n.netns, bins.node_agent.clone(), args)
            }
            Target::Pod { cluster, pod } => {
                let p = self.pod_plan(cluster, pod)?;
                let args = vec![
                    "serve".into(),
                    "--name".into(),
                    format!("{cluster}/{pod}"),
                    "--tcp".into(),
                    ECHO_PORT.to_string(),
                    "--udp".into(),
                    ECHO_PORT.to_string(),
                ];
                (p.netns, bins.echo.clone(), args)
            }
            Target::Delay => {
                let mut args = Vec::new();
                for (queue, d) in self.state.faults.delay_queues() {
                    args.push("--queue".to_owned());
                    args.push(format!("{queue}:{}:{}", d.delay_ms, d.jitter_ms));
                }
                (self.plan.fabric_netns(), bins.delay.clone(), args)
            }
        })
    }

    /// kill -9 of `t`'s process.
    pub fn kill(&self, t: &Target) -> Result<()> {
        self.signal(t, nix::sys::signal::Signal::SIGKILL)?;
        // Gone from its cgroup once the kernel has reaped it.
        wait_for(&format!("{} to exit", t.label()), || {
            self.pids(t).is_empty().then_some(())
        })
    }

    /// SIGSTOP.
    pub fn freeze(&self, t: &Target) -> Result<()> {
        self.signal(t, nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT.
    pub fn thaw(&self, t: &Target) -> Result<()> {
        self.signal(t, nix::sys::signal::Signal::SIGCONT)
    }

    pub(super) fn signal(&self, t: &Target, sig: nix::sys::signal::Signal) -> Result<()> {
        let pids = self.pids(t);
        if pids.is_empty() {
            return Err(refused(format!("{} is not running", t.label())));
        }
        for pid in pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .with_context(|| format!("signalling {} (pid {pid})", t.label()))?;
        }
        Ok(())
    }
}

/// Kills every process in `cgroup` and below (`cgroup.kill`) and waits until none is left;
/// returns how many there were.
pub(super) fn kill_cgroup(cgroup: &Path) -> Result<usize> {
    if !cgroup.exists() {
        return Ok(0);
    }
    let count = count_procs(cgroup);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Again until none is left: a process still starting (between `nsenter` and joining its
    // cgroup) joins after a kill.
    loop {
        std::fs::write(cgroup.join("cgroup.kill"), "1")
            .with_context(|| format!("{}/cgroup.kill", cgroup.display()))?;
        std::thread::sleep(Duration::from_millis(50));
        if count_procs(cgroup) == 0 {
            // One more look after a pause, for a process that was about to join.
            std::thread::sleep(Duration::from_millis(200));
            if count_procs(cgroup) == 0 {
                return Ok(count);
            }
        }
        if Instant::now() > deadline {
            bail!("processes left in {} after SIGKILL", cgroup.display());
        }
    }
}

pub(super) fn count_procs(dir: &Path) -> usize {
    let own = std::fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |s| s.lines().count());
    let children: usize = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| count_procs(&e.path()))
        .sum();
    own + children
}

/// Removes `dir` and the cgroups below it, deepest first.
pub(super) fn remove_cgroups(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().is_dir() {
            remove_cgroups(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing cgroup {}", dir.display()))
}
