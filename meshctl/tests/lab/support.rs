//! A lab under test: `meshctl lab` with this test's lab directory, config and lab name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub use testkit::eventually;
pub use testkit::mesh::PATIENCE;

/// A lab's name, directories and config; `down` on drop.
pub struct TestLab {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub up: bool,
}

impl TestLab {
    /// A lab not built yet.
    pub fn new(tag: &str) -> TestLab {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the lab tests need root (CI runs as root)"
        );
        let name = format!("t{tag}{}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap();
        TestLab {
            name,
            dir,
            up: false,
        }
    }

    pub fn base(&self) -> PathBuf {
        self.dir.path().join("labs")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("meshctl-config")
    }

    /// `meshctl ARGS` for this lab.
    pub fn meshctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .env("RAFTMESH_LAB_DIR", self.base())
            .env("RAFTMESH_CONFIG", self.config())
            .env("RAFTMESH_LAB", &self.name)
            .args(args)
            .output()
            .unwrap()
    }

    /// `meshctl ARGS`, which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `meshctl lab up [ARGS]`.
    pub fn up(&mut self, args: &[&str]) -> String {
        let mut all = vec!["lab", "up"];
        all.extend_from_slice(args);
        self.up = true;
        self.ok(&all)
    }

    /// `meshctl lab status -o json`.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["lab", "status", "-o", "json"])).unwrap()
    }

    /// `meshctl status --context CLUSTER -o json`.
    pub fn mesh_status(&self, cluster: &str) -> Option<Value> {
        let out = self.meshctl(&["status", "--context", cluster, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// `count` TCP connections from `pod` to `addr`: replies by cluster, and failures.
    pub fn probe(&self, pod: &str, addr: &str, count: u32) -> (BTreeMap<String, u32>, u32) {
        let out = self.meshctl(&[
            "lab",
            "exec",
            pod,
            "--",
            "mesh-echo",
            "probe",
            "--tcp",
            addr,
            "--count",
            &count.to_string(),
            "--timeout-ms",
            "1000",
        ]);
        let mut replies = BTreeMap::new();
        let mut failures = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            match v["reply"].as_str() {
                Some(r) => *replies.entry(r.to_owned()).or_insert(0) += 1,
                None => failures += 1,
            }
        }
        (replies, failures)
    }

    /// Replies of `probe` grouped by the cluster that answered.
    pub fn clusters_answering(
        &self,
        pod: &str,
        addr: &str,
        count: u32,
    ) -> (BTreeMap<String, u32>, u32) {
        let (replies, failures) = self.probe(pod, addr, count);
        let mut by_cluster = BTreeMap::new();
        for (r, n) in replies {
            *by_cluster
                .entry(r.split('/').next().unwrap().to_owned())
                .or_insert(0) += n;
        }
        (by_cluster, failures)
    }

    /// `etcdctl ARGS` as cluster `cluster`'s admin, from the host, through the lab's host link.
    pub fn etcdctl(&self, cluster: &str, args: &[&str]) -> Output {
        let status = self.status();
        let c = status["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap();
        let pki = Path::new(c["pki"].as_str().unwrap());
        let endpoints: Vec<String> = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("https://{}:2379", m["hostIP"].as_str().unwrap()))
            .collect();
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!("--cert={}", pki.join("admin-admin.crt").display()))
            .arg(format!("--key={}", pki.join("admin-admin.key").display()))
            .args(["--command-timeout=5s", "--dial-timeout=3s"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The lab's spec file, edited by `edit`, applied with `meshctl lab apply`.
    pub fn apply(&self, edit: impl FnOnce(&mut lab::spec::LabSpec)) {
        let state: Value = serde_json::from_slice(
            &std::fs::read(self.base().join(&self.name).join("lab.json")).unwrap(),
        )
        .unwrap();
        let mut spec: lab::spec::LabSpec = serde_json::from_value(state["spec"].clone()).unwrap();
        edit(&mut spec);
        let path = self.dir.path().join("spec.yaml");
        std::fs::write(&path, serde_yaml::to_string(&spec).unwrap()).unwrap();
        self.ok(&["lab", "apply", "--spec", path.to_str().unwrap()]);
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.up {
            let out = self.meshctl(&["lab", "down"]);
            if !out.status.success() {
                eprintln!("lab down: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// What is left on the host of the lab with tag `tag` (`rl<slot>`) whose directory was
/// `dir`, checked with ip, the file system and pgrep.
pub fn leftovers(tag: &str, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for l in String::from_utf8_lossy(&netns.stdout).lines() {
        if l.starts_with(&format!("{tag}-")) {
            out.push(format!("namespace {l}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let name = l.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with(tag) {
            out.push(format!("link {name}"));
        }
    }
    for d in [
        "/var/run/wireguard",
        "/sys/fs/bpf",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(tag) || name.ends_with(&format!("-{tag}")) {
                out.push(format!("{d}/{name}"));
            }
        }
    }
    let pgrep = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&pgrep.stdout).lines() {
        out.push(format!("process {pid}"));
    }
    if dir.exists() {
        out.push(format!("directory {}", dir.display()));
    }
    out
}

/// A program of the workspace (they share meshctl's directory).
pub fn sibling(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshctl"))
        .parent()
        .unwrap()
        .join(name)
}

/// `program args` inside namespace `netns` (network namespace only, so bpffs stays visible);
/// its stdout, or a panic with its stderr.
pub fn in_ns(netns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{netns}: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether to rewrite a file the tests generate: only with `RAFTMESH_BLESS=1`, and never under
/// CI (a run that blesses compares nothing).
pub fn bless() -> bool {
    match (
        std::env::var("RAFTMESH_BLESS").ok().as_deref(),
        std::env::var_os("CI").is_some(),
    ) {
        (Some("1"), true) => panic!("RAFTMESH_BLESS=1 under CI: nothing is rewritten in CI"),
        (Some("1"), false) => true,
        _ => false,
    }
}
