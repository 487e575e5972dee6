use std::io::Write;

use super::*;

fn payload(index: u64) -> Vec<u8> {
    format!("entry {index} {}", "x".repeat((index % 7) as usize)).into_bytes()
}

fn append_range(wal: &mut Wal, from: u64, to: u64) {
    for index in from..to {
        wal.append(index, [payload(index).as_slice()]).unwrap();
    }
}

fn assert_holds(wal: &Wal, from: u64, to: u64) {
    assert_eq!((wal.first(), wal.end()), (Some(from), Some(to)));
    for index in from..to {
        assert_eq!(
            wal.read(index).unwrap(),
            Some(payload(index)),
            "index {index}"
        );
    }
    assert_eq!(wal.read(to).unwrap(), None);
    assert_eq!(wal.read(from - 1).unwrap(), None);
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn appends_roll_segments_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open_with_segment_bytes(dir.path(), 100).unwrap();
    assert_eq!(wal.end(), None);
    append_range(&mut wal, 5, 40);
    // A batch is one write.
    let batch: Vec<Vec<u8>> = (40..60).map(payload).collect();
    wal.append(40, batch.iter().map(Vec::as_slice)).unwrap();
    wal.sync().unwrap();
    assert_holds(&wal, 5, 60);
    assert!(segment_files(dir.path()).len() > 3, "small segments roll");
    drop(wal);

    let wal = Wal::open_with_segment_bytes(dir.path(), 100).unwrap();
    assert_holds(&wal, 5, 60);
}

#[test]
fn append_must_continue_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    append_range(&mut wal, 1, 4);
    let err = wal.append(5, [b"gap".as_slice()]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = wal.append(3, [b"overlap".as_slice()]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_holds(&wal, 1, 4);
}

#[test]
fn a_torn_tail_is_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    append_range(&mut wal, 1, 11);
    drop(wal);
    let segment = dir.path().join(&segment_files(dir.path())[0]);
    let full = fs::metadata(&segment).unwrap().len();
    // A crash in the middle of writing record 10: half of it reached the disk.
    let record_10 = (HEADER + payload(10).len()) as u64;
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(full - record_10 / 2).unwrap();

    let mut wal = Wal::open(dir.path()).unwrap();
    assert_holds(&wal, 1, 10);
    assert_eq!(fs::metadata(&segment).unwrap().len(), full - record_10);
    // And the log goes on from there.
    append_range(&mut wal, 10, 12);
    assert_holds(&wal, 1, 12);
}

#[test]
fn a_flipped_bit_in_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    append_range(&mut wal, 1, 4);
    drop(wal);
    let segment = dir.path().join(&segment_files(dir.path())[0]);
    let mut bytes = fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&segment, bytes).unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    assert_holds(&wal, 1, 3);
}

#[test]
fn damage_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open_with_segment_bytes(dir.path(), 50).unwrap();
    append_range(&mut wal, 1, 20);
    drop(wal);
    let first = dir.path().join(&segment_files(dir.path())[0]);
    let mut file = OpenOptions::new().append(true).open(&first).unwrap();
    file.write_all(b"garbage").unwrap();
    let err = Wal::open_with_segment_bytes(dir.path(), 50).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

#[test]
fn a_missing_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open_with_segment_bytes(dir.path(), 50).unwrap();
    append_range(&mut wal, 1, 20);
    drop(wal);
    let names = segment_files(dir.path());
    assert!(names.len() >= 3);
    fs::remove_file(dir.path().join(&names[1])).unwrap();
    let err = Wal::open_with_segment_bytes(dir.path(), 50).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

#[test]
fn truncate_within_and_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open_with_segment_bytes(dir.path(), 60).unwrap();
    append_range(&mut wal, 1, 30);
    wal.truncate(25).unwrap();
    assert_holds(&wal, 1, 25);
    wal.truncate(7).unwrap();
    assert_holds(&wal, 1, 7);
    append_range(&mut wal, 7, 12);
    assert_holds(&wal, 1, 12);
    drop(wal);
    let mut wal = Wal::open_with_segment_bytes(dir.path(), 60).unwrap();
    assert_holds(&wal, 1, 12);
    wal.truncate(1).unwrap();
    assert_eq!(wal.end(), None);
    assert!(segment_files(dir.path()).is_empty());
}

