//! Loading, attaching and adopting the eBPF programs, and reading and writing their maps.
//!
//! Everything lives under one bpffs directory per node (`--bpffs`, default
//! `/sys/fs/bpf/raftmesh/<node>`): `maps/<name>` and `links/<name>`. Links are pinned as well as
//! maps, so the programs stay attached and keep balancing and enforcing while the agent is
//! down. A starting agent loads the objects with every map pinned to its path (an existing
//! pin is reused, so the maps keep their contents), adopts every link that is already pinned
//! instead of attaching again, and attaches only what is missing.
//!
//! The cgroup programs attach in multi mode (`BPF_F_ALLOW_MULTI`), beside a CNI's own. The
//! policy programs attach to pod interfaces in one of two modes ([`AttachMode`]): tcx links
//! (Linux 6.6+), first in the interface's chain and pinned like the cgroup links, or, on older
//! kernels, legacy tc filters on a clsact qdisc ([`tc`]). Either way they return `TCX_NEXT`
//! (`TC_ACT_UNSPEC`, the same value) unless they drop, so a CNI's programs still run.
//!
//! Program upgrades: aya 0.14 cannot replace the program of a pinned cgroup link, and an
//! adopted link keeps the program it was created with. A new program version is rolled out by
//! `node-agent --uninstall` followed by a start (a short window without socket load balancing
//! on that node: connections to VIPs then go to the CNI), or, without a window, by attaching
//! the new program beside the old one under new link names before unpinning the old links —
//! two connect programs in a chain are safe, as the second sees a backend address, not a VIP.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

mod kernel_maps;
pub mod tc;

pub use self::kernel_maps::{Counters, KernelMaps};

use crate::maps::{
    self, Backend, Frontend, IpInfo, Prefix, Rule, Tables, backend_key, backend_of, backend_value,
    count_of, frontend_of, ipcache_value, ipinfo_of, rule_key, rule_of, slot_of, svc_key,
    svc_value,
};
use crate::reconcile::Programmer;

/// Aligns the bytes of an included object file (aya reads ELF headers in place).
#[repr(C, align(8))]
struct Aligned<B: ?Sized> {
    bytes: B,
}

static SOCK_LB: &Aligned<[u8]> = &Aligned {
    bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/sock_lb.bpf.o")),
};
static POLICY: &Aligned<[u8]> = &Aligned {
    bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/policy.bpf.o")),
};

/// The cgroup programs, by their function name in `ebpf/sock_lb.bpf.c`.
pub const CGROUP_PROGRAMS: [&str; 4] = [
    "lb_connect4",
    "lb_sendmsg4",
    "lb_recvmsg4",
    "lb_getpeername4",
];
/// The policy program on packets going into a pod (host-side veth egress).
pub const TO_POD: &str = "pol_to_pod";
/// The policy program on packets leaving a pod (host-side veth ingress).
pub const FROM_POD: &str = "pol_from_pod";

/// Where each policy program runs on a pod interface's host side.
struct Hook {
    /// The program.
    program: &'static str,
    /// tcx/tc side.
    attach: TcAttachType,
    /// The same side, for listing tc filters.
    direction: tc::Direction,
    /// The suffix of its tcx link pin.
    suffix: &'static str,
}

const HOOKS: [Hook; 2] = [
    Hook {
        program: TO_POD,
        attach: TcAttachType::Egress,
        direction: tc::Direction::Egress,
        suffix: "egress",
    },
    Hook {
        program: FROM_POD,
        attach: TcAttachType::Ingress,
        direction: tc::Direction::Ingress,
        suffix: "ingress",
    },
];

/// How the policy programs attach to pod interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx links (Linux 6.6+), pinned.
    Tcx,
    /// Legacy tc: a clsact qdisc and direct-action cls_bpf filters ([`tc`]).
    Tc,
}

/// The first kernel with tcx (BPF_TCX_INGRESS/EGRESS links, Linux commit e420bed02507).
const TCX_SINCE: (u8, u8) = (6, 6);

/// Whether this kernel has tcx (Linux 6.6+; older kernels refuse a tcx link with EINVAL), and
/// the kernel's version for messages.
pub fn kernel_has_tcx() -> std::result::Result<(bool, String), String> {
    let kernel = KernelVersion::current().map_err(|e| format!("the kernel's version: {e}"))?;
    Ok((
        kernel >= KernelVersion::new(TCX_SINCE.0, TCX_SINCE.1, 0),
        format!("{kernel:?}"),
    ))
}

