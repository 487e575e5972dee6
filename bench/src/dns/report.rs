//! The markdown and JSON the benchmark writes.

use super::*;

pub(super) fn report(
    args: &DnsArgs,
    p: &InProcessReport,
    lab: Option<&LabReport>,
    machine: &Machine,
    command: String,
) -> Result<()> {
    let mut md = format!(
        "# mesh-bench dns\n\n\
         Command: `{command}`\n\n\
         - Machine: {machine}\n\
         - Started: {} (commit {})\n\n",
        machine.started, machine.git_commit
    );
    let _ = writeln!(
        md,
        "## Queries answered by one agent, {services} imported services\n\n\
         - The agent's zone: {services} ClusterSetIP imports exported by one remote cluster, \
         spread over {NAMESPACES} namespaces ({headless} of them headless, with \
         {HEADLESS_ENDPOINTS} ready endpoints each), built from the records as the agent does \
         (`MeshState::apply`, `refresh_clusterset`, `Zone::replace`: {build:.0} ms), served \
         by `node_agent::dns::serve` on loopback from a current-thread tokio runtime on its \
         own thread, as in the agent.\n\
         - Anchor: dnsmasq ({dnsmasq}), its own process on another loopback port, the same \
         names as host records (`--addn-hosts`, `--local=/clusterset.local/`, \
         `--cache-size=0`, `--local-ttl=5`, no upstream). It is the in-memory DNS server we \
         can run here: CoreDNS (the issue's reference) is not installable on this machine.\n\
         - Floor: a UDP echo responder on one thread (each request sent back with the QR bit \
         set): what this client and loopback can do with a server that does nothing.\n\
         - Client (the same for all three): {clients} UDP sockets on one current-thread tokio \
         runtime, each with one A query outstanding (the next sent when the last is answered), \
         names picked at random (seed {seed}): {nx}% from {ABSENT_NAMES} names that do not \
         exist (NXDOMAIN), the rest from every service's name. Every answer is decoded (hickory) \
         and checked against the state — the ClusterSetIP, the headless endpoints, NXDOMAIN — \
         and a wrong one fails the run; before timing, each server answered every name once \
         correctly. A measurement: {warm} s unrecorded, then {dur} s; each server {rounds} \
         times, interleaved (floor, dnsmasq, agent, floor, …). Latency is the client's, send \
         to answer decoded.\n\
         - Server CPU: the server thread's (agent, floor) or process's (dnsmasq) user+system \
         time in the window from /proc (10 ms ticks), per answered query. On {cores} cores the \
         client, one server thread and the rest of the machine share them.\n",
        services = p.services,
        headless = p.headless,
        build = p.build_ms,
        dnsmasq = p
            .servers
            .iter()
            .find(|s| s.server == "dnsmasq")
            .map_or("", |s| s.version.as_str()),
        clients = p.clients,
        seed = p.seed,
        nx = p.nxdomain_percent,
        warm = WARMUP.as_secs_f64(),
        dur = p.duration_s,
        rounds = p.rounds,
        cores = machine.cores,
    );
    let _ = writeln!(
        md,
        "| server | queries/s (min–max of {r}) | p50 ms (min–max) | p99 ms (min–max) | \
         p99.9 ms (max) | server CPU µs/query | server busy, % of a core | answers checked | \
         timeouts |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|",
        r = p.rounds
    );
    let range = |(lo, hi): (f64, f64), digits: usize| {
        if (hi - lo).abs() < f64::EPSILON {
            format!("{lo:.digits$}")
        } else {
            format!("{lo:.digits$}–{hi:.digits$}")
        }
    };
    for s in &p.servers {
        let checked: u64 = s.runs.iter().map(|r| r.answered).sum();
        let timeouts: u64 = s.runs.iter().map(|r| r.timeouts).sum();
        let cpu = |f: &dyn Fn(&LoadRun, f64) -> f64, digits: usize| {
            let r = s
                .runs
                .iter()
                .filter_map(|r| Some(f(r, r.server_cpu_us_per_query?)))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            if r.0.is_finite() {
                range(r, digits)
            } else {
                "–".to_owned()
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {} | {} | {} | {} |",
            s.server,
            range(s.range(|r| r.queries_per_second), 0),
            range(s.range(|r| r.latency.p50_ms), 3),
            range(s.range(|r| r.latency.p99_ms), 3),
            s.range(|r| r.latency.p999_ms).1,
            cpu(&|_, us| us, 1),
            cpu(&|r, us| us * r.queries_per_second / 1e4, 0),
            if s.verified_names > 0 {
                format!("{checked} + {} names once", s.verified_names)
            } else {
                format!("{checked} (echo only)")
            },
            timeouts,
        );
    }
    let by = |name: &str| p.servers.iter().find(|s| s.server == name);
    if let (Some(agent), Some(dnsmasq), Some(floor)) = (
        by("raftmesh node agent"),
        by("dnsmasq"),
        by("UDP echo (floor)"),
    ) {
        // Round by round: the servers of one round ran back to back.
        let ratio = |a: &ServerRuns, b: &ServerRuns| {
            a.runs
                .iter()
                .zip(&b.runs)
                .map(|(x, y)| x.queries_per_second / y.queries_per_second)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        };
        let _ = writeln!(
            md,
            "\nQueries/s, round by round: the agent at {}× dnsmasq's and {}× the floor's; \
             dnsmasq at {}× the floor's. A server whose busy share is near 100 % answers at its \
             capacity on one core of this machine; a server close to the floor is held back by \
             the client, and then its CPU µs per query is the figure that compares it.\n",
            range(ratio(agent, dnsmasq), 2),
            range(ratio(agent, floor), 2),
            range(ratio(dnsmasq, floor), 2),
        );
    }
    // CoreDNS's published figures (found in its documentation; CoreDNS is not installable
    // here), set beside the agent's CPU per query, the one figure that travels across machines
    // at all.
    let agent_cpu = by("raftmesh node agent")
        .map(|a| {
            a.runs
                .iter()
                .filter_map(|r| r.server_cpu_us_per_query)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        })
        .filter(|r| r.0.is_finite())
        .map_or_else(|| "–".to_owned(), |r| range(r, 1));
    let _ = writeln!(
        md,
        "CoreDNS: not measured (not installable here). The comparison this run allows is with \
         CoreDNS's own published figures, from other hardware and another client: one CoreDNS \
         1.2.5 instance (`kubernetes` plugin) on a GCE n1-standard-2 node (2 vCPUs) answered \
         33,669 internal queries/s at 2.608 ms average latency, measured client-side with \
         dnsperf over the network with both vCPUs pegged — about 59 µs of CPU per query, that \
         node's network stack included ([coredns/deployment, \
         Scaling_CoreDNS.md](https://github.com/coredns/deployment/blob/master/\
         kubernetes/Scaling_CoreDNS.md), \
         \"CPU and QPS\"); the [CoreDNS 1.0.0 release \
         notes](https://github.com/coredns/coredns/blob/master/notes/coredns-1.0.0.md) report \
         18,000 queries/s against a cluster of 5,000 services. Neither gives a p99. The agent \
         here used {agent_cpu} µs of one core per query on loopback: an order-of-magnitude \
         comparison only (hardware, kernel path and client all differ).\n"
    );

    match lab {
        None => {
            let _ = writeln!(
                md,
                "## ServiceExport → the name resolves (lab)\n\nSkipped: run with `--lab` \
                 (root).\n"
            );
        }
        Some(l) => lab_markdown(&mut md, l, args),
    }

    let raw = json!({
        "command": command,
        "machine": machine,
        "in_process": p,
        "lab": lab.map(|l| {
            let pooled = |f: fn(&LabRound) -> &Vec<f64>| {
                summary(&l.rounds.iter().flat_map(|r| f(r).iter().copied()).collect::<Vec<_>>())
            };
            json!({
                "changes_per_round": l.changes_per_round,
                "poll_ms": args.lab_poll.as_millis(),
                "seed": args.seed,
                "rounds": l.rounds.iter().map(|r| json!({
                    "resolved": summary(&r.resolved_ms),
                    "published": summary(&r.published_ms),
                    "published_to_resolved": summary(&r.published_to_resolved_ms),
                    "raw": r,
                })).collect::<Vec<_>>(),
                "pooled": {
                    "resolved": pooled(|r| &r.resolved_ms),
                    "published": pooled(|r| &r.published_ms),
                    "published_to_resolved": pooled(|r| &r.published_to_resolved_ms),
                },
                "addresses": l.addresses,
            })
        }),
    });
    crate::report::write_table(&args.out, "dns", &md, &raw)
}

pub(super) fn lab_markdown(md: &mut String, l: &LabReport, args: &DnsArgs) {
    let _ = writeln!(
        md,
        "## ServiceExport in infra → the name resolves in apps (lab)\n\n\
         - The default lab (two clusters of 3 API-server members and 2 nodes). A change adds \
         one new service `demo/bench-<i>` to `infra` with a ServiceExport (selecting its echo \
         pods; `Lab::apply` rewrites the manifests), after a pause drawn from 0–1 s (seed \
         {seed}). From the apply returning, a socket in `apps`/node-1's network namespace asks \
         that node's agent (`--dns-listen` on the node address, what the pods' resolv.conf \
         names) for `bench-<i>.demo.svc.clusterset.local` A every {poll} ms until it answers \
         with an address (checked to be in the lab's clusterset range \
         {range}).\n\
         - Stages: **published** — `infra`'s store has the exported service record (a watch \
         from the host): the publisher's 1 s manifests poll and one pass, a lab-only cost (on \
         Kubernetes the publisher watches the API), sampled uniformly by the random pauses; \
         **resolves** — the agent answers. published → resolves is the mesh's own share \
         (mirror to `apps`' store, the agent's watch, its clusterset and zone update). The \
         poll adds up to {poll} ms to each figure.\n\
         - {rounds} rounds of {n} changes; with {n} changes a round's p99 is its slowest \
         change.\n",
        seed = args.seed,
        poll = args.lab_poll.as_millis(),
        range = lab::plan::CLUSTERSET_CIDR,
        rounds = l.rounds.len(),
        n = l.changes_per_round,
    );
    let _ = writeln!(
        md,
        "| round | export → resolves p50 / p99 / max ms | published (manifests poll) p50 / p99 \
         ms | published → resolves p50 / p99 / max ms |\n|---|---:|---:|---:|"
    );
    let cell3 = |p: Option<Percentiles>| {
        p.map_or_else(
            || "–".to_owned(),
            |p| format!("{:.0} / {:.0} / {:.0}", p.p50_ms, p.p99_ms, p.max_ms),
        )
    };
    let cell2 = |p: Option<Percentiles>| {
        p.map_or_else(
            || "–".to_owned(),
            |p| format!("{:.0} / {:.0}", p.p50_ms, p.p99_ms),
        )
    };
    for (i, r) in l.rounds.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            i + 1,
            cell3(summary(&r.resolved_ms)),
            cell2(summary(&r.published_ms)),
            cell3(summary(&r.published_to_resolved_ms)),
        );
    }
    let all = |f: fn(&LabRound) -> &Vec<f64>| {
        summary(
            &l.rounds
                .iter()
                .flat_map(|r| f(r).iter().copied())
                .collect::<Vec<_>>(),
        )
    };
    let _ = writeln!(
        md,
        "| all {} | {} | {} | {} |",
        l.rounds.iter().map(|r| r.resolved_ms.len()).sum::<usize>(),
        cell3(all(|r| &r.resolved_ms)),
        cell2(all(|r| &r.published_ms)),
        cell3(all(|r| &r.published_to_resolved_ms)),
    );
    let per_round = |f: fn(&Percentiles) -> f64| {
        l.rounds
            .iter()
            .filter_map(|r| summary(&r.resolved_ms))
            .map(|p| f(&p))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (p50, p99) = (per_round(|p| p.p50_ms), per_round(|p| p.p99_ms));
    let _ = writeln!(
        md,
        "\nExport → resolves across rounds: p50 {:.0}–{:.0} ms, p99 {:.0}–{:.0} ms.\n",
        p50.0, p50.1, p99.0, p99.1
    );
}