#[test]
fn purge_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open_with_segment_bytes(dir.path(), 60).unwrap();
    append_range(&mut wal, 1, 30);
    let before = segment_files(dir.path()).len();
    wal.purge(10).unwrap();
    assert!(segment_files(dir.path()).len() < before);
    // Purged entries are gone even where their segment stays.
    assert_holds(&wal, 11, 30);
    // Purging past the end (a follower installing a snapshot) empties the log; the next
    // append may then start anywhere.
    wal.purge(100).unwrap();
    assert_eq!(wal.end(), None);
    append_range(&mut wal, 101, 103);
    assert_holds(&wal, 101, 103);
    drop(wal);
    let wal = Wal::open_with_segment_bytes(dir.path(), 60).unwrap();
    assert_holds(&wal, 101, 103);
}

#[test]
fn a_purge_inside_the_active_segment_hides_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    append_range(&mut wal, 1, 3);
    wal.purge(5).unwrap();
    assert_eq!((wal.first(), wal.end()), (None, None));
    assert_eq!(wal.read(2).unwrap(), None);
    // Raft then appends after the purge point, past the held entries.
    append_range(&mut wal, 6, 8);
    assert_holds(&wal, 6, 8);
    drop(wal);
    // Reopened, the caller restores its purge point.
    let mut wal = Wal::open(dir.path()).unwrap();
    wal.purge(5).unwrap();
    assert_holds(&wal, 6, 8);
}

/// The last segment of `dir`.
fn last_segment(dir: &Path) -> PathBuf {
    dir.join(segment_files(dir).last().unwrap())
}

#[test]
fn a_zero_filled_tail_ends_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    append_range(&mut wal, 1, 4);
    wal.sync().unwrap();
    drop(wal);
    // A file system that preallocated (or a crash that left zeroed blocks) after the data.
    let mut file = OpenOptions::new()
        .append(true)
        .open(last_segment(dir.path()))
        .unwrap();
    file.write_all(&[0u8; 4096]).unwrap();
    drop(file);
    let mut wal = Wal::open(dir.path()).unwrap();
    assert_holds(&wal, 1, 4);
    // And the log goes on from there.
    append_range(&mut wal, 4, 6);
    drop(wal);
    assert_holds(&Wal::open(dir.path()).unwrap(), 1, 6);
}

#[test]
fn damage_before_valid_records_of_the_last_segment_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    append_range(&mut wal, 1, 6);
    wal.sync().unwrap();
    drop(wal);
    let segment = last_segment(dir.path());
    let mut bytes = fs::read(&segment).unwrap();
    // Flip a payload byte of entry 2 (entries 3..=5 stay valid after it).
    let at = HEADER + payload(1).len() + HEADER + 3;
    bytes[at] ^= 0xff;
    fs::write(&segment, &bytes).unwrap();
    let err = Wal::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("valid records follow"), "{err}");
    assert_eq!(
        fs::read(&segment).unwrap(),
        bytes,
        "the segment was changed"
    );

    // A damaged header with a valid record after it: also refused.
    let mut bytes = fs::read(&segment).unwrap();
    bytes[at] ^= 0xff;
    let header = HEADER + payload(1).len();
    bytes[header..header + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&segment, &bytes).unwrap();
    let err = Wal::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("a valid one at byte"), "{err}");
    assert_eq!(
        fs::read(&segment).unwrap(),
        bytes,
        "the segment was changed"
    );
}

#[test]
fn a_zero_length_followed_by_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path()).unwrap();
    append_range(&mut wal, 1, 3);
    drop(wal);
    let mut file = OpenOptions::new()
        .append(true)
        .open(last_segment(dir.path()))
        .unwrap();
    file.write_all(&[0, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);
    let err = Wal::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("zero length followed by data"),
        "{err}"
    );
}
