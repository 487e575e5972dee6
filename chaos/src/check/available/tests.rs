use std::time::Duration;

use super::*;
use crate::history::Output;

#[test]
fn tally_counts_answers_in_the_window_only() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let answers: Vec<Answer> = vec![
        (at(0), true, Some("apps".to_owned())),
        (at(100), true, Some("infra".to_owned())),
        (at(200), false, None),
        (at(300), true, Some("apps".to_owned())),
        (at(900), true, Some("infra".to_owned())),
    ];
    assert_eq!(tally(&answers, at(100), at(300), "apps"), (3, 1, 1));
    assert_eq!(tally(&answers, at(100), at(300), "infra"), (3, 1, 1));
    assert_eq!(tally(&answers, at(0), at(1000), "infra"), (5, 1, 2));
    assert_eq!(tally(&answers, at(400), at(800), "apps"), (0, 0, 0));
}

fn op(call: u64, input: Input, answered: bool) -> Op {
    Op {
        client: 0,
        key: "k".to_owned(),
        input,
        output: if answered {
            Output::Done
        } else {
            Output::Unknown
        },
        call,
        ret: answered.then_some(call + 1),
    }
}

#[test]
fn only_writes_inside_a_window_count_and_unanswered_ones_fail() {
    let put = || Input::Put("v".to_owned());
    let ops = [
        op(5, put(), false), // before the faults
        op(11, put(), true), // inside
        op(12, Input::Get, true),
        op(13, put(), false), // inside, no answer
        op(25, put(), false), // between windows
        op(31, Input::Delete, true),
    ];
    assert_eq!(writes_during(&ops, &[(10, 20), (30, 40)]), (3, 1));
    assert_eq!(writes_during(&ops, &[]), (0, 0));
}

#[test]
fn a_stale_remote_must_get_nothing_and_a_healed_one_something() {
    let good = Preference {
        connections: 50,
        failed: 0,
        local: 50,
        after_heal: 40,
        remote_after_heal: 18,
    };
    assert!(good.violations().is_empty());
    let leaked = Preference {
        local: 47,
        failed: 1,
        ..good
    };
    assert_eq!(
        leaked.violations(),
        ["3 of 50 connections while the remote was stale went to it or failed (1 failed)"]
    );
    let never_back = Preference {
        remote_after_heal: 0,
        ..good
    };
    assert_eq!(never_back.violations().len(), 1);
    let too_short = Preference {
        connections: 0,
        local: 0,
        ..good
    };
    assert_eq!(too_short.violations().len(), 1);
}

#[test]
fn a_window_with_too_little_work_is_inactive() {
    let four = Duration::from_secs(4);
    let busy = Activity::new(600, 180, four);
    assert_eq!((busy.kv_minimum, busy.connections_minimum), (20, 20));
    assert!(busy.violations().is_empty());
    // A workload that never started, and a probe that never ran.
    let idle = Activity::new(0, 0, four);
    assert_eq!(idle.violations().len(), 2, "{:?}", idle.violations());
    // A probe whose every attempt timed out after a second is too slow to count.
    let timing_out = Activity::new(600, 4, four);
    assert_eq!(timing_out.violations().len(), 1);
    assert!(timing_out.violations()[0].contains("4 probe connections"));
}

#[test]
fn failures_count_against_the_failover_only_after_its_window() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let ok = |ms| (at(ms), true, Some("apps".to_owned()));
    let failed = |ms| (at(ms), false, None);
    // Failures up to 1.5 s in: expected, reported, no violation.
    let answers = vec![ok(100), failed(200), failed(1_400), ok(1_600), ok(4_000)];
    let f = Failover::of(&answers, t0, at(5_000));
    assert_eq!(
        (f.within, f.failed_within, f.after, f.failed_after),
        (3, 2, 2, 0)
    );
    assert!(f.violations().is_empty());
    // One failure after the window is a violation.
    let answers = vec![ok(100), failed(1_501), ok(2_000)];
    let f = Failover::of(&answers, t0, at(5_000));
    assert_eq!((f.after, f.failed_after), (2, 1));
    assert_eq!(f.violations().len(), 1);
    // Nothing tried after the window proves nothing: a violation too.
    let f = Failover::of(&[ok(100), failed(200)], t0, at(5_000));
    assert_eq!(f.violations().len(), 1);
    // Connections after the fault ended are not the fault's.
    let f = Failover::of(&[ok(2_000), failed(6_000)], t0, at(5_000));
    assert_eq!((f.after, f.failed_after), (1, 0));
}
