//! A closed-loop load driver: N client tasks sharing C connections, each issuing one request at a
//! time until a fixed number of operations is done.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use etcd_client::Client;
use tokio::task::JoinSet;

use crate::progress::Progress;
use crate::stats::Samples;

/// How many clients issue how many operations over how many connections.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub clients: usize,
    pub connections: usize,
    pub ops: usize,
}

/// What a load run measured.
#[derive(Debug)]
pub struct Measured {
    /// Operations that succeeded.
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency of each successful operation.
    pub samples: Samples,
}

impl Measured {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens `n` connections, the j-th to `endpoints[j % endpoints.len()]`, as etcd's own benchmark
/// tool spreads its connections over the endpoints it is given.
pub async fn connect(endpoints: &[String], n: usize) -> Result<Vec<Client>> {
    ensure!(!endpoints.is_empty(), "no endpoints to connect to");
    let mut clients = Vec::with_capacity(n);
    for j in 0..n {
        let url = &endpoints[j % endpoints.len()];
        let settings =
            mesh_client::Settings::timeouts(Duration::from_secs(5), Some(Duration::from_secs(30)));
        let client = mesh_client::member(url, None, &settings).await?;
        clients.push(client);
    }
    Ok(clients)
}

/// One client whose requests are spread over every endpoint in turn (tonic's balanced
/// channel), as etcdctl and clientv3 spread theirs over the endpoints they are given.
pub async fn connect_balanced(endpoints: &[String]) -> Result<Client> {
    ensure!(!endpoints.is_empty(), "no endpoints to connect to");
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    Client::connect(endpoints, Some(options))
        .await
        .with_context(|| format!("connecting to {}", endpoints.join(",")))
}

/// Runs `load.ops` operations: `load.clients` tasks, task i using connection
/// `i % load.connections`, each taking the next operation number n and awaiting
/// `op(client, i, n)` before taking another. Failed operations are counted, not retried.
pub async fn run<F, Fut>(
    endpoints: &[String],
    load: Load,
    progress: &Progress,
    op: F,
) -> Result<Measured>
where
    F: Fn(Client, usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let connections = connect(endpoints, load.connections).await?;
    run_on(connections, load, progress, op).await
}

/// [`run`] over connections already made (`load.connections` is not used).
pub async fn run_on<F, Fut>(
    connections: Vec<Client>,
    load: Load,
    progress: &Progress,
    op: F,
) -> Result<Measured>
where
    F: Fn(Client, usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    ensure!(!connections.is_empty(), "no connections to run on");
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress.track(load.ops as u64, done.clone());
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..load.clients {
        let client = connections[i % connections.len()].clone();
        let (next, done, op) = (next.clone(), done.clone(), op.clone());
        let per_task = load.ops / load.clients + 1;
        tasks.spawn(async move {
            let mut samples = Samples::with_capacity(per_task);
            let mut errors = 0;
            let mut first_error = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= load.ops {
                    break;
                }
                let begun = Instant::now();
                match op(client.clone(), i, n).await {
                    Ok(()) => samples.record(begun.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (samples, errors, first_error)
        });
    }
    let mut measured = Measured {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        samples: Samples::with_capacity(load.ops),
    };
    while let Some(joined) = tasks.join_next().await {
        let (samples, errors, first_error) = joined.context("a client task panicked")?;
        measured.samples.merge(samples);
        measured.errors += errors;
        if measured.first_error.is_none() {
            measured.first_error = first_error;
        }
    }
    measured.elapsed = started.elapsed();
    measured.ops = measured.samples.len() as u64;
    ticker.finish();
    Ok(measured)
}
