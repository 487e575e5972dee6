//! The kubeconfig context path on API objects in the shape the API returns them
//! (`kubectl get -o json`; tests/fixtures/kube/).

use super::*;

fn list<T: serde::de::DeserializeOwned>(file: &str) -> Vec<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    if value["kind"] == "List" {
        serde_json::from_value(value["items"].clone()).unwrap()
    } else {
        vec![serde_json::from_value(value).unwrap()]
    }
}

fn one<T: serde::de::DeserializeOwned>(file: &str) -> T {
    list(file).pop().unwrap()
}

#[test]
fn an_eks_load_balancer_is_reached_at_its_host_name() {
    let services: Vec<Service> = list("services-eks.json");
    let service = choose(&services, None, "arn:aws:eks:eu-west-1:1:cluster/infra").unwrap();
    let found = install(service, &[]).unwrap();
    assert_eq!(
        found,
        KubeInstall {
            namespace: "raftmesh".into(),
            service: "r1-remote".into(),
            cluster: Some("infra".into()),
            endpoints: vec![
                "https://k8s-raftmesh-r1remote-5d1c7e0a9b-3f2e8c41d7a6b0e5.elb.eu-west-1.amazonaws.com:2379"
                    .into()
            ],
            server_name: "r1-apiserver.raftmesh.svc".into(),
            admin_secret: "r1-admin-tls".into(),
            ca_secret: "r1-ca".into(),
        }
    );
}

#[test]
fn load_balancer_ips_of_both_families_are_urls() {
    let services: Vec<Service> = list("services-metallb.json");
    let found = install(&services[0], &[]).unwrap();
    assert_eq!(
        found.endpoints,
        ["https://192.168.40.240:2379", "https://[fd00:40::f0]:2379"]
    );
}

#[test]
fn a_load_balancer_without_an_address_yet_is_refused_with_how_to_watch_it() {
    let services: Vec<Service> = list("services-lb-pending.json");
    let err = install(&services[0], &[]).unwrap_err().to_string();
    assert!(err.contains("has no address yet"), "{err}");
    assert!(
        err.contains("kubectl -n raftmesh get service r1-remote"),
        "{err}"
    );
}

#[test]
fn a_node_port_is_reached_on_every_ready_node_external_address_first() {
    let services: Vec<Service> = list("services-talos.json");
    let nodes: Vec<Node> = list("nodes-talos.json");
    let found = install(&services[0], &nodes).unwrap();
    // talos-w1 is not ready; talos-w2 has an external address; sorted by node name.
    assert_eq!(
        found.endpoints,
        ["https://10.5.0.2:32479", "https://203.0.113.12:32479"]
    );
    assert_eq!(found.server_name, "r1-apiserver.mesh.svc");
}

#[test]
fn a_node_port_without_ready_nodes_is_refused() {
    let services: Vec<Service> = list("services-talos.json");
    let mut nodes: Vec<Node> = list("nodes-talos.json");
    nodes.retain(|n| n.metadata.name.as_deref() == Some("talos-w1"));
    let err = install(&services[0], &nodes).unwrap_err().to_string();
    assert!(err.contains("no node is ready"), "{err}");
}

#[test]
fn two_installs_need_a_namespace() {
    let services: Vec<Service> = list("services-two.json");
    let err = choose(&services, None, "admin@talos")
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 raftmesh installs"), "{err}");
    assert!(
        err.contains("mesh/r1-remote, mesh-canary/r1-remote"),
        "{err}"
    );
    assert!(err.contains(NAMESPACE_ENV), "{err}");
    let picked = choose(&services, Some("mesh-canary"), "admin@talos").unwrap();
    assert_eq!(picked.metadata.namespace.as_deref(), Some("mesh-canary"));
    let err = choose(&services, Some("default"), "admin@talos")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no raftmesh install in namespace default"),
        "{err}"
    );
}

#[test]
fn no_install_says_to_install_the_chart() {
    let err = choose(&[], None, "admin@talos").unwrap_err().to_string();
    assert!(err.contains("helm install"), "{err}");
}

#[test]
fn a_service_of_an_older_chart_without_annotations_is_refused() {
    let mut service: Service = list::<Service>("services-talos.json").remove(0);
    service
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(ADMIN_SECRET_ANNOTATION);
    let nodes: Vec<Node> = list("nodes-talos.json");
    let err = install(&service, &nodes).unwrap_err().to_string();
    assert!(err.contains(ADMIN_SECRET_ANNOTATION), "{err}");
}

#[test]
fn a_cluster_ip_service_is_not_reachable_from_outside() {
    let mut service: Service = list::<Service>("services-talos.json").remove(0);
    service.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let err = install(&service, &[]).unwrap_err().to_string();
    assert!(err.contains("of type ClusterIP"), "{err}");
}

#[test]
fn secrets_give_admin_credentials_and_the_ca_that_signs_remote_certificates() {
    let admin: Secret = one("secret-admin.json");
    let ca: Secret = one("secret-ca.json");
    let creds = credentials(&admin, Some(&ca)).unwrap();
    let (identity, _) = certs::pki::leaf_info(&creds.cert).unwrap();
    assert_eq!(identity.cluster, "apps");
    assert_eq!(identity.role, certs::Role::Admin);
    let pem = creds.ca.unwrap();
    let authority = certs::pki::CertificateAuthority::from_pem(&pem.cert, &pem.key).unwrap();
    assert_eq!(authority.cluster(), "apps");
    assert_eq!(pem.cert, creds.ca_crt);

    // Without the CA Secret (not readable), the admin credentials still serve.
    assert!(credentials(&admin, None).unwrap().ca.is_none());

    let mut broken = admin.clone();
    broken.data.as_mut().unwrap().remove("tls.key");
    let err = credentials(&broken, None).unwrap_err().to_string();
    assert_eq!(err, "Secret mesh/r1-admin-tls has no tls.key");
}

#[test]
fn member_health_is_pod_readiness() {
    let pods: Vec<Pod> = list("pods-apiserver.json");
    let health = member_health(&pods);
    assert_eq!(health["r1-apiserver-0"], Ok(()));
    assert_eq!(
        health["r1-apiserver-1"],
        Err("pod not ready: containers with unready status: [apiserver]".into())
    );
    assert_eq!(health["r1-apiserver-2"], Err("pod pending".into()));
}

#[test]
fn cache_directories_are_distinct_file_names() {
    let base = Path::new("/x");
    let arn = cache_dir(base, "arn:aws:eks:eu-west-1:1:cluster/infra");
    assert_eq!(
        arn,
        Path::new("/x/arn%3Aaws%3Aeks%3Aeu-west-1%3A1%3Acluster%2Finfra")
    );
    assert_ne!(cache_dir(base, "a:b"), cache_dir(base, "a_b"));
    assert_eq!(cache_dir(base, ".."), Path::new("/x/%2E%2E"));
    assert_eq!(cache_dir(base, "admin@talos").parent(), Some(base));
}
