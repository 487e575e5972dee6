//! Bringing a lab up: the slot, the network, cgroups, PKI, members, agents, pods, the
//! connections between clusters, and a global service answering from every cluster.

use super::*;

impl Lab {
    /// Builds and starts the lab, connects its clusters and checks a global service answers
    /// from every cluster. A lab of that name must not exist; if `up` fails part-way, what it
    /// built stays for the logs and `down` removes it.
    pub fn up(opts: UpOptions, progress: &mut dyn FnMut(&str)) -> Result<Lab> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(refused(
                "the lab needs root (network namespaces, cgroups, eBPF)",
            ));
        }
        if !crate::spec::dns_label(&opts.name) {
            return Err(refused(format!(
                "lab name {:?} is not a DNS label",
                opts.name
            )));
        }
        if let Some(lab) = Lab::open(&opts.base, &opts.name)? {
            let running = lab
                .targets()
                .iter()
                .any(|t| lab.run_state(t) != Run::Stopped);
            return Err(refused(if running {
                format!(
                    "lab {:?} is already running (slot {}, {}); `meshctl lab down --name {}` first",
                    opts.name,
                    lab.state.slot,
                    lab.dir.display(),
                    opts.name
                )
            } else {
                format!(
                    "lab {:?} exists but nothing of it runs (it crashed or was half built); `meshctl lab down --name {}` cleans it up",
                    opts.name, opts.name
                )
            }));
        }
        crate::ensure_bpffs()?;
        let cgroup_root = crate::cgroup2_root()?;
        let dir = opts.base.join(&opts.name);
        let lab = {
            // One lab at a time chooses and claims a slot: the state file (with the slot) and
            // the fabric namespace exist before the lock is released.
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(LOCK)
                .context(LOCK)?;
            let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow!("locking {LOCK}: {e}"))?;
            let host = host_prefixes()?;
            let slot = (0..plan::SLOTS)
                .find(|s| slot_free(*s, &host, &cgroup_root))
                .ok_or_else(|| anyhow!("no free lab slot in 198.18.0.0/15"))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let lab = Lab {
                dir,
                plan: Plan::new(slot),
                state: State {
                    name: opts.name.clone(),
                    slot,
                    spec: opts.spec,
                    bins: opts.bins,
                    config: opts.config,
                    cgroup_root,
                    created: unix_now(),
                    faults: Faults::default(),
                },
            };
            lab.save()?;
            ip(&["netns", "add", &lab.plan.fabric_netns()])?;
            lab
        };
        progress(&format!(
            "lab {:?}: slot {} (host range {}/24), files in {}",
            lab.state.name,
            lab.state.slot,
            lab.plan.host_range().0,
            lab.dir.display()
        ));
        lab.build_network()?;
        progress(&format!(
            "network: fabric, host link {} {}, {} cluster networks",
            lab.plan.host_if(),
            lab.plan.host_ip(),
            lab.state.spec.clusters.len()
        ));
        lab.build_cgroups()?;
        for (i, c) in indexed(&lab.state.spec) {
            lab.make_pki(i, c)?;
            lab.write_manifests(c)?;
        }
        progress("PKI, contexts and manifests written");
        for c in &lab.state.spec.clusters {
            for m in lab.plan.members(lab.index(&c.name), c) {
                lab.start(&Target::Member {
                    cluster: c.name.clone(),
                    member: m.name,
                })?;
            }
        }
        for c in &lab.state.spec.clusters {
            let status = wait_or_fail(&format!("{}'s members to elect a leader", c.name), || {
                for m in lab.plan.members(lab.index(&c.name), c) {
                    lab.still_running(&Target::Member {
                        cluster: c.name.clone(),
                        member: m.name,
                    })?;
                }
                Ok(lab.mesh_status(&c.name).ok().filter(|s| {
                    let members = s["members"].as_array().map_or(0, Vec::len);
                    members == usize::from(c.members)
                        && s["members"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .all(|m| m["healthy"] == true)
                }))
            })?;
            let leader = status["members"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["leader"] == true)
                .and_then(|m| m["name"].as_str())
                .unwrap_or("?")
                .to_owned();
            // connect reads the cluster record the leader's publisher writes.
            let key = format!("mesh/v1/{}/cluster", c.name);
            wait_for(&format!("{}'s cluster record {key}", c.name), || {
                lab.meshctl(&["get", &key, "--context", &c.name, "-o", "json"])
                    .ok()
                    .filter(|out| out.contains(&key))
            })?;
            progress(&format!(
                "{}: {} members up, leader {leader}, cluster record published",
                c.name, c.members
            ));
        }
        let names: Vec<String> = lab
            .state
            .spec
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                lab.meshctl(&["connect", "--context", a, "--destination", b, "--wait"])?;
                progress(&format!("connected {a} and {b} (meshctl connect)"));
            }
        }
        for t in lab.targets() {
            if matches!(t, Target::Pod { .. }) {
                lab.start(&t)?;
            }
        }
        for t in lab.targets() {
            if matches!(t, Target::Node { .. }) {
                lab.start(&t)?;
            }
        }
        for c in &lab.state.spec.clusters {
            for n in lab.plan.nodes(c) {
                let want = lab.remote_nodes(&c.name);
                let agent = Target::Node {
                    cluster: c.name.clone(),
                    node: n.name.clone(),
                };
                wait_or_fail(&format!("{}/{}'s WireGuard peers", c.name, n.name), || {
                    lab.still_running(&agent)?;
                    Ok((lab.wg_peer_count(&n.wg_if) == Some(want)).then_some(()))
                })?;
            }
        }
        let pods: usize = lab.state.spec.clusters.iter().map(|c| c.pods.len()).sum();
        progress(&format!(
            "agents up, WireGuard full mesh between clusters; {pods} pods serving"
        ));
        for (cluster, pod, vip, service) in lab.probes() {
            let want = lab.answering_clusters(&service);
            let got = wait_for(
                &format!("{service} answering {cluster}/{pod} from {want:?}"),
                || {
                    let got = lab.answers(&cluster, &pod, vip, 20);
                    want.iter().all(|c| got.contains_key(c)).then_some(got)
                },
            )?;
            progress(&format!(
                "{cluster}/{pod} → {service} ({vip}): 20 connections answered by {}",
                got.iter()
                    .map(|(c, n)| format!("{c} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(lab)
    }
}
