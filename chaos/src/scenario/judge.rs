//! The run judged: convergence (against the records and against the spec), what healing
//! wrote, where connections went while a remote was stale, and each cluster's histories.

use super::*;

impl Run<'_> {
    /// Waits until mirrors and maps agree; the time from `since` and the last differences.
    pub(super) async fn converge(&self, since: Instant) -> Result<(Option<f64>, Vec<Value>)> {
        let deadline = since + self.opts.converge_within;
        let stale_ms = self.lab.state.spec.remote_stale_after.as_millis() as i64;
        loop {
            let mut diffs: Vec<Value> = Vec::new();
            let mut clients = BTreeMap::new();
            for cluster in self.honest_clusters() {
                match self.connect(&cluster).client(0).await {
                    Ok(c) => {
                        clients.insert(cluster, c);
                    }
                    Err(e) => diffs.push(json!({"cluster": cluster, "unreachable": e.to_string()})),
                }
            }
            if diffs.is_empty() {
                match converge::mirrors(&mut clients).await {
                    Ok(d) => diffs.extend(d.iter().map(|d| json!(d))),
                    Err(e) => diffs.push(json!({"mirrors": e.to_string()})),
                }
                for (cluster, client) in &mut clients {
                    let c = self.lab.state.spec.cluster(cluster).context("cluster")?;
                    let nodes: Vec<String> =
                        self.lab.plan.nodes(c).into_iter().map(|n| n.name).collect();
                    let limits = if self.name == "hostile-remote" {
                        node_agent::desired::Limits {
                            pods: hostile::POD_LIMIT as usize,
                            ..Default::default()
                        }
                    } else {
                        node_agent::desired::Limits::default()
                    };
                    let expected =
                        converge::expected_services(&self.lab.state.spec, &self.lab.plan, cluster);
                    match converge::maps(
                        client,
                        cluster,
                        &nodes,
                        stale_ms,
                        limits,
                        &expected,
                        |n| self.lab.pins(cluster, n),
                    )
                    .await
                    {
                        Ok(d) => diffs.extend(d.iter().map(|d| json!(d))),
                        Err(e) => diffs.push(json!({"maps": cluster, "error": e.to_string()})),
                    }
                }
            }
            if diffs.is_empty() {
                return Ok((Some(since.elapsed().as_secs_f64()), Vec::new()));
            }
            if Instant::now() > deadline {
                return Ok((None, diffs));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes under other clusters' prefixes in `cluster`'s store after revision `from`
    /// (the end of the faults) up to now: what the mirrors wrote to heal. Replayed from the
    /// store's history with a watch.
    pub(super) async fn resync_writes(
        &self,
        cluster: &str,
        connect: &Connect,
        from: i64,
    ) -> Result<u64> {
        let mut c = connect.client(0).await?;
        let now = current_revision(&mut c).await?;
        let mut writes = 0;
        for other in self.clusters().into_iter().filter(|o| o != cluster) {
            let prefix = mesh_api::keys::cluster_prefix(&other);
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(from + 1);
            let mut stream = c.watch(prefix.as_str(), Some(options)).await?;
            // The history comes first; a second without events means it is all here.
            'replay: while let Ok(Ok(Some(resp))) =
                tokio::time::timeout(Duration::from_secs(1), stream.message()).await
            {
                for e in resp.events() {
                    match e.kv() {
                        Some(kv) if kv.mod_revision() > now => break 'replay,
                        Some(_) => writes += 1,
                        None => {}
                    }
                }
            }
        }
        Ok(writes)
    }

    /// `long-disconnect`: every connection from apps/client to demo/echo begun once infra was
    /// surely stale went to apps' backends; after convergence, infra's answered again.
    ///
    /// Surely stale: the agents call a remote stale when its mirror is disconnected and its
    /// last contact is older than --remote-stale-after. The mirror notices a silent remote
    /// after [`MIRROR_SILENCE`]; the agents look once a second; so from the partition on,
    /// `max(stale-after, silence) + 2 s`.
    pub(super) fn check_staleness(
        &self,
        answers: &[Answer],
        began: Instant,
        ended: Instant,
        converged: Instant,
        report: &mut Report,
    ) {
        let stale = self.lab.state.spec.remote_stale_after;
        let from = began + stale.max(MIRROR_SILENCE) + Duration::from_secs(2);
        let (connections, failed, local) = tally(answers, from, ended, "apps");
        let (after_heal, _, remote_after_heal) = tally(answers, converged, Instant::now(), "infra");
        let p = Preference {
            connections,
            failed,
            local,
            after_heal,
            remote_after_heal,
        };
        for problem in p.violations() {
            report
                .violations
                .get_mut("remote-preference")
                .expect("inserted")
                .push(json!({ "problem": problem }));
        }
        report
            .availability
            .entry("apps".to_owned())
            .or_insert(json!({}))["global_while_stale"] = json!(p);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one cluster's records, checked together"
    )]
    pub(super) fn check_cluster(
        &self,
        cluster: &str,
        history: &KvHistory,
        record: &WatchRecord,
        through: i64,
        found: &BTreeMap<String, lost::Found>,
        prefix: &str,
        windows: &[(u64, u64)],
        report: &mut Report,
    ) {
        let lin = linear::check(&history.ops, linear::Limits::default());
        let watched = watch::Watched {
            name: cluster,
            prefix,
            start: record.start,
            through,
            events: &record.events,
        };
        let wv = watch::check(&watched, &history.writes, &history.maybe);
        let lv = lost::check(prefix, found, &history.writes, &history.maybe);
        let push = |report: &mut Report, checker: &str, v: Value| {
            report
                .violations
                .get_mut(checker)
                .expect("inserted")
                .push(v);
        };
        for v in &lin.violations {
            push(
                report,
                "linearizable",
                json!({"cluster": cluster, "violation": v}),
            );
        }
        for v in &wv {
            push(report, "watch", json!({"cluster": cluster, "violation": v}));
        }
        for v in &lv {
            push(
                report,
                "lost-writes",
                json!({"cluster": cluster, "violation": v}),
            );
        }
        // Availability: local writes made while the clusters were cut apart.
        let (writes_during, failed_during) = available::writes_during(&history.ops, windows);
        let (_, refused_during) = history.served_during(windows);
        // The hostile cluster's own work is its own business (it loads its store itself).
        if self.cuts_clusters() && self.honest(cluster) {
            if failed_during > 0 {
                push(
                    report,
                    "availability",
                    json!({"cluster": cluster, "failed_local_writes": failed_during}),
                );
            }
            if refused_during > 0 {
                push(
                    report,
                    "availability",
                    json!({"cluster": cluster, "failed_local_connects": refused_during}),
                );
            }
        }
        report.availability.insert(
            cluster.to_owned(),
            json!({
                "writes_during_faults": writes_during,
                "writes_failed_during_faults": failed_during,
                "connects_failed_during_faults": refused_during,
            }),
        );
        report.operations.insert(
            cluster.to_owned(),
            json!({
                "kv_answered": history.answered(),
                "kv_unanswered": history.unanswered(),
                "acknowledged_writes": history.writes.len(),
                "acknowledged_deletes": history.writes.iter().filter(|w| w.value.is_none()).count(),
                "acknowledged_leased_puts": history.leased_writes,
                "lease_renewals": history.lease_renewals,
                "connect_failures": history.connect_failures.len(),
                "watch_events": record.events.len(),
                "watch_reconnects": record.reconnects,
                "linearizability_keys": lin.keys,
            }),
        );
    }
}
