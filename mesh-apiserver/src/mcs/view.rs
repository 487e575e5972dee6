//! The records the MCS controller needs from this cluster's store — every cluster's service
//! records, endpoint records and cluster records — kept current by one list and a watch of
//! `mesh/v1/` (never a read of the whole prefix per pass).

use std::collections::BTreeMap;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};
use mesh_api::records::{ClusterRecord, EndpointsRecord, ServiceRecord};
use mesh_api::{Key, Kind, Record};

/// Keys per page of the initial list.
const PAGE: i64 = 1000;

/// Every cluster's services, endpoints and cluster records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// By (cluster, namespace, name).
    pub services: BTreeMap<(String, String, String), ServiceRecord>,
    /// By (cluster, namespace, service, slice).
    pub slices: BTreeMap<(String, String, String, String), EndpointsRecord>,
    /// By cluster.
    pub clusters: BTreeMap<String, ClusterRecord>,
}

impl View {
    /// Applies a put (`Some`) or delete (`None`) of `key`; other kinds and undecodable values
    /// are ignored (an undecodable value removes what the key held: it is no longer that).
    /// Returns whether anything changed.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> bool {
        // Only these kinds are kept: the rest (identities, ipcache, nodes, …) is most of a
        // cluster's writes, and is not even decoded.
        if !key.contains("/services/") && !key.contains("/endpoints/") && !key.ends_with("/cluster")
        {
            return false;
        }
        let Ok(parsed) = key.parse::<Key>() else {
            return false;
        };
        if !matches!(
            parsed.kind(),
            Some(Kind::Service | Kind::Endpoints | Kind::Cluster)
        ) {
            return false;
        }
        let record = match (parsed.kind(), value) {
            (Some(kind), Some(v)) => Record::decode(kind, v).ok(),
            _ => None,
        };
        match (parsed, record) {
            (
                Key::Service {
                    cluster,
                    namespace,
                    name,
                },
                r,
            ) => {
                let k = (cluster, namespace, name);
                match r {
                    Some(Record::Service(s)) => {
                        self.services.insert(k, s.clone()).as_ref() != Some(&s)
                    }
                    _ => self.services.remove(&k).is_some(),
                }
            }
            (
                Key::Endpoints {
                    cluster,
                    namespace,
                    service,
                    slice,
                },
                r,
            ) => {
                let k = (cluster, namespace, service, slice);
                match r {
                    Some(Record::Endpoints(e)) => {
                        self.slices.insert(k, e.clone()).as_ref() != Some(&e)
                    }
                    _ => self.slices.remove(&k).is_some(),
                }
            }
            (Key::Cluster { cluster }, r) => match r {
                Some(Record::Cluster(c)) => {
                    self.clusters.insert(cluster, c.clone()).as_ref() != Some(&c)
                }
                _ => self.clusters.remove(&cluster).is_some(),
            },
            _ => false,
        }
    }

    /// Lists `mesh/v1/` into a new view; returns it and the revision it was read at.
    pub async fn list(client: &mut Client) -> Result<(View, i64), etcd_client::Error> {
        let prefix = mesh_api::keys::ROOT.as_bytes().to_vec();
        let end = prefix_end(&prefix);
        let mut view = View::default();
        let mut from = prefix;
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let got = client.get(from.clone(), Some(options)).await?;
            if revision == 0 {
                revision = got.header().map_or(0, |h| h.revision());
            }
            for kv in got.kvs() {
                if let Ok(key) = kv.key_str() {
                    view.apply(key, Some(kv.value()));
                }
            }
            match got.kvs().last() {
                Some(last) if got.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok((view, revision))
    }

    /// A watch of `mesh/v1/` from `revision` + 1.
    pub async fn watch(
        client: &mut Client,
        revision: i64,
    ) -> Result<WatchStream, etcd_client::Error> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        client.watch(mesh_api::keys::ROOT, Some(options)).await
    }

    /// Applies one watch response's events; returns whether anything changed.
    pub fn apply_events(&mut self, response: &etcd_client::WatchResponse) -> bool {
        let mut changed = false;
        for e in response.events() {
            let Some(kv) = e.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let value = match e.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            changed |= self.apply(key, value);
        }
        changed
    }
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
