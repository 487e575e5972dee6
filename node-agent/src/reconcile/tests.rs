use super::*;
use crate::maps::backend_flags;
use crate::testing::*;

/// The maps as a plain table, with the writes counted.
#[derive(Debug, Default)]
struct Fake {
    tables: Tables,
    writes: Vec<String>,
    /// The ipcache's size, when limited.
    ip_capacity: Option<usize>,
}

impl Programmer for Fake {
    type Error = std::io::Error;

    fn set_service(
        &mut self,
        f: &Frontend,
        old: &[Backend],
        new: &[Backend],
    ) -> Result<(), Self::Error> {
        assert_eq!(
            self.tables.services.get(f).map_or(&[][..], Vec::as_slice),
            old,
            "old slots"
        );
        self.writes
            .push(format!("set {}:{} {}", f.vip, f.port, new.len()));
        self.tables.services.insert(*f, new.to_vec());
        Ok(())
    }
    fn remove_service(&mut self, f: &Frontend, _: &[Backend]) -> Result<(), Self::Error> {
        self.writes.push(format!("remove {}:{}", f.vip, f.port));
        self.tables.services.remove(f);
        Ok(())
    }
    fn set_ip(&mut self, p: &Prefix, i: &IpInfo) -> Result<(), Self::Error> {
        let full = self.ip_capacity.is_some_and(|c| {
            self.tables.ipcache.len() >= c && !self.tables.ipcache.contains_key(p)
        });
        if full {
            // What the kernel says of a full hash or LPM map.
            return Err(std::io::Error::from_raw_os_error(7)); // E2BIG
        }
        self.writes.push(format!("ip {}", p.ip));
        self.tables.ipcache.insert(*p, *i);
        Ok(())
    }
    fn remove_ip(&mut self, p: &Prefix) -> Result<(), Self::Error> {
        self.writes.push(format!("unip {}", p.ip));
        self.tables.ipcache.remove(p);
        Ok(())
    }
    fn set_enforced(&mut self, id: u32, on: bool) -> Result<(), Self::Error> {
        self.writes.push(format!("enforce {id} {on}"));
        if on {
            self.tables.enforced.insert(id);
        } else {
            self.tables.enforced.remove(&id);
        }
        Ok(())
    }
    fn set_rule(&mut self, r: &Rule, on: bool) -> Result<(), Self::Error> {
        self.writes.push(format!("rule {on}"));
        if on {
            self.tables.rules.insert(*r);
        } else {
            self.tables.rules.remove(r);
        }
        Ok(())
    }
}

fn mesh() -> Mesh {
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2);
    m.global("apps", "demo/echo", "10.96.0.10")
        .slice(
            "apps",
            "demo/echo",
            "a",
            8080,
            &[ready("10.1.0.11"), ready("10.1.0.12")],
        )
        .global("infra", "demo/echo", "10.100.0.10")
        .slice("infra", "demo/echo", "x", 8080, &[ready("10.2.0.21")])
        .pod("infra", "10.2.0.21", 2 << 16 | 300);
    m
}

/// apps alone, `demo/echo` with one ready backend.
fn apps_with_one_backend() -> Mesh {
    let mut m = Mesh::default();
    m.cluster("apps", 1)
        .global("apps", "demo/echo", "10.96.0.10")
        .slice("apps", "demo/echo", "a", 8080, &[ready("10.1.0.11")]);
    m
}

/// A reconciler that has programmed `m` into a fake from nothing.
fn programmed(m: &Mesh) -> (Reconciler, Fake) {
    let mut r = Reconciler::default();
    let mut fake = Fake::default();
    r.reconcile(&m.state, &local(), 0, &Touched::everything(), &mut fake)
        .unwrap();
    (r, fake)
}

/// The applied tables, with slots sorted (slot order depends on history).
fn sorted(t: &Tables) -> Tables {
    let mut t = t.clone();
    for v in t.services.values_mut() {
        v.sort();
    }
    t
}

