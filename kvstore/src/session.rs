//! Write sessions: a write that may be sent twice is applied once.
//!
//! A follower forwards each write to the leader. When the call fails after the request may
//! have gone out (the leader was killed with the request on the wire, or its answer was lost),
//! the write's fate is unknown: the dying leader may have appended it, and the next leader may
//! commit it. Sending it again could apply it twice; failing it tells the client "request timed
//! out" for a write that often never reached anyone. A leader that loses its leadership with
//! writes in its log is in the same place: openraft answers those writes `ForwardToLeader`
//! when a newer leader's log overwrites them, yet in a cluster of five another member holding
//! the entry can still be elected and commit it.
//!
//! So every write a member proposes carries its member id and a sequence number
//! ([`Command::Once`]), and the state machine remembers, per member, the reply of each
//! sequence number it applied (the Raft dissertation's client sessions, §6.3). A copy of a
//! write already applied is answered with the first application's reply and changes nothing.
//! Either way the member's caller is answered as if the write had gone through once, and a
//! write whose first send failed in transit waits for the next leader instead of failing.
//!
//! What keeps the table small: each write also carries `done_below`, the lowest sequence number
//! the member still has a caller waiting on. Applying it forgets the replies below, and from
//! then on a copy below that floor is refused, changing nothing: its caller has had its answer
//! (or gave up), so only a late duplicate can arrive there. The table holds, per member, the
//! replies of the writes it had outstanding (bounded by its concurrency and the request
//! timeout); it is part of the replicated state and its snapshots.
//!
//! Sequence numbers never repeat across a member's runs: a number is (run, n), ordered by run
//! first, and each run of the member takes a run number above the last one recorded in its
//! data directory and no lower than the clock in seconds since the epoch ([`reserve`]),
//! recorded (fsynced) before the member serves. The record covers restarts whatever the clock
//! does; the clock covers a data directory replaced or rolled back, unless the clock went back
//! too.
//!
//! A cluster switches sessions on once ([`Command::EnableWriteSessions`]): its leader proposes
//! that after every member answered that it knows them ([`crate::peer::PeerRequest::Capabilities`]),
//! because a member of an older version cannot read a [`Command::Once`] in its log. During a
//! rolling upgrade writes go without sessions, as before, until the last member runs this
//! version.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::raft_types::{Command, NodeId, Reply};

/// The capability a member names when it can read and apply [`Command::Once`].
pub const CAPABILITY: &str = "write-sessions";

/// The file in the data directory that records the last run number taken.
pub const FILE: &str = "write-session";

/// A write's number in its member's session: `n`-th of run `run`. Ordered by run, then `n`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Seq {
    /// The member's run that numbered it ([`reserve`]).
    pub run: u64,
    /// Its place in the run.
    pub n: u64,
}

/// Takes this run's number: one above the run recorded in `dir`, or `now_secs` (the clock, in
/// seconds since the epoch) if that is higher, recorded (written, fsynced, renamed) before it
/// returns.
pub fn reserve(dir: &Path, now_secs: u64) -> io::Result<u64> {
    let path = dir.join(FILE);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a run number: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let next = recorded.checked_add(1).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: run numbers used up", path.display()),
        )
    })?;
    let run = next.max(now_secs);
    crate::wal::replace_file(dir, FILE, format!("{run}\n").as_bytes())?;
    Ok(run)
}

/// This member's side of its write session: it numbers the writes it proposes and knows which
/// are still outstanding.
#[derive(Debug)]
pub struct WriteSession {
    member: NodeId,
    seqs: Mutex<Seqs>,
}

#[derive(Debug)]
struct Seqs {
    next: Seq,
    /// Numbers whose caller is still waiting.
    open: BTreeSet<Seq>,
}

impl WriteSession {
    /// Member `member`'s session in run `run` (see [`reserve`]).
    pub fn new(member: NodeId, run: u64) -> Self {
        Self {
            member,
            seqs: Mutex::new(Seqs {
                next: Seq { run, n: 0 },
                open: BTreeSet::new(),
            }),
        }
    }

    /// Numbers `cmd` as the next write of this session: the command to propose (and to send
    /// again, as it is, after a failure in transit) and the ticket that keeps its number
    /// outstanding until dropped.
    pub fn number(&self, cmd: Command) -> Result<(Command, Ticket<'_>), Error> {
        let mut seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        let seq = seqs.next;
        let Some(n) = seq.n.checked_add(1) else {
            tracing::error!("this run numbered 2^64 writes; restart the member");
            return Err(Error::Unhealthy);
        };
        seqs.next.n = n;
        seqs.open.insert(seq);
        let done_below = *seqs.open.first().expect("seq was just inserted");
        drop(seqs);
        let once = Command::Once {
            member: self.member,
            seq,
            done_below,
            cmd: Box::new(cmd),
        };
        Ok((once, Ticket { session: self, seq }))
    }
}

/// A write's number, outstanding while this lives.
#[derive(Debug)]
pub struct Ticket<'a> {
    session: &'a WriteSession,
    seq: Seq,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut seqs = self.session.seqs.lock().unwrap_or_else(|e| e.into_inner());
        seqs.open.remove(&self.seq);
    }
}

