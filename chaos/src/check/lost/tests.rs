use super::*;

fn w(key: &str, value: Option<&str>, revision: i64) -> Write {
    Write {
        key: key.to_owned(),
        value: value.map(str::to_owned),
        revision,
    }
}

fn found(entries: &[(&str, &str, i64)]) -> BTreeMap<String, Found> {
    entries
        .iter()
        .map(|(k, v, r)| {
            (
                (*k).to_owned(),
                Found {
                    value: (*v).to_owned(),
                    mod_revision: *r,
                },
            )
        })
        .collect()
}

fn writes() -> Vec<Write> {
    vec![
        w("p/a", Some("1"), 5),
        w("p/a", Some("2"), 7),
        w("p/b", Some("1"), 6),
        w("p/b", None, 8),
        w("q/x", Some("1"), 9),
    ]
}

#[test]
fn the_last_writes_kept_pass() {
    assert_eq!(
        check("p/", &found(&[("p/a", "2", 7)]), &writes(), &[]),
        vec![]
    );
}

#[test]
fn an_older_value_back_is_a_lost_write() {
    assert_eq!(
        check("p/", &found(&[("p/a", "1", 5)]), &writes(), &[]),
        vec![Violation::Lost {
            key: "p/a".to_owned(),
            revision: 7,
            value: Some("2".to_owned()),
            found: Some(("1".to_owned(), 5)),
        }]
    );
}

#[test]
fn a_vanished_key_is_lost_and_a_deleted_one_back_too() {
    let v = check("p/", &found(&[("p/b", "1", 6)]), &writes(), &[]);
    assert_eq!(
        v,
        vec![
            Violation::Lost {
                key: "p/a".to_owned(),
                revision: 7,
                value: Some("2".to_owned()),
                found: None,
            },
            Violation::Lost {
                key: "p/b".to_owned(),
                revision: 8,
                value: None,
                found: Some(("1".to_owned(), 6)),
            },
        ]
    );
}

#[test]
fn later_unanswered_writes_explain_what_is_found() {
    let maybe = [
        MaybeWrite {
            key: "p/a".to_owned(),
            value: Some("3".to_owned()),
        },
        MaybeWrite {
            key: "p/b".to_owned(),
            value: Some("again".to_owned()),
        },
    ];
    let f = found(&[("p/a", "3", 12), ("p/b", "again", 13)]);
    assert_eq!(check("p/", &f, &writes(), &maybe), vec![]);
    // An unanswered delete may have removed a key.
    let gone = [MaybeWrite {
        key: "p/a".to_owned(),
        value: None,
    }];
    assert_eq!(check("p/", &found(&[]), &writes(), &gone), vec![]);
}

#[test]
fn a_value_nobody_wrote_is_unexplained() {
    assert_eq!(
        check(
            "p/",
            &found(&[("p/a", "2", 7), ("p/z", "?", 20)]),
            &writes(),
            &[]
        ),
        vec![Violation::Unexplained {
            key: "p/z".to_owned(),
            value: "?".to_owned(),
            mod_revision: 20,
        }]
    );
    // A right value at a wrong revision is no acknowledged write either.
    assert_eq!(
        check("p/", &found(&[("p/a", "2", 9)]), &writes(), &[]),
        vec![Violation::Unexplained {
            key: "p/a".to_owned(),
            value: "2".to_owned(),
            mod_revision: 9,
        }]
    );
}