#[test]
fn incremental_reconciles_reach_the_full_computation() {
    let mut m = mesh();
    let (mut r, mut fake) = programmed(&m);
    assert_eq!(sorted(r.applied()), desired::tables(&m.state, &local(), 0));
    assert_eq!(fake.tables, *r.applied());

    type Step = Box<dyn Fn(&mut Mesh) -> Touched>;
    let steps: Vec<Step> = vec![
        Box::new(|m| {
            m.slice(
                "infra",
                "demo/echo",
                "x",
                8080,
                &[ready("10.2.0.21"), ready("10.2.0.22")],
            );
            m.pod("infra", "10.2.0.22", 2 << 16 | 300);
            Touched::everything()
        }),
        Box::new(|m| {
            m.delete(mesh_api::Key::Endpoints {
                cluster: "apps".into(),
                namespace: "demo".into(),
                service: "echo".into(),
                slice: "a".into(),
            })
        }),
        Box::new(|m| {
            m.delete(mesh_api::Key::IpCache {
                cluster: "infra".into(),
                ip: "10.2.0.21".parse().unwrap(),
            })
        }),
        Box::new(|m| {
            m.global("apps", "demo/echo", "10.96.0.99");
            Touched::default()
        }),
        Box::new(|m| {
            m.delete(mesh_api::Key::Service {
                cluster: "apps".into(),
                namespace: "demo".into(),
                name: "echo".into(),
            })
        }),
    ];
    for (i, step) in steps.iter().enumerate() {
        let mut touched = step(&mut m);
        // The VIP change in step 3: the builder does not return what it touched.
        touched.services.insert("demo/echo".to_owned());
        r.reconcile(&m.state, &local(), 0, &touched, &mut fake)
            .unwrap();
        assert_eq!(
            sorted(r.applied()),
            desired::tables(&m.state, &local(), 0),
            "step {i}"
        );
        assert_eq!(fake.tables, *r.applied(), "step {i}");
    }
    assert!(r.applied().services.is_empty());
}

#[test]
fn adopting_equal_maps_writes_nothing() {
    let m = mesh();
    let desired = desired::tables(&m.state, &local(), 0);
    let mut r = Reconciler::adopt(desired.clone());
    let mut fake = Fake {
        tables: desired,
        writes: vec![],
        ip_capacity: None,
    };
    let w = r
        .reconcile(&m.state, &local(), 0, &Touched::everything(), &mut fake)
        .unwrap();
    assert_eq!(w.total(), 0, "{:?}", fake.writes);
}

#[test]
fn a_partial_view_removes_nothing_it_does_not_cover() {
    let m = mesh();
    let full = desired::tables(&m.state, &local(), 0);

    // A wiped store: nothing of this cluster is known. Nothing is removed.
    let empty = Mesh::default();
    let mut r = Reconciler::adopt(full.clone());
    let mut fake = Fake {
        tables: full.clone(),
        writes: vec![],
        ip_capacity: None,
    };
    r.reconcile(&empty.state, &local(), 0, &Touched::everything(), &mut fake)
        .unwrap();
    assert_eq!(fake.tables, full, "{:?}", fake.writes);

    // infra relisting (its markers not all back): its backend and pod stay; apps' change applies.
    let mut partial = apps_with_one_backend();
    partial.cluster_record("infra", 2);
    let mut r = Reconciler::adopt(full.clone());
    let mut fake = Fake {
        tables: full.clone(),
        writes: vec![],
        ip_capacity: None,
    };
    r.reconcile(
        &partial.state,
        &local(),
        0,
        &Touched::everything(),
        &mut fake,
    )
    .unwrap();
    let tcp = fake
        .tables
        .services
        .values()
        .find(|b| b.iter().any(|b| b.port == 8080))
        .unwrap();
    let mut ips: Vec<String> = tcp.iter().map(|b| b.ip.to_string()).collect();
    ips.sort();
    assert_eq!(
        ips,
        ["10.1.0.11", "10.2.0.21"],
        "10.1.0.12 removed, infra's kept"
    );
    assert_eq!(fake.tables.ipcache.len(), 1, "infra's pod kept");

    // infra drained (every key gone): a complete, empty view; its entries go.
    let drained = apps_with_one_backend();
    r.reconcile(
        &drained.state,
        &local(),
        0,
        &Touched::everything(),
        &mut fake,
    )
    .unwrap();
    assert_eq!(
        sorted(&fake.tables),
        desired::tables(&drained.state, &local(), 0)
    );
    assert!(fake.tables.ipcache.is_empty());
}

#[test]
fn slots_keep_their_backends() {
    let b = |last: u8| Backend {
        ip: std::net::Ipv4Addr::new(10, 0, 0, last),
        port: 80,
        cluster_id: 1,
        flags: backend_flags::READY,
    };
    // 2 leaves: 5 takes its slot, the others stay.
    assert_eq!(
        arrange(&[b(1), b(2), b(3)], &[b(1), b(3), b(5)]),
        [b(1), b(5), b(3)]
    );
    // 1 leaves with nothing new: the last moves into its slot.
    assert_eq!(arrange(&[b(1), b(2), b(3)], &[b(2), b(3)]), [b(3), b(2)]);
    // Growth appends.
    assert_eq!(arrange(&[b(1)], &[b(1), b(2)]), [b(1), b(2)]);
    assert_eq!(arrange(&[b(1), b(2), b(3), b(4)], &[b(4)]), [b(4)]);
    assert_eq!(arrange(&[b(1), b(2)], &[]), Vec::<Backend>::new());
}