/// The state machine's side: whether sessions are on, and per member what its writes got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// Set by [`Command::EnableWriteSessions`]; members number their writes from then on.
    pub enabled: bool,
    /// Per member.
    pub members: BTreeMap<NodeId, Record>,
}

/// What one member's writes got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Copies below this are refused: their callers have their answers.
    pub floor: Seq,
    /// The reply of each write applied at or above the floor.
    pub replies: BTreeMap<Seq, Reply>,
}

/// What to do with a write numbered `seq` of `member`.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not applied yet: apply it and [`Sessions::record`] the reply.
    New,
    /// Applied before: answer with this reply, change nothing.
    Applied(Reply),
    /// Below the floor: a late copy whose caller has its answer; change nothing.
    Late,
}

impl Sessions {
    /// Whether `seq` of `member` was applied.
    pub fn seen(&self, member: NodeId, seq: Seq) -> Seen {
        match self.members.get(&member) {
            Some(r) if seq < r.floor => Seen::Late,
            Some(r) => r
                .replies
                .get(&seq)
                .map_or(Seen::New, |reply| Seen::Applied(reply.clone())),
            None => Seen::New,
        }
    }

    /// Records that `seq` of `member` was applied with `reply`.
    pub fn record(&mut self, member: NodeId, seq: Seq, reply: Reply) {
        self.members
            .entry(member)
            .or_default()
            .replies
            .insert(seq, reply);
    }

    /// Forgets the replies of `member` below `done_below`, refusing copies below it from now on.
    pub fn raise_floor(&mut self, member: NodeId, done_below: Seq) {
        let r = self.members.entry(member).or_default();
        if done_below > r.floor {
            r.floor = done_below;
            // Runs on every numbered write on every member: drops the few replies below in
            // place rather than building a new map.
            while let Some(entry) = r.replies.first_entry()
                && *entry.key() < done_below
            {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> Command {
        Command::Compact { revision: 1 }
    }

    fn seq(n: u64) -> Seq {
        Seq { run: 7, n }
    }

    fn numbered(cmd: &Command) -> (Seq, Seq) {
        match cmd {
            Command::Once {
                seq, done_below, ..
            } => (*seq, *done_below),
            other => panic!("not numbered: {other:?}"),
        }
    }

    #[test]
    fn done_below_is_the_oldest_write_still_waiting() {
        let session = WriteSession::new(3, 7);
        let (a, ta) = session.number(put()).unwrap();
        let (b, tb) = session.number(put()).unwrap();
        assert_eq!(numbered(&a), (seq(0), seq(0)));
        assert_eq!(numbered(&b), (seq(1), seq(0)));
        drop(tb);
        let (c, _tc) = session.number(put()).unwrap();
        assert_eq!(numbered(&c), (seq(2), seq(0)), "0 still waits");
        drop(ta);
        let (d, _td) = session.number(put()).unwrap();
        assert_eq!(numbered(&d), (seq(3), seq(2)));
    }

    #[test]
    fn a_later_run_numbers_above_every_earlier_one() {
        let earlier = Seq {
            run: 5,
            n: u64::MAX - 1,
        };
        assert!(earlier < Seq { run: 6, n: 0 });
    }

    #[test]
    fn runs_increase_across_restarts_even_with_the_clock_behind() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(reserve(dir.path(), 1_000).unwrap(), 1_000);
        // The clock went back, or restarts come faster than it ticks: the record wins.
        assert_eq!(reserve(dir.path(), 10).unwrap(), 1_001);
        assert_eq!(reserve(dir.path(), 1_001).unwrap(), 1_002);
        // The clock is ahead of the record: the clock wins.
        assert_eq!(reserve(dir.path(), 5_000).unwrap(), 5_000);
    }

    #[test]
    fn a_replaced_data_directory_still_gets_a_later_run_from_the_clock() {
        let old = tempfile::tempdir().unwrap();
        let run = reserve(old.path(), 1_000).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        assert!(reserve(fresh.path(), 1_060).unwrap() > run);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        let err = reserve(dir.path(), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn replies_are_kept_until_the_floor_passes_them() {
        let reply = |revision| Reply {
            revision,
            result: Ok(crate::raft_types::Outcome::Done),
        };
        let mut s = Sessions::default();
        assert_eq!(s.seen(1, seq(10)), Seen::New);
        s.record(1, seq(10), reply(5));
        s.record(1, seq(11), reply(6));
        assert_eq!(s.seen(1, seq(10)), Seen::Applied(reply(5)));
        assert_eq!(s.seen(2, seq(10)), Seen::New, "sessions are per member");
        s.raise_floor(1, seq(11));
        assert_eq!(s.seen(1, seq(10)), Seen::Late);
        assert_eq!(s.seen(1, seq(11)), Seen::Applied(reply(6)));
        s.raise_floor(1, seq(3));
        assert_eq!(s.members[&1].floor, seq(11), "the floor never goes down");
        // A new run of the member: everything of the old run is below its first number.
        s.raise_floor(1, Seq { run: 8, n: 0 });
        assert_eq!(s.seen(1, seq(11)), Seen::Late);
        assert!(s.members[&1].replies.is_empty());
    }
}
