//! Availability: local writes and connections to local backends while the clusters are cut
//! apart, where connections to a global service go while a remote is stale, and how soon
//! they stop failing once a remote node or cluster stops answering ([`Failover`]).
//!
//! Writes are placed by their call position on the workload's clock (the faults' begin and
//! end take positions on the same clock); connections by when the attempt began (the time the
//! probe's line was read, less the attempt's duration it reports), in this process.
//!
//! Nothing failing proves nothing unless something was tried: [`Activity`] requires, per
//! cluster and fault window, a number of answered KV operations and of probe connections in
//! proportion to the window, and a window below them fails the run as `inactive`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{Input, Op};

/// One answer of a connection probe: when it was read, whether it succeeded, the cluster that
/// answered.
pub type Answer = (Instant, bool, Option<String>);

/// Answers in `[from, to]`: (all, failed, answered by `cluster`).
pub fn tally(answers: &[Answer], from: Instant, to: Instant, cluster: &str) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for (_, ok, by) in answers.iter().filter(|(at, ..)| *at >= from && *at <= to) {
        t.0 += 1;
        t.1 += u64::from(!ok);
        t.2 += u64::from(by.as_deref() == Some(cluster));
    }
    t
}

/// Writes (puts, deletes, CAS) called inside one of `windows` (clock positions, exclusive):
/// (sent, unanswered).
pub fn writes_during(ops: &[Op], windows: &[(u64, u64)]) -> (usize, usize) {
    let inside = |op: &&Op| {
        op.input != Input::Get && windows.iter().any(|(a, b)| op.call > *a && op.call < *b)
    };
    let sent: Vec<&Op> = ops.iter().filter(inside).collect();
    let unanswered = sent.iter().filter(|o| o.ret.is_none()).count();
    (sent.len(), unanswered)
}

/// KV operations a cluster's clients must have had answered per second of a fault window
/// (a healthy lab answers 150–250).
pub const KV_ANSWERED_PER_S: f64 = 5.0;
/// Connections a cluster's probe must have made per second of a fault window (it tries every
/// 20 ms and gives up after 1 s, so even a probe whose every attempt fails makes about one;
/// a healthy lab makes about 45).
pub const CONNECTIONS_PER_S: f64 = 5.0;

/// What one cluster's workloads did in one fault window, against the least they must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// KV operations called in the window and answered.
    pub kv_answered: u64,
    /// The least acceptable.
    pub kv_minimum: u64,
    /// Probe connections begun in the window (answered or not).
    pub connections: u64,
    /// The least acceptable.
    pub connections_minimum: u64,
}

impl Activity {
    /// The activity in a window of length `window`, with its minimums.
    pub fn new(kv_answered: u64, connections: u64, window: Duration) -> Activity {
        let least = |per_s: f64| (per_s * window.as_secs_f64()).floor() as u64;
        Activity {
            kv_answered,
            kv_minimum: least(KV_ANSWERED_PER_S),
            connections,
            connections_minimum: least(CONNECTIONS_PER_S),
        }
    }

    /// What was too little to judge the window by.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.kv_answered < self.kv_minimum {
            out.push(format!(
                "{} KV operations answered during the faults, fewer than the {} required",
                self.kv_answered, self.kv_minimum
            ));
        }
        if self.connections < self.connections_minimum {
            out.push(format!(
                "{} probe connections during the faults, fewer than the {} required",
                self.connections, self.connections_minimum
            ));
        }
        out
    }
}

/// Where a client's connections to a global service went while the remote was stale, and
/// after healing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Preference {
    /// Connections while the remote was stale.
    pub connections: u64,
    /// …that failed.
    pub failed: u64,
    /// …answered by the local cluster.
    pub local: u64,
    /// Connections after convergence.
    pub after_heal: u64,
    /// …answered by the remote.
    pub remote_after_heal: u64,
}

impl Preference {
    /// What broke: while stale, every connection must be answered locally (and there must
    /// have been some); after healing, the remote must answer some.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.connections == 0 {
            out.push("no connections while the remote was stale (fault too short?)".to_owned());
        } else if self.local != self.connections {
            out.push(format!(
                "{} of {} connections while the remote was stale went to it or failed ({} failed)",
                self.connections - self.local,
                self.connections,
                self.failed
            ));
        }
        if self.remote_after_heal == 0 {
            out.push(format!(
                "none of {} connections after healing reached the remote's backends",
                self.after_heal
            ));
        }
        out
    }
}

/// How long after a remote node or cluster stops answering connections to a global service
/// may still fail: the agents' reachability timeout (800 ms) and probe interval, then a map
/// write (issue 31's target).
pub const FAILOVER_WINDOW: Duration = Duration::from_millis(1_500);

/// apps' connections to a global service with backends in both clusters, from the moment a
/// fault cut some of them off to its end: those begun inside [`FAILOVER_WINDOW`] may fail
/// (they were sent before anyone could know), none after it may.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Failover {
    /// The window (s).
    pub window_s: f64,
    /// Connections begun inside it.
    pub within: u64,
    /// …that failed.
    pub failed_within: u64,
    /// Connections begun after it, until the fault ended.
    pub after: u64,
    /// …that failed.
    pub failed_after: u64,
}

impl Failover {
    /// Tallies `answers` of a fault from `began` to `ended`.
    pub fn of(answers: &[Answer], began: Instant, ended: Instant) -> Failover {
        let cut = (began + FAILOVER_WINDOW).min(ended);
        let (within, failed_within, _) = tally(answers, began, cut, "");
        let after: Vec<Answer> = answers
            .iter()
            .filter(|(at, ..)| *at > cut)
            .cloned()
            .collect();
        let (after, failed_after, _) = tally(&after, cut, ended, "");
        Failover {
            window_s: FAILOVER_WINDOW.as_secs_f64(),
            within,
            failed_within,
            after,
            failed_after,
        }
    }

    /// What broke: a connection failing after the window, or none made after it.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.after == 0 {
            out.push(format!(
                "no connections more than {} s into the fault (fault too short?)",
                self.window_s
            ));
        } else if self.failed_after > 0 {
            out.push(format!(
                "{} of {} connections begun more than {} s into the fault failed",
                self.failed_after, self.after, self.window_s
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
