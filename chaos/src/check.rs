//! Checkers: each takes recorded histories and returns the violations it found, each naming
//! what broke and the operations or revisions involved, so a failing scenario can be read
//! without rerunning it.
//!
//! - [`linear`]: every key's operations are linearizable as a register with CAS (the
//!   Wing–Gong search with Lowe's memoization, as porcupine does it, one key at a time).
//! - [`watch`]: a watcher saw events in revision order, without duplicates, without gaps, and
//!   only events some write made.
//! - [`lost`]: the store's final state keeps every acknowledged write (or a later one).
//! - [`available`]: local writes and connections while clusters are cut apart; where
//!   connections go while a remote is stale.

pub mod available;
pub mod linear;
pub mod lost;
pub mod watch;
