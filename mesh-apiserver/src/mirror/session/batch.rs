//! Where a session stands in the remote's history ([`Position`], [`Resume`]) and the writes
//! it gathers before committing them in one Txn ([`Batch`]).

use super::*;

/// Where the mirror is in the remote's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Every event up to this revision is applied.
    pub revision: i64,
    /// So are the first `partial` events of `revision + 1`.
    pub partial: u32,
}

impl Position {
    /// One more event, at `rev`, is applied (events come in revision order).
    pub fn advance(&mut self, rev: i64) {
        if rev == self.revision + 1 {
            self.partial += 1;
        } else if rev > self.revision + 1 {
            self.revision = rev - 1;
            self.partial = 1;
        }
    }

    /// Every event up to `rev` is applied.
    pub fn complete(&mut self, rev: i64) {
        if rev >= self.revision + i64::from(self.partial > 0) {
            self.revision = self.revision.max(rev);
            self.partial = 0;
        }
    }
}

/// The events of a resumed watch's first revision that were applied before it stopped (the
/// position's `partial`): they are skipped, and not counted again.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    revision: i64,
    left: u32,
}

impl Resume {
    /// Resuming at `pos`: the watch starts at `pos.revision + 1`.
    pub fn at(pos: Position) -> Self {
        Self {
            revision: pos.revision + 1,
            left: pos.partial,
        }
    }

    /// Whether the event at `rev` was applied before.
    pub fn applied_before(&mut self, rev: i64) -> bool {
        if self.left > 0 && rev == self.revision {
            self.left -= 1;
            true
        } else {
            false
        }
    }
}

/// Changes waiting to be written in one Txn: the last wanted state of each key (`None`: absent).
#[derive(Debug, Default)]
pub struct Batch {
    ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub(in crate::mirror::session) bytes: usize,
}

impl Batch {
    /// Operations waiting.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether adding `key` with `value` would take the batch past a limit (an empty batch
    /// takes anything).
    pub fn would_overflow(&self, key: &[u8], value: Option<&[u8]>) -> bool {
        if self.ops.is_empty() {
            return false;
        }
        let replaced = match self.ops.get(key) {
            Some(old) => key.len() + old.as_ref().map_or(0, Vec::len),
            None if self.ops.len() + 1 > MAX_OPS => return true,
            None => 0,
        };
        self.bytes - replaced + key.len() + value.map_or(0, <[u8]>::len) > MAX_BYTES
    }

    /// Wants `key` to hold `value` (or be absent), given which keys exist (`present`).
    pub fn set(&mut self, key: &[u8], value: Option<Vec<u8>>, present: impl Fn(&[u8]) -> bool) {
        if let Some(Some(old)) = self.ops.get(key) {
            self.bytes -= key.len() + old.len();
        } else if let Some(None) = self.ops.get(key) {
            self.bytes -= key.len();
        }
        match value {
            Some(v) => {
                self.bytes += key.len() + v.len();
                self.ops.insert(key.to_vec(), Some(v));
            }
            None if present(key) => {
                self.bytes += key.len();
                self.ops.insert(key.to_vec(), None);
            }
            // Absent before the batch and absent after it: nothing to write.
            None => {
                self.ops.remove(key);
            }
        }
    }

    pub(super) fn take(&mut self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.bytes = 0;
        std::mem::take(&mut self.ops)
    }
}
