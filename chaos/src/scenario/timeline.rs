//! The timeline: service churn, and the faults each scenario begins and ends.

use super::*;

/// The node `node-down` unplugs: infra's node-1 serves demo/echo (echo-1) and two churn pods,
/// but not infra's client, whose probe must keep running.
const UNPLUGGED: &str = "infra/node-1";

/// The cluster of the node `node-down` unplugs.
pub(super) fn unplugged_cluster() -> &'static str {
    UNPLUGGED.split_once('/').map_or(UNPLUGGED, |(c, _)| c)
}

impl Run<'_> {
    /// Churns services for `d`: every 300 ms a random churn pod of a random cluster flips
    /// readiness.
    pub(super) async fn churn_for(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let mut spec = self.lab.state.spec.clone();
            let ci = self.rng.below(spec.clusters.len() as u64) as usize;
            let pi = 1 + self.rng.below(4);
            let cluster = spec.clusters[ci].name.clone();
            if let Some(p) = spec.clusters[ci]
                .pods
                .iter_mut()
                .find(|p| p.name == format!("churn-{pi}"))
            {
                p.ready = !p.ready;
            }
            tokio::task::block_in_place(|| self.lab.apply(spec))?;
            if self.faulted {
                *self.churn_during.entry(cluster).or_insert(0) += 1;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    pub(super) async fn begin_faults(
        &mut self,
        loads: &BTreeMap<String, Workloads>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Instant> {
        for w in loads.values() {
            let at = w.clock.tick();
            w.window.lock().expect("not poisoned").push((at, u64::MAX));
        }
        self.faulted = true;
        let third = self.opts.fault / 3;
        // The fault window opens before the fault is made: applying it takes a moment (nft in
        // the fabric, the lab's state saved), and what fails meanwhile is the fault's.
        let began = Instant::now();
        match self.name {
            "partition" | "partition-leader-kill" | "remote-compacted" | "long-disconnect" => {
                tokio::task::block_in_place(|| self.lab.partition("apps", "infra"))?;
                self.note("partition apps infra".to_owned(), progress);
            }
            "degraded" => {
                let d = Degrade {
                    delay_ms: 200,
                    jitter_ms: 50,
                    loss_pct: 5,
                };
                tokio::task::block_in_place(|| self.lab.degrade("apps", "infra", d))?;
                self.note(
                    "degrade apps infra: 200 ms ± 50 ms, 5% loss".to_owned(),
                    progress,
                );
            }
            "isolate-member" => {
                let leader = self.lab.leader("apps")?;
                let t = self.lab.target(&format!("apps/{leader}"))?;
                tokio::task::block_in_place(|| self.lab.isolate(&t))?;
                self.note(
                    format!("isolate apps/{leader} (leader) from its peers"),
                    progress,
                );
                self.isolated = Some(t);
            }
            "node-down" => {
                let t = self.lab.target(UNPLUGGED)?;
                tokio::task::block_in_place(|| self.lab.unplug(&t))?;
                self.note(format!("unplug {UNPLUGGED}"), progress);
            }
            "agent-kill" => {
                let t = self.lab.target("apps/node-1")?;
                tokio::task::block_in_place(|| self.lab.kill(&t))?;
                self.note("kill -9 apps/node-1 (agent)".to_owned(), progress);
            }
            "hostile-remote" => {
                self.attack = Some(self.begin_attack().await?);
                self.note(
                    format!(
                        "hostile: claims apps' client, an apps node and infra's echo-1 as its nodes, relabels its reserved identities, copies apps/node-1's WireGuard key, floods {} pod addresses, rewrites {} KiB records without pause",
                        hostile::FLOOD,
                        hostile::CHURN_VALUE >> 10
                    ),
                    progress,
                );
            }
            _ => unreachable!("checked in run"),
        }
        if self.name == "partition-leader-kill" {
            self.churn_for(third).await?;
            let mut killed = Vec::new();
            for cluster in self.clusters() {
                let leader = self.lab.leader(&cluster)?;
                let t = self.lab.target(&format!("{cluster}/{leader}"))?;
                tokio::task::block_in_place(|| self.lab.kill(&t))?;
                self.note(format!("kill -9 {cluster}/{leader} (leader)"), progress);
                killed.push(t);
            }
            self.churn_for(third).await?;
            for t in killed {
                tokio::task::block_in_place(|| self.lab.start(&t))?;
                self.note(format!("start {}", t.label()), progress);
            }
            self.churn_for(self.opts.fault.saturating_sub(third * 2))
                .await?;
        } else if self.name == "remote-compacted" {
            self.churn_for(third * 2).await?;
            for cluster in self.clusters() {
                let mut c = self.connect(&cluster).client(0).await?;
                let rev = current_revision(&mut c).await?;
                c.compact(
                    rev,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await?;
                self.note(format!("compact {cluster} at revision {rev}"), progress);
            }
            self.churn_for(self.opts.fault.saturating_sub(third * 2))
                .await?;
        } else {
            self.churn_for(self.opts.fault).await?;
        }
        Ok(began)
    }

    pub(super) async fn end_faults(
        &mut self,
        loads: &BTreeMap<String, Workloads>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(Instant, Instant)> {
        // The faults are judged up to here, before any of them is lifted: what happens while
        // they are being lifted is the heal's.
        let judged_until = Instant::now();
        self.faulted = false;
        for w in loads.values() {
            let at = w.clock.tick();
            if let Some(last) = w.window.lock().expect("not poisoned").last_mut() {
                last.1 = at;
            }
        }
        match self.name {
            "partition"
            | "partition-leader-kill"
            | "remote-compacted"
            | "long-disconnect"
            | "degraded" => {
                tokio::task::block_in_place(|| self.lab.heal("apps", "infra"))?;
                self.note("heal apps infra".to_owned(), progress);
            }
            "isolate-member" => {
                let t = self.isolated.take().context("the isolated member")?;
                tokio::task::block_in_place(|| self.lab.rejoin(&t))?;
                self.note(format!("rejoin {}", t.label()), progress);
            }
            "node-down" => {
                let t = self.lab.target(UNPLUGGED)?;
                tokio::task::block_in_place(|| self.lab.plug(&t))?;
                self.note(format!("plug {UNPLUGGED} back in"), progress);
            }
            "agent-kill" => {
                let t: Target = self.lab.target("apps/node-1")?;
                tokio::task::block_in_place(|| self.lab.start(&t))?;
                self.note("start apps/node-1 (agent)".to_owned(), progress);
            }
            "hostile-remote" => {
                if let Some(a) = self.attack.as_mut() {
                    a.stop.cancel();
                    a.rewrites = (&mut a.churn).await.unwrap_or(0);
                }
                let n = self.attack.as_ref().map_or(0, |a| a.rewrites);
                self.note(format!("hostile stops ({n} rewrites)"), progress);
            }
            _ => unreachable!("checked in run"),
        }
        Ok((judged_until, Instant::now()))
    }
}