impl AttachMode {
    /// `tcx` or `tc`.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
        }
    }
}

/// What [`Programs::attach_interface`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// Both programs were in place, first.
    Kept,
    /// Something was attached (or moved to the front).
    Changed,
    /// In place, but another filter runs before ours (it may end the chain first): which.
    Behind(String),
}

/// bpffs's magic number (statfs `f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A datapath failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The pin directory is not on a bpffs.
    #[error(
        "{path} is not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf), so pinned maps and links could not outlive the agent"
    )]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
    /// Loading an object.
    #[error("loading {object}: {reason}")]
    Load {
        /// Which object.
        object: &'static str,
        /// Why, with the causes.
        reason: String,
    },
    /// Loading or attaching a program.
    #[error("{op} {program}: {reason}")]
    Program {
        /// What was done.
        op: &'static str,
        /// Which program.
        program: String,
        /// Why, with the causes (aya's errors keep the system error one level down).
        reason: String,
    },
    /// Pinning or opening a pinned link.
    #[error("link {path}: {reason}")]
    Link {
        /// The pin.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A map operation.
    #[error("map {map}: {reason}")]
    Map {
        /// Which map.
        map: &'static str,
        /// Why, with the causes.
        reason: String,
    },
    /// The object lacks something this build expects (a build problem).
    #[error("the eBPF object has no {0}")]
    Missing(String),
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |e| Error::Map {
        map,
        reason: chain(&e),
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// The pin directory of one node's datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// Pins under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Pins {
        Pins { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A map's pin.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// The link directory.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// A link's pin.
    pub fn link(&self, name: &str) -> PathBuf {
        self.links().join(name)
    }

    /// Whether anything is pinned.
    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// Creates the directories, refusing a directory that is not on bpffs.
    fn create(&self) -> Result<()> {
        for dir in [self.root.join("maps"), self.links()] {
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        let stat = nix::sys::statfs::statfs(&self.root).map_err(|e| Error::Io {
            op: "statfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        #[expect(
            clippy::useless_conversion,
            reason = "the type of f_type differs by target"
        )]
        if i64::from(stat.filesystem_type().0) != BPF_FS_MAGIC {
            return Err(Error::NotBpffs {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    /// Removes every link pin (detaching the programs unless something else holds them) and
    /// map pin, and the directories the agent made: `maps/`, `links/`, and the root when it is
    /// then empty and not a mount point (a bpffs itself is never removed). Returns the pins
    /// removed.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        // Only pins of ours, by name: a directory shared with other tools keeps theirs.
        let ours_in = |dir: &Path, file: &str| {
            if dir.ends_with("links") {
                CGROUP_PROGRAMS.contains(&file) || parse_tc_link_name(file).is_some()
            } else {
                maps::LB_MAPS.contains(&file)
                    || maps::POL_MAPS.contains(&file)
                    || maps::RETIRED_MAPS.contains(&file)
            }
        };
        for dir in [self.links(), self.root.join("maps")] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if !ours_in(&dir, &entry.file_name().to_string_lossy()) {
                    continue;
                }
                fs::remove_file(&path).map_err(io("removing", &path))?;
                removed.push(path);
            }
            remove_if_empty(&dir)?;
        }
        if !is_mount_point(&self.root) {
            remove_if_empty(&self.root)?;
        }
        Ok(removed)
    }
}

fn remove_if_empty(dir: &Path) -> Result<()> {
    if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        fs::remove_dir(dir).map_err(io("removing", dir))?;
    }
    Ok(())
}

/// Whether `dir` is a mount point (its device differs from its parent's), e.g. a bpffs.
pub fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let parent = dir.join("..");
    match (fs::metadata(dir), fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev() || d.ino() == p.ino(),
        _ => false,
    }
}

/// What [`Programs::install`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Links found pinned and kept.
    pub adopted: Vec<String>,
    /// Links created.
    pub attached: Vec<String>,
}

/// The loaded programs (kept so new pod interfaces can be attached).
#[derive(Debug)]
pub struct Programs {
    pins: Pins,
    _lb: Ebpf,
    pol: Ebpf,
    mode: AttachMode,
}

impl Programs {
    /// Loads both objects with their maps pinned under `pins`, and attaches the socket
    /// programs to `cgroup` unless their links are pinned already. Pod interfaces get the
    /// policy programs in `mode`.
    pub fn install(
        pins: &Pins,
        cgroup: &Path,
        mode: AttachMode,
    ) -> Result<(Programs, KernelMaps, InstallReport)> {
        pins.create()?;
        // Maps of earlier versions that nothing uses any more.
        for name in maps::RETIRED_MAPS {
            let path = pins.map(name);
            if path.exists() {
                fs::remove_file(&path).map_err(io("removing a retired map pin", &path))?;
                tracing::info!(
                    map = name,
                    "removed the pin of a map this version no longer uses"
                );
            }
        }
        let mut report = InstallReport::default();
        let mut lb = load("sock_lb", &SOCK_LB.bytes, &maps::LB_MAPS, pins)?;
        let mut pol = load("policy", &POLICY.bytes, &maps::POL_MAPS, pins)?;
        let cgroup_dir = File::open(cgroup).map_err(io("opening cgroup", cgroup))?;
        for name in CGROUP_PROGRAMS {
            let program: &mut CgroupSockAddr = lb
                .program_mut(name)
                .ok_or_else(|| Error::Missing(format!("program {name}")))?
                .try_into()
                .map_err(program_err("typing", name))?;
            program.load().map_err(program_err("loading", name))?;
            let pin = pins.link(name);
            if pin.exists() {
                PinnedLink::from_pin(&pin).map_err(|e| Error::Link {
                    path: pin.clone(),
                    reason: e.to_string(),
                })?;
                report.adopted.push(name.to_owned());
                continue;
            }
            // On kernels with BPF links (5.7+) every cgroup link is multi-attach already, and
            // the kernel refuses flags with a link: `Single` asks for no flags.
            let id = program
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(program_err("attaching", name))?;
            let link = program.take_link(id).map_err(program_err("taking", name))?;
            pin_link(link, &pin)?;
            report.attached.push(name.to_owned());
        }
        for name in [TO_POD, FROM_POD] {
            let program: &mut SchedClassifier = pol
                .program_mut(name)
                .ok_or_else(|| Error::Missing(format!("program {name}")))?
                .try_into()
                .map_err(program_err("typing", name))?;
            program.load().map_err(program_err("loading", name))?;
        }
        let maps = KernelMaps::take(&mut lb, &mut pol)?;
        Ok((
            Programs {
                pins: pins.clone(),
                _lb: lb,
                pol,
                mode,
            },
            maps,
            report,
        ))
    }

    /// How the policy programs attach.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    fn policy_program(&mut self, program_name: &str) -> Result<&mut SchedClassifier> {
        self.pol
            .program_mut(program_name)
            .ok_or_else(|| Error::Missing(format!("program {program_name}")))?
            .try_into()
            .map_err(program_err("typing", program_name))
    }

    /// Attaches `hook`'s program to interface `name` with `options` and takes the link from
    /// the program (which would detach it on drop).
    fn attach_policy(
        &mut self,
        hook: &Hook,
        name: &str,
        options: TcAttachOptions,
    ) -> Result<SchedClassifierLink> {
        let program = self.policy_program(hook.program)?;
        let id = program
            .attach_with_options(name, hook.attach, options)
            .map_err(program_err(
                "attaching",
                &format!("{} to {name}", hook.program),
            ))?;
        program
            .take_link(id)
            .map_err(program_err("taking", hook.program))
    }

    /// Makes sure the policy programs are attached to pod interface `name` (index `index`),
    /// first in its chain: in tcx mode, unless pinned links for it exist; in tc mode, checking
    /// the interface's filters every time (they are not pinned, and other agents add theirs).
    /// After attaching in one mode, removes what an earlier start in the other mode left.
    pub fn attach_interface(&mut self, name: &str, index: u32) -> Result<Attached> {
        let outcome = match self.mode {
            AttachMode::Tcx => self.attach_tcx(name, index)?,
            AttachMode::Tc => self.attach_tc(name, index)?,
        };
        if outcome == Attached::Changed {
            match self.mode {
                AttachMode::Tcx => {
                    detach_tc_filters(name, index)?;
                }
                AttachMode::Tc => {
                    for hook in &HOOKS {
                        let pin = self.pins.link(&tc_link_name(name, index, hook.suffix));
                        if pin.exists() {
                            fs::remove_file(&pin).map_err(io("removing", &pin))?;
                        }
                    }
                }
            }
        }
        Ok(outcome)
    }

    fn attach_tcx(&mut self, name: &str, index: u32) -> Result<Attached> {
        let mut attached = false;
        for hook in &HOOKS {
            let pin = self.pins.link(&tc_link_name(name, index, hook.suffix));
            if pin.exists() {
                continue;
            }
            // First in the tcx chain: a CNI's program that redirects or returns TCX_PASS ends
            // the chain, and policy must have been applied by then.
            let first = TcAttachOptions::TcxOrder(LinkOrder::first());
            let link = self.attach_policy(hook, name, first)?;
            pin_link(link, &pin)?;
            attached = true;
        }
        Ok(if attached {
            Attached::Changed
        } else {
            Attached::Kept
        })
    }

    fn attach_tc(&mut self, name: &str, index: u32) -> Result<Attached> {
        let tc_err = |op: &'static str| {
            let name = name.to_owned();
            move |e: std::io::Error| Error::Program {
                op,
                program: format!("policy filters of {name}"),
                reason: e.to_string(),
            }
        };
        let mut outcome = Attached::Kept;
        for hook in &HOOKS {
            // A missing clsact qdisc lists as no filters: it is added with our first filter.
            let filters = tc::list(index, hook.direction).map_err(tc_err("listing"))?;
            let (add, old) = match tc::plan(&filters, hook.program) {
                tc::Plan::Keep => {
                    if let Some(front) = filters.first().filter(|f| !f.is_ours(hook.program)) {
                        outcome = Attached::Behind(format!(
                            "{} filter {:?} at priority {} handle {:#x}",
                            front.kind,
                            front.name.as_deref().unwrap_or(""),
                            front.priority,
                            front.handle
                        ));
                    }
                    continue;
                }
                tc::Plan::Add(handle) => (handle, None),
                tc::Plan::MoveToFront(handle, old) => (handle, Some(old)),
            };
            if filters.is_empty() {
                ensure_clsact(name)?;
            }
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: tc::PRIORITY,
                handle: TcHandle::from(add),
                classid: None,
            });
            let link = self.attach_policy(hook, name, options)?;
            // The filter holds the program; dropping the link would delete the filter.
            std::mem::forget(link);
            if let Some(old) = old {
                detach_filter(name, hook.attach, old)?;
                tracing::info!(
                    interface = name,
                    program = hook.program,
                    "another filter had been added ahead of ours: ours moved back to the front"
                );
            }
            if outcome == Attached::Kept {
                outcome = Attached::Changed;
            }
        }
        Ok(outcome)
    }

    /// Unpins the tc links of interfaces that are gone (their links are defunct already).
    /// Returns the interfaces swept.
    pub fn sweep_interfaces(&self, present: &BTreeSet<(String, u32)>) -> Result<Vec<String>> {
        let mut swept = Vec::new();
        let dir = self.pins.links();
        for entry in fs::read_dir(&dir).map_err(io("reading", &dir))?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((name, index)) = parse_tc_link_name(&file) else {
                continue;
            };
            if !present.contains(&(name.clone(), index)) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io("removing", &path))?;
                swept.push(name);
            }
        }
        swept.dedup();
        Ok(swept)
    }
}

