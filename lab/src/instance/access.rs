//! Reaching into a running lab: its pins, PKI and manifests, meshctl and mesh status, and
//! commands and probes inside pods.

use super::*;

impl Lab {
    /// The plan of `cluster/pod`, a pod [`Lab::target`] accepted.
    pub(super) fn pod_plan(&self, cluster: &str, pod: &str) -> Result<PodPlan> {
        let c = self.cluster(cluster)?;
        Ok(self
            .plan
            .pods(c)
            .into_iter()
            .find(|p| p.spec.name == pod)
            .expect("a target's pod is in the plan"))
    }

    /// A node's pin directory.
    pub fn pins(&self, cluster: &str, node: &str) -> PathBuf {
        self.plan.pins().join(format!("{cluster}-{node}"))
    }

    /// Cluster `cluster`'s PKI directory.
    pub fn pki_dir(&self, cluster: &str) -> PathBuf {
        self.dir.join("pki").join(cluster)
    }

    /// Cluster `cluster`'s manifests directory (its API servers publish what is in it).
    pub fn manifests_dir(&self, cluster: &str) -> PathBuf {
        self.dir.join("manifests").join(cluster)
    }

    pub(super) fn write_manifests(&self, c: &ClusterSpec) -> Result<()> {
        let dir = self.manifests_dir(&c.name);
        crate::manifests::write(&dir, &self.plan, c)
            .with_context(|| format!("writing {}", dir.display()))
    }

    /// `meshctl ARGS` with the lab's config file.
    pub fn meshctl(&self, args: &[&str]) -> Result<String> {
        sh(Command::new(&self.state.bins.meshctl)
            .env(crate::instance::CONFIG_ENV, &self.state.config)
            .args(args))
    }

    pub(super) fn make_pki(&self, index: usize, c: &ClusterSpec) -> Result<()> {
        let pki = self.pki_dir(&c.name);
        let members = self.plan.members(index, c);
        let mut init = Command::new(&self.state.bins.meshctl);
        init.args(["pki", "init", "--cluster", &c.name]);
        for m in &members {
            init.args(["--member", &m.name]);
        }
        for m in &members {
            init.args(["--san", &m.ip.to_string(), "--san", &m.host_ip.to_string()]);
        }
        init.arg("--out").arg(&pki).stdout(Stdio::null());
        sh(&mut init)?;
        for n in self.plan.nodes(c) {
            sh(Command::new(&self.state.bins.meshctl)
                .args([
                    "pki", "issue", "--role", "agent", "--name", &n.name, "--dir",
                ])
                .arg(&pki)
                .stdout(Stdio::null()))?;
        }
        let endpoints: Vec<String> = members
            .iter()
            .map(|m| format!("https://{}:{CLIENT_PORT}", m.host_ip))
            .collect();
        self.meshctl(&[
            "config",
            "set-context",
            &c.name,
            "--endpoints",
            &endpoints.join(","),
            "--pki-dir",
            &pki.to_string_lossy(),
        ])?;
        Ok(())
    }

    /// `meshctl status --context <cluster> -o json`.
    pub fn mesh_status(&self, cluster: &str) -> Result<Value> {
        let out = self.meshctl(&["status", "--context", cluster, "-o", "json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Cluster `cluster`'s leader (its member name, `m1` …), from `meshctl status`.
    pub fn leader(&self, cluster: &str) -> Result<String> {
        let status = self.mesh_status(cluster)?;
        status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["leader"] == true)
            .and_then(|m| m["name"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("{cluster} has no leader: {status}"))
    }

    /// For each cluster's `client` pod (if it has one), its cluster's first global service
    /// with a TCP port: (cluster, pod, VIP:port, `namespace/name`).
    pub(super) fn probes(&self) -> Vec<(String, String, std::net::SocketAddrV4, String)> {
        let mut out = Vec::new();
        for c in &self.state.spec.clusters {
            if !c.pods.iter().any(|p| p.name == "client") {
                continue;
            }
            let found = c.services.iter().enumerate().find_map(|(i, s)| {
                let port = s.ports.iter().find(|p| p.protocol == "TCP")?;
                s.global.then(|| {
                    (
                        std::net::SocketAddrV4::new(Plan::vip(c, i), port.port),
                        format!("{}/{}", s.namespace, s.name),
                    )
                })
            });
            if let Some((vip, service)) = found {
                out.push((c.name.clone(), "client".to_owned(), vip, service));
            }
        }
        out
    }

    /// The clusters with a ready backend of global service `ns/name`, shared unless local…
    /// i.e. those that should answer a client anywhere with affinity `none`.
    pub(super) fn answering_clusters(&self, service: &str) -> Vec<String> {
        let (ns, name) = service.split_once('/').expect("ns/name");
        self.state
            .spec
            .clusters
            .iter()
            .filter(|c| {
                c.services.iter().any(|s| {
                    s.namespace == ns
                        && s.name == name
                        && s.global
                        && s.shared
                        && s.affinity == "none"
                        && plan::selected(s, &self.plan.pods(c))
                            .iter()
                            .any(|p| p.spec.ready)
                })
            })
            .map(|c| c.name.clone())
            .collect()
    }

    /// `count` TCP connections from `cluster/pod` to `addr`: answers by cluster.
    pub fn answers(
        &self,
        cluster: &str,
        pod: &str,
        addr: std::net::SocketAddrV4,
        count: u32,
    ) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let Ok(mut cmd) = self.exec(
            &format!("{cluster}/{pod}"),
            &[
                "mesh-echo".into(),
                "probe".into(),
                "--tcp".into(),
                addr.to_string(),
                "--count".into(),
                count.to_string(),
                "--timeout-ms".into(),
                "1000".into(),
            ],
        ) else {
            return out;
        };
        let Ok(o) = cmd.stderr(Stdio::null()).output() else {
            return out;
        };
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && let Some(reply) = v["reply"].as_str()
            {
                let cluster = reply.split('/').next().unwrap_or(reply).to_owned();
                *out.entry(cluster).or_insert(0) += 1;
            }
        }
        out
    }

    /// A command that runs `argv` in pod `cluster/pod`'s namespace and cgroup, with the
    /// lab's programs (mesh-echo, …) on PATH.
    pub fn exec(&self, pod: &str, argv: &[String]) -> Result<Command> {
        let t = self.target(pod)?;
        let Target::Pod { cluster, pod } = &t else {
            return Err(refused(format!("{pod:?} is not a pod")));
        };
        anyhow::ensure!(!argv.is_empty(), "no command to run");
        let p = self.pod_plan(cluster, pod)?;
        let bin_dir = self
            .state
            .bins
            .echo
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin_dir];
        dirs.extend(std::env::split_paths(&path));
        // Into the pod's cgroup first (its socket programs apply), then `ip netns exec`: its
        // network namespace, and a mount namespace where the pod's resolv.conf
        // (`/etc/netns/<netns>/resolv.conf`) is `/etc/resolv.conf`, so names resolve as in the
        // pod. (`ip netns exec` remounts /sys, hence the cgroup before it.)
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && ns=$1 && shift && exec ip netns exec \"$ns\" \"$@\"",
                self.cgroup_of(&t).display()
            ))
            .arg("sh")
            .arg(&p.netns)
            .args(argv)
            .env("PATH", std::env::join_paths(dirs)?);
        Ok(cmd)
    }
}
