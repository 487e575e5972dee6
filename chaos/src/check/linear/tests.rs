use super::*;

fn op(call: u64, ret: Option<u64>, input: Input, output: Output) -> Op {
    Op {
        client: 0,
        key: "k".to_owned(),
        input,
        output,
        call,
        ret,
    }
}

fn put(v: &str, call: u64, ret: u64) -> Op {
    op(call, Some(ret), Input::Put(v.to_owned()), Output::Done)
}

fn get(read: Option<&str>, call: u64, ret: u64) -> Op {
    op(
        call,
        Some(ret),
        Input::Get,
        Output::Value(read.map(str::to_owned)),
    )
}

fn cas(expect: Option<&str>, new: &str, swapped: bool, call: u64, ret: u64) -> Op {
    op(
        call,
        Some(ret),
        Input::Cas {
            expect: expect.map(str::to_owned),
            new: new.to_owned(),
        },
        Output::Swapped(swapped),
    )
}

fn unanswered_put(v: &str, call: u64) -> Op {
    op(call, None, Input::Put(v.to_owned()), Output::Unknown)
}

fn ok(history: &[Op]) -> bool {
    check(history, Limits::default()).violations.is_empty()
}

#[test]
fn sequential_history_is_linearizable() {
    assert!(ok(&[
        get(None, 0, 1),
        put("a", 2, 3),
        get(Some("a"), 4, 5),
        cas(Some("a"), "b", true, 6, 7),
        cas(Some("a"), "c", false, 8, 9),
        get(Some("b"), 10, 11),
        op(12, Some(13), Input::Delete, Output::Done),
        get(None, 14, 15),
    ]));
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    assert!(ok(&[
        put("a", 0, 10),
        get(None, 1, 2),
        get(Some("a"), 3, 4)
    ]));
    assert!(ok(&[put("a", 0, 10), get(Some("a"), 1, 2)]));
}

#[test]
fn a_stale_read_after_the_write_returned_is_not() {
    let r = check(&[put("a", 0, 1), get(None, 2, 3)], Limits::default());
    assert_eq!(
        r.violations,
        vec![Violation::NotLinearizable {
            key: "k".to_owned(),
            longest_prefix: 1,
            operations: 2,
            stuck_at: Some(1),
        }]
    );
}

#[test]
fn a_read_cannot_go_back_once_another_read_saw_the_new_value() {
    // The write is in flight throughout; one read sees it, a later read does not.
    assert!(!ok(&[
        put("a", 0, 100),
        get(Some("a"), 1, 2),
        get(None, 3, 4),
    ]));
    // The same reads overlapping each other can be ordered the other way.
    assert!(ok(&[
        put("a", 0, 100),
        get(Some("a"), 1, 4),
        get(None, 2, 3)
    ]));
}

#[test]
fn two_cas_from_the_same_value_cannot_both_succeed() {
    assert!(!ok(&[
        put("a", 0, 1),
        cas(Some("a"), "b", true, 2, 5),
        cas(Some("a"), "c", true, 3, 6),
    ]));
    assert!(ok(&[
        put("a", 0, 1),
        cas(Some("a"), "b", true, 2, 5),
        cas(Some("a"), "c", false, 3, 6),
        get(Some("b"), 7, 8),
    ]));
}

#[test]
fn a_value_nobody_wrote_is_not_explained() {
    assert!(!ok(&[put("a", 0, 1), get(Some("z"), 2, 3)]));
}

#[test]
fn an_unanswered_write_may_take_effect_late_or_never() {
    assert!(ok(&[
        unanswered_put("a", 0),
        get(None, 1, 2),
        get(Some("a"), 50, 51)
    ]));
    assert!(ok(&[unanswered_put("a", 0), get(None, 50, 51)]));
    // …but not before it was sent.
    assert!(!ok(&[get(Some("a"), 0, 1), unanswered_put("a", 2)]));
    // …and once seen, it stays (no later read of the old value).
    assert!(!ok(&[
        unanswered_put("a", 0),
        get(Some("a"), 1, 2),
        get(None, 3, 4),
    ]));
}

#[test]
fn an_unanswered_read_says_nothing() {
    assert!(ok(&[
        put("a", 0, 1),
        op(2, None, Input::Get, Output::Unknown),
        get(Some("a"), 3, 4),
    ]));
}

#[test]
fn keys_are_checked_independently_and_named() {
    let mut other = get(Some("x"), 2, 3);
    other.key = "other".to_owned();
    let history = [put("a", 0, 1), get(Some("a"), 2, 3), other];
    let r = check(&history, Limits::default());
    assert_eq!(r.keys, 2);
    assert_eq!(r.operations, 3);
    assert!(
        matches!(&r.violations[..], [Violation::NotLinearizable { key, stuck_at: Some(2), .. }] if key == "other"),
        "{:?}",
        r.violations
    );
}

#[test]
fn a_search_that_runs_out_is_undecided_not_passed() {
    // Many concurrent writes and a read at the end: linearizable, but not in 10 steps.
    let mut history: Vec<Op> = (0..12).map(|i| put(&i.to_string(), i, 100 + i)).collect();
    history.push(get(Some("0"), 200, 201));
    let r = check(&history, Limits { steps: 10 });
    assert_eq!(
        r.violations,
        vec![Violation::Undecided {
            key: "k".to_owned(),
            operations: 13,
        }]
    );
    assert!(ok(&history));
}

#[test]
fn many_concurrent_writers_are_decided_quickly() {
    // 8 clients each writing its own values, with reads that fit one order: the memo keeps
    // this polynomial.
    let mut history = Vec::new();
    let mut t = 0;
    for round in 0..50u64 {
        for c in 0..8u64 {
            history.push(put(&format!("{round}-{c}"), t + c, t + 20 + c));
        }
        history.push(get(Some(&format!("{round}-7")), t + 40, t + 41));
        t += 50;
    }
    let r = check(&history, Limits { steps: 2_000_000 });
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}
