//! mesh-delay: the lab's delay stage. This kernel has no netem, so the fabric sends packets
//! between degraded clusters to an NFQUEUE (`meshctl lab degrade --delay`) and this program
//! holds each for its delay before it accepts it.
//!
//! `mesh-delay --queue NUM:DELAY_MS[:JITTER_MS]…` serves each queue with its delay; with a
//! jitter, each packet's delay is uniform in DELAY ± JITTER (so packets may be reordered, as
//! with netem's jitter). Precision: packets are released by a loop that wakes at least every
//! millisecond, so a delay is exact to about 1 ms plus scheduling (measured figures are in the
//! README). A queue holds at most 10 000 packets; beyond that the kernel drops (as netem's
//! limit does).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Most packets a queue holds.
const QUEUE_MAX: u32 = 10_000;
/// Bytes of each packet copied to us (the headers are enough: the verdict does not change it).
const COPY_RANGE: u16 = 64;

fn usage() -> ExitCode {
    eprintln!("usage: mesh-delay --queue NUM:DELAY_MS[:JITTER_MS]...");
    ExitCode::from(64)
}

/// A queue's delay and jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delay {
    delay: Duration,
    jitter: Duration,
}

fn parse(spec: &str) -> Option<(u16, Delay)> {
    let mut parts = spec.split(':');
    let queue = parts.next()?.parse().ok()?;
    let delay = Duration::from_millis(parts.next()?.parse().ok()?);
    let jitter = match parts.next() {
        Some(j) => Duration::from_millis(j.parse().ok()?),
        None => Duration::ZERO,
    };
    (parts.next().is_none() && jitter <= delay).then_some((queue, Delay { delay, jitter }))
}

/// xorshift64*: enough randomness for jitter, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `d` with a uniform offset in ±`jitter`.
    fn around(&mut self, d: Delay) -> Duration {
        if d.jitter.is_zero() {
            return d.delay;
        }
        let span = 2 * d.jitter.as_micros() as u64 + 1;
        let offset = Duration::from_micros(self.next() % span);
        d.delay - d.jitter + offset
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut delays = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next().and_then(|v| parse(v))) {
            ("--queue", Some((q, d))) => {
                delays.insert(q, d);
            }
            _ => return usage(),
        }
    }
    if delays.is_empty() {
        return usage();
    }
    match run(&delays) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-delay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(delays: &BTreeMap<u16, Delay>) -> std::io::Result<()> {
    let mut queue = nfq::Queue::open()?;
    for (&num, d) in delays {
        queue.bind(num)?;
        queue.set_copy_range(num, COPY_RANGE)?;
        queue.set_queue_max_len(num, QUEUE_MAX)?;
        eprintln!(
            "mesh-delay: queue {num}: {} ms ± {} ms",
            d.delay.as_millis(),
            d.jitter.as_millis()
        );
    }
    queue.set_nonblocking(true);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let mut rng = Rng(seed);
    // Held packets by release time; the sequence number keeps equal times in arrival order.
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut held: HashMap<u64, nfq::Message> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = due.peek().copied() {
            if at > now {
                break;
            }
            due.pop();
            let mut msg = held.remove(&id).expect("held");
            msg.set_verdict(nfq::Verdict::Accept);
            queue.verdict(msg)?;
        }
        loop {
            match queue.recv() {
                Ok(msg) => {
                    let d = delays.get(&msg.get_queue_num()).copied().unwrap_or(Delay {
                        delay: Duration::ZERO,
                        jitter: Duration::ZERO,
                    });
                    seq += 1;
                    due.push(Reverse((Instant::now() + rng.around(d), seq)));
                    held.insert(seq, msg);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let next = due
            .peek()
            .map_or(Duration::from_millis(1), |Reverse((at, _))| {
                at.saturating_duration_since(Instant::now())
            });
        std::thread::sleep(next.min(Duration::from_millis(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs() {
        let d = |ms, j| Delay {
            delay: Duration::from_millis(ms),
            jitter: Duration::from_millis(j),
        };
        assert_eq!(parse("7:200"), Some((7, d(200, 0))));
        assert_eq!(parse("8:200:50"), Some((8, d(200, 50))));
        assert_eq!(parse("8:20:50"), None, "jitter above the delay");
        assert_eq!(parse("8"), None);
        assert_eq!(parse("8:1:2:3"), None);
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_spreads() {
        let mut rng = Rng(42);
        let d = Delay {
            delay: Duration::from_millis(200),
            jitter: Duration::from_millis(50),
        };
        let samples: Vec<Duration> = (0..10_000).map(|_| rng.around(d)).collect();
        assert!(
            samples
                .iter()
                .all(|s| *s >= Duration::from_millis(150) && *s <= Duration::from_millis(250))
        );
        let low = samples
            .iter()
            .filter(|s| **s < Duration::from_millis(175))
            .count();
        let high = samples
            .iter()
            .filter(|s| **s > Duration::from_millis(225))
            .count();
        assert!(
            (2000..3000).contains(&low) && (2000..3000).contains(&high),
            "{low} {high}"
        );
    }
}
