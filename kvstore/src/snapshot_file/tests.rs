use std::sync::Arc;

use openraft::{CommittedLeaderId, StoredMembership};

use super::*;

fn meta(index: u64) -> Meta {
    Meta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
        last_membership: StoredMembership::default(),
        snapshot_id: format!("s{index}"),
    }
}

#[test]
fn concurrent_writers_leave_the_newest_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = SnapshotFile::open(dir.path()).unwrap();
    let file = Arc::new(file);
    let writers: Vec<_> = (1..=8u64)
        .map(|w| {
            let file = file.clone();
            std::thread::spawn(move || {
                for i in 0..20u64 {
                    let index = i * 8 + w;
                    file.write(&meta(index), &vec![w as u8; 100_000]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let (meta, data) = file.read().unwrap().unwrap();
    assert_eq!(meta.last_log_id.unwrap().index, 19 * 8 + 8);
    assert!(data.iter().all(|b| *b == 8), "a mix of writers' bytes");
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [FILE]);
}

#[test]
fn the_earlier_format_still_reads_and_temporaries_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let old = bincode::serialize(&(meta(5), vec![1u8, 2, 3])).unwrap();
    std::fs::write(dir.path().join(FILE), old).unwrap();
    std::fs::write(dir.path().join(format!("{TEMP}.1.0")), b"half").unwrap();
    let (file, found) = SnapshotFile::open(dir.path()).unwrap();
    let (m, data) = found.unwrap();
    assert_eq!((m.last_log_id.unwrap().index, data), (5, vec![1, 2, 3]));
    assert!(!dir.path().join(format!("{TEMP}.1.0")).exists());
    // Its log id counts: an older snapshot is not written over it.
    assert!(!file.write(&meta(4), b"older").unwrap());
    assert!(file.write(&meta(6), b"newer").unwrap());
}
