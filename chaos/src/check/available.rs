//! Availability: local writes and connections to local backends while the clusters are cut
//! apart, and where connections to a global service go while a remote is stale.
//!
//! Writes are placed by their call position on the workload's clock (the faults' begin and
//! end take positions on the same clock); connections by when the attempt began (the time the
//! probe's line was read, less the attempt's duration it reports), in this process.

use std::time::Instant;

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

#[cfg(test)]
mod tests;
