use super::*;

#[test]
fn positions_count_events_within_a_revision_and_complete_whole_ones() {
    let mut p = Position {
        revision: 10,
        partial: 0,
    };
    p.advance(12);
    assert_eq!(
        p,
        Position {
            revision: 11,
            partial: 1
        }
    );
    p.advance(12);
    assert_eq!(
        p,
        Position {
            revision: 11,
            partial: 2
        }
    );
    // Completing an older revision changes nothing while a newer one is partly applied.
    p.complete(11);
    assert_eq!(
        p,
        Position {
            revision: 11,
            partial: 2
        }
    );
    p.complete(12);
    assert_eq!(
        p,
        Position {
            revision: 12,
            partial: 0
        }
    );
    p.advance(13);
    p.complete(20);
    assert_eq!(
        p,
        Position {
            revision: 20,
            partial: 0
        }
    );
    // A progress answer behind the position never moves it back.
    p.complete(15);
    assert_eq!(
        p,
        Position {
            revision: 20,
            partial: 0
        }
    );
}

#[test]
fn a_resumed_revision_skips_what_was_applied_without_counting_it_again() {
    // 2 events of revision 11 were applied before the mirror stopped.
    let mut pos = Position {
        revision: 10,
        partial: 2,
    };
    let mut resume = Resume::at(pos);
    let mut applied = 0;
    for rev in [11, 11, 11, 11, 12] {
        if resume.applied_before(rev) {
            continue;
        }
        applied += 1;
        pos.advance(rev);
        if rev == 11 {
            // A flush here stores exactly the events of 11 applied so far.
            assert_eq!(pos.partial, 2 + applied);
        }
    }
    assert_eq!(applied, 3);
    assert_eq!(
        pos,
        Position {
            revision: 11,
            partial: 1
        }
    );
}

#[test]
fn a_batch_keeps_the_last_state_of_each_key_and_drops_no_ops() {
    let present = |k: &[u8]| k == b"old";
    let mut b = Batch::default();
    b.set(b"new", Some(b"1".to_vec()), present);
    b.set(b"new", Some(b"22".to_vec()), present);
    assert_eq!(b.len(), 1);
    assert_eq!(b.bytes, 3 + 2);
    // Put then delete of a key that did not exist before the batch: nothing to write.
    b.set(b"new", None, present);
    assert!(b.is_empty());
    assert_eq!(b.bytes, 0);
    // Delete of a key that exists: written; delete of one that does not: not.
    b.set(b"old", None, present);
    b.set(b"gone", None, present);
    let ops = b.take();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops.get(b"old".as_slice()), Some(&None));
}

#[test]
fn a_batch_overflows_at_the_op_and_byte_limits_but_always_takes_one() {
    let mut b = Batch::default();
    let big = vec![0u8; MAX_BYTES + 10];
    assert!(
        !b.would_overflow(b"k", Some(&big)),
        "an empty batch takes anything"
    );
    b.set(b"k", Some(big), |_| false);
    assert!(b.would_overflow(b"k2", Some(b"v")));
    // The same key again replaces its op instead of adding one, and its old bytes.
    assert!(!b.would_overflow(b"k", Some(b"v")));

    let mut b = Batch::default();
    b.set(b"a", Some(vec![0; 10]), |_| false);
    b.set(b"b", Some(vec![0; MAX_BYTES / 2]), |_| false);
    assert!(
        b.would_overflow(b"a", Some(&vec![0; MAX_BYTES / 2 + 10])),
        "a value replaced by a larger one still counts"
    );

    let mut b = Batch::default();
    for i in 0..MAX_OPS {
        let k = format!("k{i}");
        assert!(!b.would_overflow(k.as_bytes(), Some(b"v")));
        b.set(k.as_bytes(), Some(b"v".to_vec()), |_| false);
    }
    assert!(b.would_overflow(b"one-more", Some(b"v")));
    assert!(b.would_overflow(b"one-more", None));
}
