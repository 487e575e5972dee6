//! The Multi-Cluster Services API on a lab (issue 30): exports, ClusterSetIPs and
//! `clusterset.local` DNS, judged by what a pod sees — glibc's getaddrinfo (`getent`), dig
//! (bind9's, a resolver we did not write) and TCP connects by name (`mesh-echo probe`, which
//! resolves with getaddrinfo before each attempt) — from the pods' own namespaces, through
//! the resolv.conf the lab gives them.
//!
//! The mcs-api conformance suite (`sigs.k8s.io/mcs-api/conformance`) needs real clusters;
//! each step below names the conformance specs it mirrors, as the suite words them (its
//! `Context` and `Specify` texts; README's conformance table lists all 27 and what covers each).

use std::collections::BTreeSet;

use lab::spec::{LabSpec, PortSpec, ServiceSpec};

use crate::support::{PATIENCE, TestLab, eventually};

fn service(name: &str, exported: bool, headless: bool) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        namespace: "demo".to_owned(),
        global: false,
        shared: true,
        affinity: "none".to_owned(),
        exported,
        headless,
        selector: [("app".to_owned(), "echo".to_owned())].into(),
        ports: vec![PortSpec {
            name: "http".to_owned(),
            port: 80,
            target_port: 8080,
            protocol: "TCP".to_owned(),
        }],
    }
}

/// The default lab plus: `web` exported by infra only (apps has no Service of that name),
/// `both` exported by both clusters, `hl` headless and exported by both, `clash` exported by
/// both with port 81 in apps and 80 in infra; all select the echo pods (two per cluster). The
/// lab dates a cluster's exports by its id: apps (1) exported first.
fn spec() -> LabSpec {
    let mut spec = LabSpec::default_lab();
    for c in &mut spec.clusters {
        if c.name == "infra" {
            c.services.push(service("web", true, false));
        }
        c.services.push(service("both", true, false));
        c.services.push(service("hl", true, true));
        let mut clash = service("clash", true, false);
        clash.ports[0].port = if c.name == "apps" { 81 } else { 80 };
        c.services.push(clash);
    }
    spec
}