#[test]
fn a_vip_handed_from_one_service_to_another_in_one_batch_stays_programmed() {
    let mut m = mesh();
    let (mut r, mut fake) = programmed(&m);
    // demo/echo goes; demo/aaa (sorting first) takes its cluster IP, in one watch response.
    let mut touched = m.delete(mesh_api::Key::Service {
        cluster: "apps".into(),
        namespace: "demo".into(),
        name: "echo".into(),
    });
    m.global("apps", "demo/aaa", "10.96.0.10").slice(
        "apps",
        "demo/aaa",
        "a",
        8080,
        &[ready("10.1.0.31")],
    );
    touched.services.insert("demo/aaa".to_owned());
    r.reconcile(&m.state, &local(), 0, &touched, &mut fake)
        .unwrap();
    assert_eq!(sorted(r.applied()), desired::tables(&m.state, &local(), 0));
    assert_eq!(fake.tables, *r.applied());
    assert_eq!(r.applied().backends(), 2, "10.1.0.31 on both ports");
}

#[test]
fn a_deleted_service_goes_whole_even_while_a_remote_is_partial() {
    let full = desired::tables(&mesh().state, &local(), 0);
    let mut r = Reconciler::adopt(full.clone());
    let mut fake = Fake {
        tables: full,
        writes: vec![],
        ip_capacity: None,
    };
    // infra relisting (no markers yet) and this cluster's service deleted.
    let mut m = Mesh::default();
    m.cluster("apps", 1);
    m.cluster_record("infra", 2);
    r.reconcile(&m.state, &local(), 0, &Touched::everything(), &mut fake)
        .unwrap();
    assert!(
        fake.tables.services.is_empty(),
        "{:?}",
        fake.tables.services
    );
}

/// Finding 2 of the trust review: remotes fill the ipcache. The pass does not stop at the
/// first failed insert: this cluster's addresses are written first, the policy is applied,
/// and what failed is counted and tried again once there is room.
#[test]
fn a_full_ipcache_never_stops_the_pass_and_this_cluster_comes_first() {
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2);
    // infra's addresses sort before ours: without an order, they would take the room.
    for i in 1..=6 {
        m.pod("infra", &format!("10.0.0.{i}"), 2 << 16 | 300);
    }
    m.pod("apps", "10.1.0.11", 1 << 16 | 300)
        .pod("apps", "10.1.0.12", 1 << 16 | 301)
        .identity(
            "apps",
            1 << 16 | 300,
            &["app=db", "io.kubernetes.pod.namespace=demo"],
        )
        .policy("apps", "demo/db", &[("app", "db")], vec![]);
    let mut r = Reconciler::default();
    let mut fake = Fake {
        ip_capacity: Some(4),
        ..Fake::default()
    };
    let failed = r
        .reconcile(&m.state, &local(), 0, &Touched::everything(), &mut fake)
        .expect_err("the map is full");
    assert_eq!(failed.first.raw_os_error(), Some(7));
    assert_eq!(failed.writes.failed, 4);
    assert_eq!(failed.writes.ips, 4);
    let ours = |f: &Fake| {
        f.tables
            .ipcache
            .values()
            .filter(|i| i.cluster_id == 1)
            .count()
    };
    assert_eq!(ours(&fake), 2, "this cluster's pods are in");
    assert_eq!(
        fake.tables.enforced,
        BTreeSet::from([1 << 16 | 300]),
        "policy applied"
    );
    assert!(!fake.tables.rules.is_empty());
    // Room again: only what failed is tried.
    fake.ip_capacity = None;
    fake.writes.clear();
    let pending = r.take_pending();
    assert_eq!(pending.ips.len(), 4);
    assert!(!pending.policy && !pending.all_ips && !pending.all_services);
    let writes = r
        .reconcile(&m.state, &local(), 0, &pending, &mut fake)
        .unwrap();
    assert_eq!((writes.ips, writes.failed), (4, 0));
    assert_eq!(fake.tables.ipcache.len(), 8);
    assert!(r.take_pending().is_empty());
}
