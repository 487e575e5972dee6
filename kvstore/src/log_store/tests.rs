use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::raft_types::Command;
use crate::request::PutRequest;

/// An entry at `index` whose encoding is a little over `value_bytes`.
fn put(index: u64, value_bytes: usize) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: "k".into(),
            value: vec![b'v'; value_bytes].into(),
            ..PutRequest::default()
        })),
    }
}

/// A log holding `sizes.len()` entries from index 1, the i-th with a value of `sizes[i]` bytes.
fn log_of(dir: &Path, sizes: &[usize]) -> LogStore {
    let log = LogStore::open(dir).expect("open");
    let encoded: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| bincode::serialize(&put(i as u64 + 1, n)).expect("encode"))
        .collect();
    log.wal()
        .append(1, encoded.iter().map(Vec::as_slice))
        .expect("append");
    log
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn an_append_entries_batch_stops_at_its_byte_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 300 KiB entries: three fit in 1 MiB, a fourth does not.
    let mut log = log_of(dir.path(), &[300 * 1024; 10]);
    let got = log.limited_get_log_entries(1, 11).await.expect("read");
    assert_eq!(indexes(&got), vec![1, 2, 3]);
    let got = log.limited_get_log_entries(4, 11).await.expect("read");
    assert_eq!(indexes(&got), vec![4, 5, 6]);
    // The whole range is still there for whoever asks for it unlimited.
    let all = log.try_get_log_entries(1..11).await.expect("read");
    assert_eq!(indexes(&all), (1..11).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_entry_over_the_budget_is_sent_alone_and_small_ones_all_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = log_of(dir.path(), &[2 * APPEND_BYTES, 10, 10, 10]);
    // Never empty for a non-empty range (openraft's contract), even past the budget.
    let got = log.limited_get_log_entries(1, 5).await.expect("read");
    assert_eq!(indexes(&got), vec![1]);
    assert_eq!(got[0], put(1, 2 * APPEND_BYTES));
    let got = log.limited_get_log_entries(2, 5).await.expect("read");
    assert_eq!(indexes(&got), vec![2, 3, 4]);
    // The range's end is respected.
    let got = log.limited_get_log_entries(2, 3).await.expect("read");
    assert_eq!(indexes(&got), vec![2]);
}