/// The objects of `file` the MCS controller of `cluster` wrote (the lab's manifests sink).
fn mcs_objects(lab: &TestLab, cluster: &str, file: &str) -> Vec<serde_json::Value> {
    let dir = lab.status()["dir"].as_str().unwrap().to_owned();
    let path = std::path::Path::new(&dir)
        .join("manifests")
        .join(cluster)
        .join("mcs")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

/// The ServiceImport `demo/name` in `cluster`, if there is one.
fn service_import(lab: &TestLab, cluster: &str, name: &str) -> Option<serde_json::Value> {
    mcs_objects(lab, cluster, "serviceimports.yaml")
        .into_iter()
        .find(|o| o["metadata"]["name"] == name && o["metadata"]["namespace"] == "demo")
}

/// `meshctl lab exec POD -- ARGS`: stdout (whatever the exit status: dig and getent say
/// "not found" with one).
fn run(lab: &TestLab, pod: &str, args: &[&str]) -> String {
    let mut all = vec!["lab", "exec", pod, "--"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&lab.meshctl(&all).stdout).into_owned()
}

/// getaddrinfo's IPv4 addresses of `name` in `pod` (`getent ahostsv4`).
fn getaddrinfo(lab: &TestLab, pod: &str, name: &str) -> BTreeSet<String> {
    run(lab, pod, &["getent", "ahostsv4", name])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// dig's status and answer records (`name TTL IN TYPE data`) for `name`/`qtype` in `pod`.
fn dig(lab: &TestLab, pod: &str, name: &str, qtype: &str) -> (String, Vec<String>) {
    let out = run(
        lab,
        pod,
        &["dig", "+noall", "+comments", "+answer", name, qtype],
    );
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no answer)")
        .to_owned();
    let answers = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (status, answers)
}

/// Which clusters answered `count` TCP connections to `name:80` from `pod`, made by name.
fn by_name(lab: &TestLab, pod: &str, name: &str, count: u32) -> (BTreeSet<String>, u32) {
    let (clusters, failures) = lab.clusters_answering(pod, &format!("{name}:80"), count);
    (clusters.into_keys().collect(), failures)
}

#[test]
fn multi_cluster_services() {
    let mut lab = TestLab::new("m");
    let path = lab.dir.path().join("mcs.yaml");
    std::fs::write(&path, serde_yaml::to_string(&spec()).unwrap()).unwrap();
    lab.up(&["--spec", path.to_str().unwrap()]);

    // 1. Exported in infra only, reached from apps by name with no Service of that name in
    //    apps (conformance: "Connectivity to an exported ClusterIP service"; "A DNS lookup of
    //    the <service>.<ns>.svc.clusterset.local domain for a ClusterIP service should resolve
    //    to the clusterset IP"); the address is the same in both clusters.
    let web = "web.demo.svc.clusterset.local";
    let in_apps = eventually("web resolves in apps", PATIENCE, || {
        Some(getaddrinfo(&lab, "apps/client", web)).filter(|a| !a.is_empty())
    });
    let in_infra = getaddrinfo(&lab, "infra/client", web);
    assert_eq!(in_apps.len(), 1, "{in_apps:?}");
    assert_eq!(
        in_apps, in_infra,
        "a ClusterSetIP is the same in every cluster"
    );
    let ip = in_apps.into_iter().next().unwrap();
    assert!(
        ip.starts_with("10.254."),
        "{ip} is outside the lab's clusterset range"
    );
    let (clusters, failures) = by_name(&lab, "apps/client", web, 10);
    assert_eq!(
        (clusters, failures),
        (BTreeSet::from(["infra".to_owned()]), 0)
    );
    // The ServiceImport in both clusters (conformance: "Exporting a ClusterIP service should
    // create a ServiceImport of type ClusterSetIP in the service's namespace in each cluster";
    // "An IP should be allocated for a ClusterSetIP ServiceImport for each IP family"), with
    // the address DNS gives.
    for cluster in ["apps", "infra"] {
        let import = eventually("the ServiceImport of web", PATIENCE, || {
            service_import(&lab, cluster, "web")
        });
        assert_eq!(import["spec"]["type"], "ClusterSetIP");
        assert_eq!(import["spec"]["ips"], serde_json::json!([ip]));
        // Conformance: "The InternalTrafficPolicy for a ClusterSetIP ServiceImport should
        // match the exported service's InternalTrafficPolicy" (the lab's Services say Cluster).
        assert_eq!(import["spec"]["internalTrafficPolicy"], "Cluster");
        assert_eq!(
            import["status"]["clusters"],
            serde_json::json!([{"cluster": "infra"}])
        );
    }
    // meshctl shows the import and its address, as the cluster's store and agents have it.
    let imports: serde_json::Value = serde_json::from_str(&lab.ok(&[
        "services",
        "--clusterset",
        "--context",
        "apps",
        "-o",
        "json",
    ]))
    .unwrap();
    let shown = imports
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == "demo/web")
        .unwrap();
    assert_eq!(shown["clustersetIP"], ip.as_str());
    assert_eq!(shown["clusters"], serde_json::json!(["infra"]));
    // Short names through the pod's search path, as a pod of namespace demo writes them.
    assert_eq!(
        getaddrinfo(&lab, "apps/client", "web"),
        BTreeSet::from([ip.clone()])
    );

    // 2. Exported in both: both clusters answer; unexported in apps: only infra, once the
    //    change has propagated (the agents program it as it reaches them: PATIENCE bounds it
    //    here, the benchmark measures it; conformance: "Connectivity to a ClusterIP service
    //    existing in two clusters but exported from one"); unexported everywhere: the import
    //    goes and the name is NXDOMAIN (conformance: "A ServiceImport should only exist as
    //    long as there's at least one exporting cluster"; "Connectivity to a service that is
    //    not exported").
    let both = "both.demo.svc.clusterset.local";
    eventually("both clusters answer for both", PATIENCE, || {
        let (clusters, failures) = by_name(&lab, "apps/client", both, 20);
        (clusters.len() == 2 && failures == 0).then_some(())
    });
    lab.apply(|s| {
        for c in &mut s.clusters {
            if c.name == "apps" {
                c.services
                    .iter_mut()
                    .find(|s| s.name == "both")
                    .unwrap()
                    .exported = false;
            }
        }
    });
    eventually("only infra answers once apps unexports", PATIENCE, || {
        let (clusters, failures) = by_name(&lab, "apps/client", both, 20);
        (clusters == BTreeSet::from(["infra".to_owned()]) && failures == 0).then_some(())
    });
    lab.apply(|s| {
        for c in &mut s.clusters {
            if let Some(svc) = c.services.iter_mut().find(|s| s.name == "both") {
                svc.exported = false;
            }
        }
    });
    eventually("NXDOMAIN once nobody exports", PATIENCE, || {
        (dig(&lab, "apps/client", both, "A").0 == "NXDOMAIN").then_some(())
    });
    assert!(getaddrinfo(&lab, "apps/client", both).is_empty());
    eventually("the ServiceImport of both goes", PATIENCE, || {
        service_import(&lab, "apps", "both").is_none().then_some(())
    });

    // 4. A port conflict (conformance: "A ClusterIP service exported on two clusters with
    //    conflicting ports should apply the conflict resolution policy and report a Conflict
    //    condition on each ServiceExport"): apps
    //    exported first, so the import has its port 81; both exports say why.
    let import = eventually("the ServiceImport of clash", PATIENCE, || {
        service_import(&lab, "infra", "clash")
    });
    assert_eq!(import["spec"]["ports"][0]["port"], 81);
    for cluster in ["apps", "infra"] {
        let conflict = eventually("the Conflict condition", PATIENCE, || {
            let statuses = mcs_objects(&lab, cluster, "serviceexports-status.yaml");
            let clash = statuses.iter().find(|o| o["metadata"]["name"] == "clash")?;
            clash["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Conflict" && c["status"] == "True")
                .cloned()
        });
        assert_eq!(conflict["reason"], "PortConflict");
        assert_eq!(
            conflict["message"],
            r#"using the oldest export's (apps) where exports disagree: PortConflict: port "http": 80/TCP in infra, 81/TCP in apps (exported first)"#
        );
    }

    // 3. Headless, exported by both (conformance: "Exporting a headless service should create
    //    a ServiceImport of type Headless …"; "No clusterset IP should be allocated for a
    //    Headless ServiceImport"; "A DNS query of the <service>.<ns>.svc.clusterset.local
    //    domain for a headless service should return the ready endpoint addresses of all the
    //    backing pods"; "A DNS query of the <hostname>.<clusterid>.<service>.<ns>.svc.
    //    clusterset.local domain for a headless StatefulSet service should return the
    //    requested pod's endpoint address"; "A DNS SRV query of the <service>.<ns>.svc.
    //    clusterset.local domain for a headless service should return valid SRV records"): A
    //    records are the ready pods of both clusters; per-pod names resolve; SRV lists the
    //    named port on each pod.
    let hl = "hl.demo.svc.clusterset.local";
    let pods =
        BTreeSet::from(["10.1.1.10", "10.1.2.10", "10.2.1.10", "10.2.2.10"].map(String::from));
    assert_eq!(getaddrinfo(&lab, "apps/client", hl), pods);
    assert_eq!(getaddrinfo(&lab, "infra/client", hl), pods);
    let (status, answers) = dig(
        &lab,
        "apps/client",
        "echo-1.infra.hl.demo.svc.clusterset.local",
        "A",
    );
    assert_eq!(status, "NOERROR");
    assert_eq!(
        answers,
        ["echo-1.infra.hl.demo.svc.clusterset.local. 5 IN A 10.2.1.10"]
    );
    let (status, answers) = dig(&lab, "apps/client", &format!("_http._tcp.{hl}"), "SRV");
    assert_eq!(status, "NOERROR");
    let targets: BTreeSet<String> = answers
        .iter()
        .map(|a| a.split(' ').skip(3).collect::<Vec<_>>().join(" "))
        .collect();
    let want: BTreeSet<String> = ["apps.hl", "infra.hl"]
        .iter()
        .flat_map(|c| {
            ["echo-1", "echo-2"]
                .map(|p| format!("SRV 0 100 8080 {p}.{c}.demo.svc.clusterset.local."))
        })
        .collect();
    assert_eq!(targets, want);
    // A pod whose endpoint is not ready is no answer (NXDOMAIN for its name).
    lab.apply(|s| {
        for c in &mut s.clusters {
            if c.name == "infra" {
                c.pods
                    .iter_mut()
                    .find(|p| p.name == "echo-1")
                    .unwrap()
                    .ready = false;
            }
        }
    });
    eventually(
        "a not-ready pod leaves the headless answer",
        PATIENCE,
        || {
            let mut want = pods.clone();
            want.remove("10.2.1.10");
            (getaddrinfo(&lab, "apps/client", hl) == want).then_some(())
        },
    );
    assert_eq!(
        dig(
            &lab,
            "apps/client",
            "echo-1.infra.hl.demo.svc.clusterset.local",
            "A"
        )
        .0,
        "NXDOMAIN"
    );
}
