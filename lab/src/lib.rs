//! The lab: real clusters on one Linux box, out of network namespaces, veth pairs, cgroups and
//! processes (ARCHITECTURE.md, "The lab"). `meshctl lab` builds a lab from a spec that outlives
//! the command ([`instance`]). The building blocks that own what they create and remove it on
//! drop ([`netns`], [`cgroup`], [`process`]) are also what the test harness (the `testkit`
//! crate: topologies, the WireGuard tests' mesh) and privileged tests build on; the harness
//! itself is not here, so meshctl does not link it.
//!
//! # Layout
//! - [`netns`]: network namespaces ([`netns::Netns`]), veth pairs and bridges, commands inside a
//!   namespace.
//! - [`cgroup`]: cgroup v2 directories ([`cgroup::Cgroup`]) and running a command inside one.
//! - [`process`]: child processes killed on drop ([`process::Process`]).
//! - [`binaries`]: the programs a lab runs ([`binaries::Binaries`]), found in a build's directory.
//! - [`spec`]: the lab's YAML spec (`meshctl lab up --spec`), validated.
//! - [`flavor`]: nodes built as Talos (Flannel) and EKS (the VPC CNI) build them.
//! - [`plan`]: a lab's names and addresses, derived from its spec and slot.
//! - [`manifests`]: a lab cluster's Kubernetes objects, written where its API servers read.
//! - [`faults`]: partitions, loss and delay between clusters, as fabric rules.
//! - [`instance`]: a lab that outlives the command that made it (`meshctl lab up|down|…`).
//! - The `mesh-echo` binary: the echo workload (`serve`) and its client (`probe`).
//!
//! Names are unique per process ([`unique`]), so tests and a developer's lab run side by side.

pub mod binaries;
pub mod cgroup;
pub mod faults;
pub mod flavor;
pub mod instance;
pub mod manifests;
pub mod netns;
pub mod plan;
pub mod process;
pub mod spec;

use std::sync::atomic::{AtomicU32, Ordering};

/// A short name unique on this host for this process: `<prefix><pid>x<n>` in base 36, short
/// enough for interface names (15 bytes).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{}", base36(std::process::id()), base36(n))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// A temporary directory for one test's or lab's files, named `<id>-…`; kept (and its path
/// printed) when `RAFTMESH_KEEP_LOGS` is set, so a failure's logs can be read afterwards.
pub fn workdir(id: &str) -> std::io::Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()?;
    if std::env::var_os("RAFTMESH_KEEP_LOGS").is_some() {
        eprintln!("logs kept in {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    Ok(dir)
}

/// The cgroup v2 mount: `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on Talos
/// and systemd hosts.
pub fn cgroup2_root() -> anyhow::Result<std::path::PathBuf> {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if run("stat", &["-f", "-c", "%T", p]).is_ok_and(|t| t.trim() == "cgroup2fs") {
            return Ok(p.into());
        }
    }
    anyhow::bail!("no cgroup v2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let t = run("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).unwrap_or_default();
    if t.trim() != "bpf_fs" {
        run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    Ok(())
}

/// Runs `program args`, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program).args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The packets of the nftables counter on the rule with `comment` in `listing` (`nft list`
/// output), if there is one.
pub fn nft_packets(listing: &str, comment: &str) -> Option<u64> {
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}
