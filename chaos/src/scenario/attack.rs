//! `hostile-remote`'s attack as the run drives it: apps' policy first, then the attack, then
//! its checks (the attack's parts are in [`super::hostile`]).

use super::*;

/// `hostile-remote`'s attack: what it claims, its tasks, and what was seen before it.
pub(super) struct Attack {
    pub(super) targets: hostile::Targets,
    pub(super) stop: CancellationToken,
    pub(super) churn: tokio::task::JoinHandle<u64>,
    pub(super) status: tokio::task::JoinHandle<()>,
    pub(super) seen: Arc<hostile::Seen>,
    /// apps' agents' maps before it.
    pub(super) before: BTreeMap<String, hostile::AgentView>,
    /// apps' store size before it, and when it began.
    pub(super) bytes_before: Option<f64>,
    pub(super) began: Instant,
    pub(super) rewrites: u64,
}

impl Run<'_> {
    /// Starts `hostile-remote`'s attack: gives apps its policy, then reads what apps' agents
    /// and store hold, then attacks.
    pub(super) async fn begin_attack(&mut self) -> Result<Attack> {
        let mut spec = self.lab.state.spec.clone();
        if let Some(apps) = spec.clusters.iter_mut().find(|c| c.name == "apps") {
            apps.policies.push(hostile::policy());
        }
        tokio::task::block_in_place(|| self.lab.apply(spec))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.apps_agents()?.values().all(|v| !v.policy.0.is_empty()) {
            if Instant::now() > deadline {
                bail!("apps' agents did not enforce the policy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let spec = &self.lab.state.spec;
        let apps = spec.cluster("apps").context("apps")?;
        let infra = spec.cluster("infra").context("infra")?;
        let pod_ip = |c: &lab::spec::ClusterSpec, name: &str| {
            self.lab
                .plan
                .pods(c)
                .into_iter()
                .find(|p| p.spec.name == name)
                .map(|p| p.ip)
                .with_context(|| format!("{}/{name}", c.name))
        };
        let targets = hostile::Targets {
            apps_client: pod_ip(apps, "client")?,
            apps_node: self
                .lab
                .plan
                .nodes(apps)
                .first()
                .context("an apps node")?
                .ip,
            infra_pod: pod_ip(infra, "echo-1")?,
            hostile_nodes: spec
                .cluster(hostile::NAME)
                .map(|h| self.lab.plan.nodes(h).into_iter().map(|n| n.ip).collect())
                .unwrap_or_default(),
        };
        let before = self.apps_agents()?;
        let bytes_before = self.apps_bytes().await;
        let mut apps_client = self.connect("apps").client(0).await?;
        let key = apps_client
            .get("mesh/v1/apps/nodekeys/node-1", None)
            .await?
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .context("apps/node-1 has published no WireGuard key")?;
        let hostile = self.connect(hostile::NAME);
        hostile::attack(&hostile, &targets, key).await?;
        let stop = CancellationToken::new();
        let seen = Arc::new(hostile::Seen::default());
        Ok(Attack {
            targets,
            churn: tokio::spawn(hostile::churn(hostile, stop.clone())),
            status: tokio::spawn(hostile::watch_status(
                self.connect("apps"),
                seen.clone(),
                stop.clone(),
            )),
            stop,
            seen,
            before,
            bytes_before,
            began: Instant::now(),
            rewrites: 0,
        })
    }

    /// apps' agents' maps, by node.
    pub(super) fn apps_agents(&self) -> Result<BTreeMap<String, hostile::AgentView>> {
        let apps = self.lab.state.spec.cluster("apps").context("apps")?;
        let mut out = BTreeMap::new();
        for n in self.lab.plan.nodes(apps) {
            out.insert(
                n.name.clone(),
                hostile::agent_view(&self.lab.pins("apps", &n.name))?,
            );
        }
        Ok(out)
    }

    /// Where apps' members serve their metrics.
    fn apps_member_hosts(&self) -> Vec<std::net::Ipv4Addr> {
        plan::indexed(&self.lab.state.spec)
            .find(|(_, c)| c.name == "apps")
            .map(|(index, apps)| {
                self.lab
                    .plan
                    .members(index, apps)
                    .into_iter()
                    .map(|m| m.host_ip)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The size of apps' store (`raftmesh_mvcc_bytes` of its first member).
    pub(super) async fn apps_bytes(&self) -> Option<f64> {
        let (index, apps) = plan::indexed(&self.lab.state.spec).find(|(_, c)| c.name == "apps")?;
        let m = self.lab.plan.members(index, apps).into_iter().next()?;
        hostile::mvcc_bytes(m.host_ip).await.ok()
    }

    /// `hostile-remote`'s checks, once the faults are over and the honest clusters converged.
    pub(super) async fn check_attack(&mut self, report: &mut Report) -> Result<()> {
        let Some(attack) = self.attack.take() else {
            return Ok(());
        };
        attack.stop.cancel();
        let _ = attack.status.await;
        // A pause between two polls of the status record shows in the mirror's counter.
        if !attack.seen.paused.load(Ordering::Relaxed) {
            for host in self.apps_member_hosts() {
                if hostile::pauses(host).await.is_ok_and(|n| n > 0.0) {
                    attack.seen.paused.store(true, Ordering::Relaxed);
                }
            }
        }
        let after = self.apps_agents()?;
        let growth = match (attack.bytes_before, self.apps_bytes().await) {
            (Some(b), Some(a)) => Some((
                a - b,
                hostile::allowed_growth(attack.began.elapsed().as_secs_f64()),
            )),
            _ => None,
        };
        let status = tokio::task::block_in_place(|| self.lab.mesh_status("apps"))?;
        let violations = hostile::check(
            &attack.targets,
            &attack.before,
            &after,
            &attack.seen,
            growth,
            &status["keyConflicts"],
        );
        report.violations.insert("hostile".to_owned(), violations);
        report
            .availability
            .entry("apps".to_owned())
            .or_insert(json!({}))["hostile"] = json!({
            "rewrites": attack.rewrites,
            "paused": attack.seen.paused.load(Ordering::Relaxed),
            "rejected_records": attack.seen.rejected.load(Ordering::Relaxed),
            "store_growth_bytes": growth.map(|g| g.0),
            "store_growth_allowed_bytes": growth.map(|g| g.1),
        });
        Ok(())
    }
}