/// Adds a clsact qdisc to interface `name` unless it has one.
fn ensure_clsact(name: &str) -> Result<()> {
    match aya::programs::tc::qdisc_add_clsact(name) {
        Ok(()) => {
            tracing::debug!(interface = name, "clsact qdisc added");
            Ok(())
        }
        Err(aya::programs::tc::TcError::NetlinkError(e))
            if e.raw_os_error() == Some(nix::libc::EEXIST) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::Program {
            op: "adding a clsact qdisc to",
            program: name.to_owned(),
            reason: chain(&e),
        }),
    }
}

/// Deletes our filter with `handle` on `attach` of interface `name`.
fn detach_filter(name: &str, attach: TcAttachType, handle: u32) -> Result<()> {
    let link =
        SchedClassifierLink::attached(name, attach, tc::PRIORITY, TcHandle::from(handle), None)
            .map_err(io("finding", Path::new(name)))?;
    aya::programs::Link::detach(link)
        .map_err(program_err("detaching", &format!("the filter on {name}")))
}

/// Deletes our legacy tc filters from interface `name` (index `index`). Returns how many.
pub fn detach_tc_filters(name: &str, index: u32) -> Result<usize> {
    let mut removed = 0;
    for hook in &HOOKS {
        let filters = tc::list(index, hook.direction).map_err(|e| Error::Program {
            op: "listing",
            program: format!("tc filters of {name}"),
            reason: e.to_string(),
        })?;
        for f in filters.iter().filter(|f| f.is_ours(hook.program)) {
            detach_filter(name, hook.attach, f.handle)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes our legacy tc filters from every interface of this network namespace
/// (`--uninstall`). Returns the interfaces they were on.
pub fn uninstall_tc_filters() -> Result<Vec<String>> {
    let mut out = Vec::new();
    let interfaces = nix::net::if_::if_nameindex().map_err(|e| Error::Io {
        op: "listing interfaces",
        path: PathBuf::from("/sys/class/net"),
        source: e.into(),
    })?;
    for i in interfaces.iter() {
        let name = i.name().to_string_lossy().into_owned();
        if detach_tc_filters(&name, i.index())? > 0 {
            out.push(name);
        }
    }
    Ok(out)
}

/// Where the policy programs are attached in this network namespace: (interface, mode) for
/// every pinned tcx link pair under `pins` and every interface with our tc filters.
pub fn attachments(pins: &Pins) -> Vec<(String, AttachMode)> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(pins.links()).into_iter().flatten().flatten() {
        if let Some((name, _)) = parse_tc_link_name(&entry.file_name().to_string_lossy()) {
            out.insert((name, "tcx"));
        }
    }
    if let Ok(interfaces) = nix::net::if_::if_nameindex() {
        for i in interfaces.iter() {
            let ours = HOOKS.iter().any(|hook| {
                tc::list(i.index(), hook.direction)
                    .is_ok_and(|fs| fs.iter().any(|f| f.is_ours(hook.program)))
            });
            if ours {
                out.insert((i.name().to_string_lossy().into_owned(), "tc"));
            }
        }
    }
    out.into_iter()
        .map(|(name, mode)| {
            (
                name,
                if mode == "tc" {
                    AttachMode::Tc
                } else {
                    AttachMode::Tcx
                },
            )
        })
        .collect()
}

/// The pin name of a tc link: `tc-<ifindex>-<ifname>-<egress|ingress>`.
pub fn tc_link_name(ifname: &str, index: u32, direction: &str) -> String {
    format!("tc-{index}-{ifname}-{direction}")
}

fn parse_tc_link_name(file: &str) -> Option<(String, u32)> {
    let rest = file.strip_prefix("tc-")?;
    let (index, rest) = rest.split_once('-')?;
    let name = rest
        .strip_suffix("-egress")
        .or_else(|| rest.strip_suffix("-ingress"))?;
    Some((name.to_owned(), index.parse().ok()?))
}

fn program_err(
    op: &'static str,
    program: &str,
) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    let program = program.to_owned();
    move |e| Error::Program {
        op,
        program,
        reason: chain(&e),
    }
}

fn pin_link<L>(link: L, pin: &Path) -> Result<()>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let fd_link = FdLink::try_from(link).map_err(|e| Error::Link {
        path: pin.to_path_buf(),
        reason: format!("not an fd link: {e}"),
    })?;
    fd_link.pin(pin).map_err(|e| Error::Link {
        path: pin.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(())
}

fn load(object: &'static str, bytes: &[u8], names: &[&'static str], pins: &Pins) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for name in names {
        loader.map_pin_path(name, pins.map(name));
    }
    loader.load(bytes).map_err(|e| Error::Load {
        object,
        reason: chain(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_link_names_round_trip() {
        let n = tc_link_name("lxc-a-b", 42, "egress");
        assert_eq!(n, "tc-42-lxc-a-b-egress");
        assert_eq!(parse_tc_link_name(&n), Some(("lxc-a-b".to_owned(), 42)));
        assert_eq!(parse_tc_link_name("lb_connect4"), None);
    }
}
