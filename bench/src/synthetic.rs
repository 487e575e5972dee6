//! Synthetic clusters of a given size, as manifests, for the benchmarks (`publish`, `mirror`):
//! `nodes` nodes (pod CIDR `10.<n>.0.0/16` each), `services` services each selecting its own
//! label set with one EndpointSlice of `pods / services` endpoints, and `pods` running pods
//! spread over the nodes and the services' label sets.
//!
//! Test data, not product code: it lives here rather than in mesh-apiserver, which reads
//! manifests but never makes them. It uses only `std`, so mesh-apiserver's acceptance test
//! `t86_publish_leader_kill` includes this file by path (`#[path]`) for the same large
//! cluster, without depending on this crate.

use std::fmt::Write as _;

/// The shape of a synthetic cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Nodes (at most 250).
    pub nodes: usize,
    /// Services (at most 62,500).
    pub services: usize,
    /// Pods (a multiple of `services`; at most 62,500 per node).
    pub pods: usize,
}

impl Shape {
    /// Objects the manifests hold.
    pub fn objects(self) -> usize {
        self.nodes + 2 * self.services + self.pods
    }

    fn pod_ip(self, j: usize) -> String {
        let n = j % self.nodes;
        let k = j / self.nodes;
        format!("10.{n}.{}.{}", k / 250, k % 250 + 1)
    }

    /// The manifests, as one YAML stream.
    pub fn manifests(self) -> String {
        let mut y = String::with_capacity(self.pods * 220 + self.services * 400);
        for n in 0..self.nodes {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}}}\nspec: {{podCIDR: 10.{n}.0.0/16}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.18.{}.{}}}]}}\n",
                n / 250,
                n % 250 + 2
            );
        }
        let per_service = self.pods / self.services.max(1);
        for s in 0..self.services {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: shop}}\nspec: {{selector: {{app: svc-{s}}}, clusterIP: 10.96.{}.{}, ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{s}-abcde, namespace: shop, labels: {{kubernetes.io/service-name: svc-{s}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n",
                s / 250,
                s % 250 + 1
            );
            for k in 0..per_service {
                let j = k * self.services + s;
                let _ = writeln!(
                    y,
                    "- {{addresses: [{}], conditions: {{ready: true}}, nodeName: node-{}}}",
                    self.pod_ip(j),
                    j % self.nodes
                );
            }
        }
        for j in 0..self.pods {
            let n = j % self.nodes;
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{j}, namespace: shop, labels: {{app: svc-{}}}}}\nspec: {{nodeName: node-{n}}}\nstatus: {{phase: Running, hostIP: 172.18.{}.{}, podIP: {}}}\n",
                j % self.services.max(1),
                n / 250,
                n % 250 + 2,
                self.pod_ip(j)
            );
        }
        y
    }
}
