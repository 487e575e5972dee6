use super::*;

fn w(key: &str, value: &str, revision: i64) -> Write {
    Write {
        key: key.to_owned(),
        value: Some(value.to_owned()),
        revision,
    }
}

fn e(key: &str, value: &str, revision: i64) -> Event {
    Event {
        key: key.to_owned(),
        value: Some(value.to_owned()),
        revision,
    }
}

fn watched<'a>(events: &'a [Event], start: i64, through: i64) -> Watched<'a> {
    Watched {
        name: "w1",
        prefix: "p/",
        start,
        through,
        events,
    }
}

fn writes() -> Vec<Write> {
    vec![
        w("p/a", "1", 10),
        w("p/b", "1", 11),
        w("other", "x", 12),
        w("p/a", "2", 13),
        Write {
            key: "p/b".to_owned(),
            value: None,
            revision: 14,
        },
    ]
}

fn all_events() -> Vec<Event> {
    vec![
        e("p/a", "1", 10),
        e("p/b", "1", 11),
        e("p/a", "2", 13),
        Event {
            key: "p/b".to_owned(),
            value: None,
            revision: 14,
        },
    ]
}

#[test]
fn every_write_once_in_order_passes() {
    assert_eq!(
        check(&watched(&all_events(), 10, 14), &writes(), &[]),
        vec![]
    );
    // Starting later, earlier writes are not due.
    assert_eq!(
        check(&watched(&all_events()[2..], 12, 14), &writes(), &[]),
        vec![]
    );
    // Writes after `through` are not due yet.
    assert_eq!(
        check(&watched(&all_events()[..2], 10, 12), &writes(), &[]),
        vec![]
    );
}

#[test]
fn a_gap_is_missing() {
    let mut events = all_events();
    events.remove(1);
    assert_eq!(
        check(&watched(&events, 10, 14), &writes(), &[]),
        vec![Violation::Missing {
            watcher: "w1".to_owned(),
            key: "p/b".to_owned(),
            revision: 11,
        }]
    );
}

#[test]
fn a_repeat_after_a_reconnect_is_a_duplicate() {
    let mut events = all_events();
    events.insert(2, e("p/b", "1", 11));
    assert_eq!(
        check(&watched(&events, 10, 14), &writes(), &[]),
        vec![Violation::Duplicate {
            watcher: "w1".to_owned(),
            key: "p/b".to_owned(),
            revision: 11,
        }]
    );
}

#[test]
fn going_back_in_revisions_is_out_of_order() {
    let mut events = all_events();
    events.swap(0, 1);
    assert_eq!(
        check(&watched(&events, 10, 14), &writes(), &[]),
        vec![Violation::OutOfOrder {
            watcher: "w1".to_owned(),
            after: 11,
            key: "p/a".to_owned(),
            revision: 10,
        }]
    );
}

#[test]
fn an_event_no_write_made_is_a_phantom() {
    let mut events = all_events();
    events[2].value = Some("9".to_owned());
    let v = check(&watched(&events, 10, 14), &writes(), &[]);
    assert!(
        v.contains(&Violation::Phantom {
            watcher: "w1".to_owned(),
            key: "p/a".to_owned(),
            revision: 13,
            value: Some("9".to_owned()),
        }),
        "{v:?}"
    );
    // The wrong value also leaves the real write missing.
    assert!(
        v.iter()
            .any(|v| matches!(v, Violation::Missing { revision: 13, .. }))
    );
    // An event outside the prefix is one too.
    let stray = [e("other", "x", 12)];
    assert_eq!(
        check(&watched(&stray, 12, 12), &writes(), &[]),
        vec![Violation::Phantom {
            watcher: "w1".to_owned(),
            key: "other".to_owned(),
            revision: 12,
            value: Some("x".to_owned()),
        }]
    );
}

#[test]
fn an_unanswered_write_explains_its_event() {
    let maybe = [MaybeWrite {
        key: "p/c".to_owned(),
        value: Some("7".to_owned()),
    }];
    let mut events = all_events();
    events.push(e("p/c", "7", 15));
    assert_eq!(check(&watched(&events, 10, 15), &writes(), &maybe), vec![]);
    events.push(e("p/c", "8", 16));
    assert_eq!(check(&watched(&events, 10, 16), &writes(), &maybe).len(), 1);
}

#[test]
fn one_revision_acknowledged_twice_with_different_values_is_reported() {
    let mut writes = writes();
    writes.push(w("p/a", "other", 13));
    let v = check(&watched(&all_events(), 10, 14), &writes, &[]);
    assert!(
        v.contains(&Violation::RevisionReused {
            key: "p/a".to_owned(),
            revision: 13,
        }),
        "{v:?}"
    );
}
