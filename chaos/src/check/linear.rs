//! Linearizability of single-key registers with CAS.
//!
//! The search is Wing and Gong's, with Lowe's memoization, the algorithm porcupine runs: walk
//! the history's calls and returns in order; at a call, try to linearize that operation now
//! (its output must be what the register would answer) and, if the pair (set of linearized
//! operations, register value) is new, take it out of the history and start over from the
//! first remaining entry; at a return whose operation is not linearized yet, undo the last
//! choice. The history is linearizable when every answered operation is linearized; an
//! unanswered write ([`Output::Unknown`]) may take effect at any point after its call, or never.
//!
//! Keys are independent registers (linearizability is compositional), so each key is searched
//! alone. The search is exponential in the worst case; [`Limits`] bounds it, and a key whose
//! search ran out is reported as undecided, never as passed.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::history::{Input, Op, Output};

/// Bounds on the search, per key.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Search steps (linearization attempts and undos) before giving up on a key.
    pub steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { steps: 20_000_000 }
    }
}

/// What the checker found for one key that is not linearizable, or not decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Violation {
    /// No order of the key's operations explains every answer.
    NotLinearizable {
        /// The key.
        key: String,
        /// The most operations any attempted order linearized.
        longest_prefix: usize,
        /// The answered operations of the key.
        operations: usize,
        /// The operation the longest attempt could not place next (its index in the input).
        stuck_at: Option<usize>,
    },
    /// The search ran out of steps.
    Undecided {
        /// The key.
        key: String,
        /// The key's operations.
        operations: usize,
    },
}

/// What a run of the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked (answered or not).
    pub operations: usize,
    /// What failed.
    pub violations: Vec<Violation>,
}

/// Checks every key's operations in `history` (indices refer to it).
pub fn check(history: &[Op], limits: Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        // A read that got no answer says nothing and changes nothing.
        if op.input == Input::Get && op.output == Output::Unknown {
            continue;
        }
        by_key.entry(&op.key).or_default().push(i);
    }
    let mut report = Report {
        keys: by_key.len(),
        operations: history.len(),
        violations: Vec::new(),
    };
    for (key, indices) in by_key {
        let ops: Vec<&Op> = indices.iter().map(|&i| &history[i]).collect();
        match search(&ops, limits) {
            Outcome::Linearizable => {}
            Outcome::Not { longest, stuck_at } => {
                report.violations.push(Violation::NotLinearizable {
                    key: key.to_owned(),
                    longest_prefix: longest,
                    operations: ops.iter().filter(|o| o.ret.is_some()).count(),
                    stuck_at: stuck_at.map(|i| indices[i]),
                })
            }
            Outcome::OutOfSteps => report.violations.push(Violation::Undecided {
                key: key.to_owned(),
                operations: ops.len(),
            }),
        }
    }
    report
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Linearizable,
    Not {
        longest: usize,
        stuck_at: Option<usize>,
    },
    OutOfSteps,
}

/// The register's answer to `input` in state `value`: the next state, if `output` is what it
/// would say.
fn step(value: &Option<String>, input: &Input, output: &Output) -> Option<Option<String>> {
    match (input, output) {
        (Input::Put(v), Output::Done | Output::Unknown) => Some(Some(v.clone())),
        (Input::Delete, Output::Done | Output::Unknown) => Some(None),
        (Input::Get, Output::Value(read)) => (read == value).then(|| value.clone()),
        (Input::Cas { expect, new }, Output::Swapped(true)) => {
            (expect == value).then(|| Some(new.clone()))
        }
        (Input::Cas { expect, .. }, Output::Swapped(false)) => {
            (expect != value).then(|| value.clone())
        }
        // An unanswered CAS that took effect did what the register says; one that did not is
        // never linearized.
        (Input::Cas { expect, new }, Output::Unknown) => Some(if expect == value {
            Some(new.clone())
        } else {
            value.clone()
        }),
        // An output that does not fit the input (a Get answered Done) explains nothing.
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
}

/// The history's entries as a doubly linked list that operations are lifted out of and put
/// back into (in reverse order) as the search goes and undoes.
struct List {
    entries: Vec<Entry>,
    /// `next[i]` / `prev[i]` for entry `i`; index `len` is the head sentinel and the end.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Each operation's call and return entries.
    call_of: Vec<usize>,
    ret_of: Vec<Option<usize>>,
}

impl List {
    fn new(ops: &[&Op]) -> List {
        // (position, returns before calls at one position, op): a return at the same position
        // as a call happened first, since one counter gives both.
        let mut order: Vec<(u64, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, true, i));
            if let Some(r) = op.ret {
                order.push((r, false, i));
            }
        }
        order.sort_unstable();
        let n = order.len();
        let mut call_of = vec![0; ops.len()];
        let mut ret_of = vec![None; ops.len()];
        let entries: Vec<Entry> = order
            .iter()
            .enumerate()
            .map(|(e, &(_, is_call, op))| {
                if is_call {
                    call_of[op] = e;
                } else {
                    ret_of[op] = Some(e);
                }
                Entry { op, is_call }
            })
            .collect();
        // Sentinel at n: next[n] is the first entry, prev[n] the last.
        let next = (0..=n).map(|i| if i == n { 0 } else { i + 1 }).collect();
        let prev = (0..=n).map(|i| if i == 0 { n } else { i - 1 }).collect();
        List {
            entries,
            next,
            prev,
            call_of,
            ret_of,
        }
    }

    fn end(&self) -> usize {
        self.entries.len()
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(r) = self.ret_of[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.ret_of[op] {
            self.relink(r);
        }
        self.relink(self.call_of[op]);
    }
}

/// The set of linearized operations, as the memo's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn search(ops: &[&Op], limits: Limits) -> Outcome {
    let mut list = List::new(ops);
    let answered = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut done = 0usize;
    let mut value: Option<String> = None;
    let mut linearized = Bits::new(ops.len());
    let mut seen: HashSet<(Bits, Option<String>)> = HashSet::new();
    // (operation, value before it)
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut longest = 0usize;
    let mut stuck_at = None;
    let mut steps = 0u64;
    let mut entry = list.next[list.end()];
    loop {
        if done == answered {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps > limits.steps {
            return Outcome::OutOfSteps;
        }
        let at_call = entry != list.end() && list.entries[entry].is_call;
        if at_call {
            let op = list.entries[entry].op;
            if let Some(next) = step(&value, &ops[op].input, &ops[op].output) {
                linearized.set(op);
                if seen.insert((linearized.clone(), next.clone())) {
                    stack.push((op, std::mem::replace(&mut value, next)));
                    list.lift(op);
                    if ops[op].ret.is_some() {
                        done += 1;
                    }
                    entry = list.next[list.end()];
                    continue;
                }
                linearized.clear(op);
            }
            entry = list.next[entry];
            continue;
        }
        // A return of an operation not yet linearized (or the end): the choices so far
        // cannot be completed; undo the last one and try the next entry after it.
        if done >= longest {
            longest = done;
            stuck_at = (entry != list.end()).then(|| list.entries[entry].op);
        }
        let Some((op, before)) = stack.pop() else {
            return Outcome::Not { longest, stuck_at };
        };
        value = before;
        linearized.clear(op);
        list.unlift(op);
        if ops[op].ret.is_some() {
            done -= 1;
        }
        entry = list.next[list.call_of[op]];
    }
}

#[cfg(test)]
mod tests;
