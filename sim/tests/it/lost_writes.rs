//! The lost-write checker on hand-written histories, on generated histories of a real register
//! (which must pass), and on those histories with a read turned back to a value an acknowledged
//! write had already replaced (which must fail, naming that write).

use crate::linearizability::{cas, generate, op, params_strategy, record, Fate, GenOp, GenParams};
use cohort_sim::checkers::{check_no_lost_writes, Checker, Failure, LostWrite};
use cohort_sim::history::{Expected, History, OpKind, Outcome};
use proptest::prelude::*;

const K: &str = "r0:k0";

fn lost(history: &History) -> Vec<LostWrite> {
    check_no_lost_writes(history).expect_err("a lost write")
}

#[test]
fn a_read_of_a_replaced_value_names_the_lost_write() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
    op(&mut h, 1, K, cas(Expected::Value(1), Some(2)), Outcome::CasOk, 20, 30);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 40, 50);
    let lost = lost(&h);
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].write, lost[0].observation, lost[0].seen, lost[0].seen_writer), (1, 2, Some(1), Some(0)));
    let message = lost[0].to_string();
    assert!(message.contains("op 1 (write of 2) was acknowledged"), "{message}");
}

#[test]
fn a_missing_reference_after_an_acknowledged_write_is_a_lost_write() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(7)), Outcome::CasOk, 0, 10);
    op(&mut h, 2, K, cas(Expected::MustNotExist, Some(8)), Outcome::CasFailed { current: None }, 20, 30);
    let lost = lost(&h);
    assert_eq!((lost[0].write, lost[0].observation, lost[0].seen), (0, 1, None));
    assert!(lost[0].to_string().contains("the reference missing"));
}

#[test]
fn overlapping_operations_are_not_lost_writes() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
    // The read overlaps the second write: it may come first.
    let read = h.invoke(2, K, OpKind::Read, 20);
    op(&mut h, 1, K, cas(Expected::Any, Some(2)), Outcome::CasOk, 20, 30);
    h.complete(read, Outcome::ReadOk(Some(1)), 40);
    // The first write overlaps the second: either may be last.
    let first = h.invoke(3, K, cas(Expected::Any, Some(3)), 50);
    op(&mut h, 1, K, cas(Expected::Any, Some(4)), Outcome::CasOk, 55, 60);
    h.complete(first, Outcome::CasOk, 65);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(4)), 70, 80);
    let report = check_no_lost_writes(&h).expect("nothing lost");
    assert_eq!((report.observations, report.acknowledged_writes), (2, 4));
}

#[test]
fn a_value_whose_write_is_unknown_proves_nothing() {
    let mut h = History::new();
    // The client gave up on this write; it may still take effect much later.
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::Unknown, 0, 10);
    op(&mut h, 2, K, cas(Expected::Any, Some(2)), Outcome::CasOk, 20, 30);
    op(&mut h, 3, K, OpKind::Read, Outcome::ReadOk(Some(1)), 40, 50);
    check_no_lost_writes(&h).expect("the unknown write may have come last");
}

#[test]
fn keys_with_deletes_do_not_judge_missing_references() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
    op(&mut h, 2, K, cas(Expected::Any, None), Outcome::Unknown, 20, 30);
    op(&mut h, 3, K, OpKind::Read, Outcome::ReadOk(None), 40, 50);
    check_no_lost_writes(&h).expect("a delete explains the missing reference");
}

#[test]
fn events_at_one_instant_keep_their_recorded_order() {
    // All at t = 5: the second write is recorded as invoked after the first returned, and
    // the read as invoked after the second returned. The register cannot hold 1 any more.
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 5, 5);
    op(&mut h, 1, K, cas(Expected::Any, Some(2)), Outcome::CasOk, 5, 5);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 5, 5);
    assert_eq!(lost(&h).len(), 1);
}

#[test]
fn failures_name_their_checker_in_json() {
    let failure = Failure::new(Checker::LostWrite, "key r0:k0: op 1 was acknowledged");
    let json = serde_json::to_string(&failure).unwrap();
    assert_eq!(json, r#"{"checker":"lost-write","message":"key r0:k0: op 1 was acknowledged"}"#);
    assert_eq!(serde_json::from_str::<Failure>(&json).unwrap(), failure);
    for checker in Checker::ALL {
        assert_eq!(Checker::from_name(checker.name()), Some(checker));
        assert_eq!(serde_json::to_string(&checker).unwrap(), format!("\"{}\"", checker.name()));
    }
    assert_eq!(failure.to_string(), "lost-write: key r0:k0: op 1 was acknowledged");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// A real register loses nothing. Turning one completed read back to the value of an
    /// acknowledged write that another acknowledged write had replaced before the read began
    /// is a lost write, reported on that read.
    #[test]
    fn generated_histories_pass_and_a_read_turned_back_fails(params in params_strategy()) {
        let params = cohort_unique(params);
        let ops = generate(params);
        let history = record(&ops, params.seed);
        if let Err(lost) = check_no_lost_writes(&history) {
            panic!("{params:?}: a real register lost {}", lost[0]);
        }
        if let Some((r, p)) = read_to_turn_back(&ops) {
            let OpKind::Cas { new: Some(value), .. } = ops[p].kind else { unreachable!("filtered") };
            let mut corrupted = ops.clone();
            corrupted[r].outcome = Outcome::ReadOk(Some(value));
            let history = record(&corrupted, params.seed);
            let lost = check_no_lost_writes(&history).expect_err("a read turned back is a lost write");
            prop_assert!(lost.iter().any(|l| l.seen == Some(value) && l.key == ops[r].key), "{lost:?}");
        }
    }
}

/// A definite read `r` and an acknowledged write `p` of its key such that another acknowledged
/// write was invoked after `p` returned and returned before `r` began.
fn read_to_turn_back(ops: &[GenOp]) -> Option<(usize, usize)> {
    let acknowledged: Vec<usize> = (0..ops.len())
        .filter(|&i| {
            matches!(
                (&ops[i].kind, &ops[i].outcome, ops[i].fate),
                (OpKind::Cas { new: Some(_), .. }, Outcome::CasOk, Fate::Definite)
            )
        })
        .collect();
    (0..ops.len()).find_map(|r| {
        let read = &ops[r];
        if !matches!((&read.kind, read.fate), (OpKind::Read, Fate::Definite)) {
            return None;
        }
        acknowledged.iter().find_map(|&p| {
            let stale = &ops[p];
            let replaced = acknowledged.iter().any(|&w| {
                let w = &ops[w];
                w.key == read.key && w.invoked_ns > stale.completed_ns && w.completed_ns < read.invoked_ns
            });
            (stale.key == read.key && replaced).then_some((r, p))
        })
    })
}

/// The property above is not vacuous: most generated histories have a read to turn back.
#[test]
fn most_generated_histories_have_a_read_to_turn_back() {
    let found = (0..50)
        .filter(|&seed| {
            let params =
                GenParams { seed, clients: 4, ops_per_client: 15, keys: 2, unknown_percent: 10, unique_values: true };
            read_to_turn_back(&generate(params)).is_some()
        })
        .count();
    assert!(found >= 25, "only {found} of 50 histories had a read to turn back");
}

/// Every write writes a fresh value (the workload's object ids): the checker's premise.
fn cohort_unique(mut params: GenParams) -> GenParams {
    params.unique_values = true;
    params
}
