//! What workloads record: operations on single-key registers with their call and return
//! positions, writes with the revisions the store gave them, and watch events as received.
//!
//! Call and return positions come from one counter in the process that ran the clients, taken
//! just before a request is sent and just after its answer arrives: their order is the real-time
//! order the checkers need, without comparing clocks.

use serde::Serialize;

/// What a client asked of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Input {
    /// Set the value.
    Put(String),
    /// Remove the key.
    Delete,
    /// Read the value.
    Get,
    /// Set `new` if the value is `expect` (`None`: the key is absent).
    Cas {
        /// The value the key must have.
        expect: Option<String>,
        /// The value to set.
        new: String,
    },
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Output {
    /// The put or delete was acknowledged.
    Done,
    /// The value read (`None`: absent).
    Value(Option<String>),
    /// Whether the CAS applied.
    Swapped(bool),
    /// No answer (timeout, connection lost): the operation may or may not have taken effect,
    /// at any time after its call.
    Unknown,
}

/// One operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    /// The client that made it (a client makes one operation at a time).
    pub client: u32,
    /// The key.
    pub key: String,
    /// What was asked.
    pub input: Input,
    /// What was answered.
    pub output: Output,
    /// Position of the call.
    pub call: u64,
    /// Position of the answer; `None` with [`Output::Unknown`].
    pub ret: Option<u64>,
}

/// A write the store acknowledged, with the revision it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The value written; `None` for a delete.
    pub value: Option<String>,
    /// The revision of the write (etcd's response header revision).
    pub revision: i64,
}

/// A write the store may or may not have made: sent, never answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaybeWrite {
    /// The key.
    pub key: String,
    /// The value; `None` for a delete.
    pub value: Option<String>,
}

/// A watch event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The key.
    pub key: String,
    /// The value after the event; `None` for a delete.
    pub value: Option<String>,
    /// The event's modification revision.
    pub revision: i64,
}
