//! Acceptance 1: openraft's storage conformance suite against the log store (its own write-ahead log, metadata in sled) and the
//! snapshot-backed state machine.

use kvstore::log_store::LogStore;
use kvstore::raft_types::{NodeId, TypeConfig};
use kvstore::state_machine::StateMachine;
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("log")).expect("open log store");
        let sm = StateMachine::open(&dir.path().join("snap")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn storage_conformance_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
