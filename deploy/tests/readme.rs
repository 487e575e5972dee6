//! The README's install steps for Talos and EKS, followed against the rendered chart: the
//! `helm install` commands render (as `helm template`), every object the `kubectl` and
//! `helm test` lines name exists where they say, every name, port and value of the "what |
//! where" tables is in the rendered objects (a kind before a name: an object of that kind and
//! name, in the namespace that follows), and every `key=value` the text suggests renders.

use deploy::render;
use serde_json::Value;

const SECTIONS: [&str; 2] = ["### Install on Talos", "### Install on EKS"];

fn section(readme: &str, title: &str) -> String {
    let start = readme.find(title).unwrap_or_else(|| panic!("no {title}"));
    let rest = &readme[start + title.len()..];
    let end = rest.find("\n### ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The lines of the first ```sh block, continuation lines joined.
fn commands(section: &str) -> Vec<String> {
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// The backticked tokens of `text`.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, t)| t.to_owned())
        .collect()
}

/// Whether `v` holds `token` as a string or a number anywhere.
fn holds(v: &Value, token: &str) -> bool {
    match v {
        Value::String(s) => s == token || s.split([' ', '=', ',']).any(|w| w == token),
        Value::Number(n) => n.to_string() == token,
        Value::Array(a) => a.iter().any(|x| holds(x, token)),
        Value::Object(o) => o.values().any(|x| holds(x, token)),
        _ => false,
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

#[test]
fn the_install_steps_name_only_what_the_chart_renders() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    for title in SECTIONS {
        let text = section(&readme, title);
        let lines = commands(&text);
        // helm install RELEASE deploy/helm/raftmesh -n NS --create-namespace -f … --set …
        let install = lines
            .iter()
            .find(|l| l.starts_with("helm install "))
            .unwrap_or_else(|| panic!("{title}: no helm install"));
        let words: Vec<&str> = install.split(' ').collect();
        let release = words[2];
        assert_eq!(words[3], "deploy/helm/raftmesh", "{title}");
        let mut args: Vec<String> = Vec::new();
        let mut namespace = String::new();
        let mut i = 4;
        while i < words.len() {
            match words[i] {
                "-n" | "--namespace" => {
                    namespace = words[i + 1].to_owned();
                    i += 2;
                }
                "--create-namespace" => i += 1,
                "-f" => {
                    let file = words[i + 1]
                        .strip_prefix("deploy/helm/raftmesh/")
                        .unwrap_or_else(|| panic!("{title}: {}", words[i + 1]));
                    args.extend(["-f".to_owned(), file.to_owned()]);
                    i += 2;
                }
                "--set" => {
                    args.extend(["--set".to_owned(), words[i + 1].to_owned()]);
                    i += 2;
                }
                other => panic!("{title}: an option the test does not know: {other}"),
            }
        }
        let mut template = vec![
            "template".to_owned(),
            release.to_owned(),
            ".".to_owned(),
            "--namespace".to_owned(),
            namespace.clone(),
            "--kube-version".to_owned(),
            deploy::KUBE_VERSION.to_owned(),
        ];
        template.extend(args.iter().cloned());
        let text_out = deploy::helm(&template.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("{title}: {e}"));
        let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text_out)
            .filter_map(|d| {
                let v: Value = serde_json::to_value(
                    <serde_yaml::Value as serde::Deserialize>::deserialize(d).ok()?,
                )
                .ok()?;
                (!v.is_null()).then_some(v)
            })
            .collect();
        assert!(objects.len() > 10, "{title}: {} objects", objects.len());
        let ns_of = |o: &Value| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&namespace)
                .to_owned()
        };

        for line in &lines {
            let w: Vec<&str> = line.split(' ').collect();
            match w.as_slice() {
                ["kubectl", "-n", ns, "rollout", "status", target] => {
                    let (kind, name) = target.split_once('/').unwrap();
                    let kind = match kind {
                        "statefulset" => "StatefulSet",
                        "daemonset" => "DaemonSet",
                        "deployment" => "Deployment",
                        other => panic!("{title}: {other}"),
                    };
                    let o = find(&objects, kind, name)
                        .unwrap_or_else(|| panic!("{title}: {line}: no {kind} {name}"));
                    assert_eq!(ns_of(o), *ns, "{title}: {line}");
                }
                ["helm", "test", r, "-n", ns] => {
                    assert_eq!((*r, *ns), (release, namespace.as_str()), "{title}");
                    assert!(
                        objects
                            .iter()
                            .any(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test"
                                && ns_of(o) == *ns),
                        "{title}: no helm test hook in {ns}"
                    );
                }
                ["helm", "install", ..] => {}
                _ => panic!("{title}: a step the test does not follow: {line}"),
            }
        }

        // The tables: every backticked token is in the rendered objects; `Kind `name`` is an
        // object of that kind, and ``in `ns` `` after it its namespace.
        for row in text
            .lines()
            .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let Some(where_) = cells.get(2) else { continue };
            if *where_ == "where" {
                continue;
            }
            let parts: Vec<&str> = where_.split('`').collect();
            let mut last_object: Option<&Value> = None;
            for (i, token) in parts.iter().enumerate() {
                if i % 2 == 0 {
                    continue;
                }
                let before = parts[i - 1].trim_end();
                let kind = before.split_whitespace().last().unwrap_or("");
                const KINDS: [&str; 9] = [
                    "StatefulSet",
                    "DaemonSet",
                    "Namespace",
                    "Service",
                    "StorageClass",
                    "ConfigMap",
                    "Job",
                    "CronJob",
                    "Pod",
                ];
                let in_namespace = before.ends_with(" in") || before.ends_with(" in Namespace");
                if in_namespace {
                    let o = last_object.unwrap_or_else(|| panic!("{title}: {row}: in what?"));
                    assert_eq!(ns_of(o), *token, "{title}: {row}");
                    if kind == "Namespace" {
                        assert!(
                            find(&objects, "Namespace", token).is_some(),
                            "{title}: {row}: the chart makes no Namespace {token}"
                        );
                    }
                } else if KINDS.contains(&kind) {
                    let o = find(&objects, kind, token)
                        .unwrap_or_else(|| panic!("{title}: {row}: no {kind} {token}"));
                    last_object = Some(o);
                } else {
                    assert!(
                        objects.iter().any(|o| holds(o, token)),
                        "{title}: {row}: {token} is in no rendered object"
                    );
                }
            }
        }

        // Every `key=value` the text suggests renders with the install's values.
        for token in ticked(&text) {
            let Some((key, _)) = token.split_once('=') else {
                continue;
            };
            if key.contains(' ') || !key.contains('.') {
                continue;
            }
            let mut more = template.clone();
            more.extend(["--set".to_owned(), token.clone()]);
            deploy::helm(&more.iter().map(String::as_str).collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("{title}: `{token}` does not render: {e}"));
        }
    }
}

#[test]
fn a_step_naming_what_the_chart_does_not_render_fails_the_check() {
    // The checker's own must-fail: an object the chart does not make is not found.
    let objects = render(&["--set", "cluster.name=apps,cluster.id=1"]).unwrap();
    assert!(find(&objects, "StatefulSet", "r1-apiserver").is_some());
    assert!(find(&objects, "StatefulSet", "r1-etcd").is_none());
    assert!(
        !objects.iter().any(|o| holds(o, "32479")),
        "no NodePort by default"
    );
    assert!(objects.iter().any(|o| holds(o, "r1-agent")));
    assert_eq!(ticked("a `b` c `d=e`"), ["b", "d=e"]);
}
