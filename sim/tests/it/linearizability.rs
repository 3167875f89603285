//! The linearizability checker on hand-written histories, on generated linearizable ones, and
//! on those same histories with one observation corrupted.

use std::time::Instant;

use cohort_sim::checkers::{check_linearizable, KeyReport, Violation, STATES_PER_KEY_MAX_DEFAULT};
use cohort_sim::history::{Expected, History, OpKind, Outcome, Value};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const K: &str = "repo-a.git:refs/heads/k1";
const K2: &str = "repo-b.git:refs/heads/k2";

pub(crate) fn cas(expected: Expected, new: Option<Value>) -> OpKind {
    OpKind::Cas { expected, new }
}

fn check(history: &History) -> Result<cohort_sim::checkers::Report, Violation> {
    check_linearizable(history, STATES_PER_KEY_MAX_DEFAULT)
}

/// Asserts the history is not linearizable on `key`; returns the explanation.
fn assert_not_linearizable(history: &History, key: &str) -> String {
    match check(history) {
        Err(Violation::NotLinearizable { key: bad_key, ops, explanation }) => {
            assert_eq!(bad_key, key);
            assert_eq!(ops.len(), history.ops().iter().filter(|op| op.key == key).count());
            explanation
        }
        other => panic!("expected NotLinearizable on {key}, got {other:?}"),
    }
}

/// Records a whole op at once, for sequential sections of a history.
pub(crate) fn op(
    history: &mut History,
    client: u64,
    key: &str,
    kind: OpKind,
    outcome: Outcome,
    invoked_ns: u64,
    completed_ns: u64,
) {
    let id = history.invoke(client, key, kind, invoked_ns);
    history.complete(id, outcome, completed_ns);
}

#[test]
fn sequential_history_is_linearizable() {
    let mut h = History::new();
    op(&mut h, 1, K, OpKind::Read, Outcome::ReadOk(None), 0, 10);
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 20, 30);
    op(&mut h, 2, K, cas(Expected::MustNotExist, Some(2)), Outcome::CasFailed { current: Some(1) }, 40, 50);
    op(&mut h, 2, K, cas(Expected::Value(1), Some(2)), Outcome::CasOk, 60, 70);
    op(&mut h, 1, K, cas(Expected::Value(1), Some(3)), Outcome::CasFailed { current: Some(2) }, 80, 90);
    op(&mut h, 1, K, OpKind::Read, Outcome::ReadOk(Some(2)), 100, 110);
    op(&mut h, 3, K, cas(Expected::Any, None), Outcome::CasOk, 120, 130);
    op(&mut h, 3, K, OpKind::Read, Outcome::ReadOk(None), 140, 150);
    op(&mut h, 3, K, cas(Expected::Value(2), Some(4)), Outcome::CasFailed { current: None }, 160, 170);
    let report = check(&h).expect("linearizable");
    assert_eq!(report.keys.len(), 1);
    assert_eq!(report.keys[K].ops, 9);
    assert!(report.keys[K].states >= 9, "one state per op at least: {report:?}");
}

#[test]
fn empty_history_is_linearizable() {
    let report = check(&History::new()).expect("linearizable");
    assert!(report.keys.is_empty());
}

#[test]
fn stale_read_after_completed_write_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
    op(&mut h, 1, K, cas(Expected::Any, Some(2)), Outcome::CasOk, 20, 30);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 40, 50);
    let explanation = assert_not_linearizable(&h, K);
    assert!(explanation.contains("longest linearizable prefix: 2 ops"), "{explanation}");
    assert!(explanation.contains("read 1, but the register holds 2"), "{explanation}");
}

#[test]
fn concurrent_write_and_read_may_see_either_value() {
    for observed in [Some(1), Some(2)] {
        let mut h = History::new();
        op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
        let write = h.invoke(1, K, cas(Expected::Value(1), Some(2)), 20);
        let read = h.invoke(2, K, OpKind::Read, 25);
        h.complete(read, Outcome::ReadOk(observed), 30);
        h.complete(write, Outcome::CasOk, 35);
        check(&h).unwrap_or_else(|violation| panic!("read of {observed:?}: {violation}"));
    }
    // But not a value nobody wrote, nor the initial one, already overwritten.
    for observed in [Some(3), None] {
        let mut h = History::new();
        op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
        let write = h.invoke(1, K, cas(Expected::Value(1), Some(2)), 20);
        let read = h.invoke(2, K, OpKind::Read, 25);
        h.complete(read, Outcome::ReadOk(observed), 30);
        h.complete(write, Outcome::CasOk, 35);
        assert_not_linearizable(&h, K);
    }
}

#[test]
fn cas_failed_observing_a_value_never_held_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 0, 10);
    op(&mut h, 2, K, cas(Expected::Value(5), Some(6)), Outcome::CasFailed { current: Some(7) }, 20, 30);
    let explanation = assert_not_linearizable(&h, K);
    assert!(explanation.contains("failed observing 7, but the register holds 1"), "{explanation}");
}

#[test]
fn cas_failed_although_its_precondition_held_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 0, 10);
    op(&mut h, 2, K, cas(Expected::Value(1), Some(2)), Outcome::CasFailed { current: Some(1) }, 20, 30);
    let explanation = assert_not_linearizable(&h, K);
    assert!(explanation.contains("precondition 1 holds on register 1"), "{explanation}");

    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasFailed { current: None }, 0, 10);
    assert_not_linearizable(&h, K);
}

#[test]
fn unknown_cas_that_must_have_happened_is_linearizable() {
    for leave_pending in [false, true] {
        let mut h = History::new();
        op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 0, 10);
        let lost = h.invoke(1, K, cas(Expected::Value(1), Some(2)), 20);
        if !leave_pending {
            h.complete(lost, Outcome::Unknown, 30);
        }
        // Seen long after the client gave up: the update took effect late.
        op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 40, 50);
        op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(2)), 60, 70);
        op(&mut h, 3, K, cas(Expected::Value(2), Some(3)), Outcome::CasOk, 80, 90);
        check(&h).unwrap_or_else(|violation| panic!("pending {leave_pending}: {violation}"));
    }
}

#[test]
fn unknown_cas_that_never_happened_is_linearizable() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 0, 10);
    let lost = h.invoke(1, K, cas(Expected::Any, Some(2)), 20);
    h.complete(lost, Outcome::Unknown, 30);
    let never_completed = h.invoke(3, K, cas(Expected::Value(1), None), 35);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 40, 50);
    op(&mut h, 2, K, cas(Expected::Value(1), Some(3)), Outcome::CasOk, 60, 70);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(3)), 80, 90);
    check(&h).expect("linearizable");
    assert!(h.op(never_completed).is_pending());
}

#[test]
fn unknown_cas_cannot_take_effect_before_its_invocation() {
    let mut h = History::new();
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(2)), 0, 10);
    let late = h.invoke(1, K, cas(Expected::Any, Some(2)), 20);
    h.complete(late, Outcome::Unknown, 30);
    assert_not_linearizable(&h, K);
}

#[test]
fn unknown_cas_takes_effect_at_most_once() {
    // 1 -> 2 by the unknown op, then 2 -> 1 by a definite one: a later read of 2 needs the
    // unknown op to apply a second time.
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
    let lost = h.invoke(1, K, cas(Expected::Value(1), Some(2)), 20);
    h.complete(lost, Outcome::Unknown, 30);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(2)), 40, 50);
    op(&mut h, 2, K, cas(Expected::Value(2), Some(1)), Outcome::CasOk, 60, 70);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(2)), 80, 90);
    assert_not_linearizable(&h, K);
}

#[test]
fn lost_acknowledged_write_is_a_violation() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 0, 10);
    op(&mut h, 1, K, cas(Expected::Value(1), Some(2)), Outcome::CasOk, 20, 30);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 40, 50);
    let explanation = assert_not_linearizable(&h, K);
    assert!(explanation.contains("#2 client 2 read = 1 [40, 50] ns must take effect"), "{explanation}");
}

#[test]
fn overlapping_cas_with_the_same_expected_value_cannot_both_succeed() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
    let a = h.invoke(1, K, cas(Expected::Value(1), Some(2)), 20);
    let b = h.invoke(2, K, cas(Expected::Value(1), Some(3)), 21);
    h.complete(b, Outcome::CasOk, 30);
    h.complete(a, Outcome::CasOk, 31);
    let explanation = assert_not_linearizable(&h, K);
    assert!(explanation.contains("precondition 1 fails"), "{explanation}");

    // One of them failing, observing the other's value, is fine either way round.
    for (a_wins, current) in [(true, 2), (false, 3)] {
        let mut h = History::new();
        op(&mut h, 1, K, cas(Expected::Any, Some(1)), Outcome::CasOk, 0, 10);
        let a = h.invoke(1, K, cas(Expected::Value(1), Some(2)), 20);
        let b = h.invoke(2, K, cas(Expected::Value(1), Some(3)), 21);
        let (b_outcome, a_outcome) = if a_wins {
            (Outcome::CasFailed { current: Some(current) }, Outcome::CasOk)
        } else {
            (Outcome::CasOk, Outcome::CasFailed { current: Some(current) })
        };
        h.complete(b, b_outcome, 30);
        h.complete(a, a_outcome, 31);
        check(&h).unwrap_or_else(|violation| panic!("a wins {a_wins}: {violation}"));
    }
}

#[test]
fn equal_timestamps_follow_recording_order() {
    // The write completes at 10 and the read is invoked at 10, recorded after the completion:
    // they do not overlap, so reading the old value is stale.
    let mut h = History::new();
    let write = h.invoke(1, K, cas(Expected::Any, Some(1)), 0);
    h.complete(write, Outcome::CasOk, 10);
    let read = h.invoke(2, K, OpKind::Read, 10);
    h.complete(read, Outcome::ReadOk(None), 10);
    assert_not_linearizable(&h, K);

    // Recorded before the completion at the same instant, the read overlaps the write.
    let mut h = History::new();
    let write = h.invoke(1, K, cas(Expected::Any, Some(1)), 0);
    let read = h.invoke(2, K, OpKind::Read, 10);
    h.complete(write, Outcome::CasOk, 10);
    h.complete(read, Outcome::ReadOk(None), 10);
    check(&h).expect("overlapping ops may go either way");

    // Zero-duration ops in one instant, in recording order.
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 5, 5);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 5, 5);
    op(&mut h, 1, K, cas(Expected::Value(1), None), Outcome::CasOk, 5, 5);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(None), 5, 5);
    check(&h).expect("sequential in recording order");
}

#[test]
fn keys_are_checked_independently() {
    let mut h = History::new();
    op(&mut h, 1, K, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 0, 10);
    op(&mut h, 1, K2, cas(Expected::MustNotExist, Some(1)), Outcome::CasOk, 20, 30);
    op(&mut h, 2, K, OpKind::Read, Outcome::ReadOk(Some(1)), 40, 50);
    op(&mut h, 2, K2, OpKind::Read, Outcome::ReadOk(Some(1)), 60, 70);
    op(&mut h, 2, K2, OpKind::Read, Outcome::ReadOk(Some(1)), 80, 90);
    let report = check(&h).expect("linearizable");
    assert_eq!(report.keys.len(), 2);
    assert_eq!(report.keys[K].ops, 2);
    assert_eq!(report.keys[K2].ops, 3);
    assert_eq!(report.ops_total(), 5);

    // The same value on the other key says nothing about this one.
    op(&mut h, 3, K2, OpKind::Read, Outcome::ReadOk(None), 100, 110);
    assert_not_linearizable(&h, K2);
}

/// Ten clients writing unique values concurrently (the worst case for the frontier), with
/// reads: a linearizable history must be found quickly whatever the interleaving.
fn concurrent_history(clients: u64, ops_per_client: u64) -> History {
    let mut h = History::new();
    let mut value = 0;
    for round in 0..ops_per_client {
        let t = round * 100;
        let ids: Vec<_> = (0..clients)
            .map(|client| {
                let kind = if client % 2 == 0 {
                    value += 1;
                    cas(Expected::Any, Some(value))
                } else {
                    OpKind::Read
                };
                (client, h.invoke(client, K, kind, t + client))
            })
            .collect();
        // Each round's writes all overlap; the round's last write is the value reads see.
        for (client, id) in ids {
            let outcome = if client % 2 == 0 { Outcome::CasOk } else { Outcome::ReadOk(Some(value)) };
            h.complete(id, outcome, t + 50 + client);
        }
    }
    h
}

#[test]
fn inconclusive_for_a_tiny_state_budget() {
    let h = concurrent_history(10, 5);
    match check_linearizable(&h, 3) {
        Err(Violation::Inconclusive { key, states }) => {
            assert_eq!(key, K);
            assert_eq!(states, 4, "stops at the first state past the budget");
        }
        other => panic!("expected Inconclusive, got {other:?}"),
    }
    check(&h).expect("linearizable with a real budget");
}

#[test]
fn not_linearizable_is_reported_before_inconclusive() {
    let mut h = concurrent_history(10, 5);
    let t = 10_000;
    op(&mut h, 1, K2, cas(Expected::Any, Some(1)), Outcome::CasOk, t, t + 10);
    op(&mut h, 1, K2, OpKind::Read, Outcome::ReadOk(Some(2)), t + 20, t + 30);
    match check_linearizable(&h, 3) {
        Err(Violation::NotLinearizable { key, .. }) => assert_eq!(key, K2),
        other => panic!("expected NotLinearizable on {K2}, got {other:?}"),
    }
}

#[test]
fn many_concurrent_clients_check_quickly() {
    let h = concurrent_history(10, 50);
    let started = Instant::now();
    let report = check(&h).expect("linearizable");
    let KeyReport { ops, states } = report.keys[K];
    eprintln!("{ops} ops, 10 clients: {states} states in {:?}", started.elapsed());
    assert_eq!(ops, 500);
}

// ---------------------------------------------------------------------------------------------
// Generated histories: a real register, random concurrent clients.

/// A value no generated op ever writes.
const NEVER_WRITTEN: Value = 1 << 40;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Fate {
    /// Completed with an outcome computed from the register.
    Definite,
    /// Completed with `Unknown` at its completion time (the client gave up).
    Unknown,
    /// Never completed.
    Pending,
}

#[derive(Clone, Debug)]
pub(crate) struct GenOp {
    pub(crate) client: u64,
    pub(crate) key: &'static str,
    pub(crate) kind: OpKind,
    pub(crate) invoked_ns: u64,
    pub(crate) completed_ns: u64,
    pub(crate) fate: Fate,
    /// When it takes effect, if ever: strictly inside its interval (definite ops), or strictly
    /// after its invocation (unknown ones), so the order in which events sharing a timestamp
    /// are recorded never matters.
    pub(crate) effect_ns: Option<u64>,
    pub(crate) outcome: Outcome,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct GenParams {
    pub(crate) seed: u64,
    pub(crate) clients: u64,
    pub(crate) ops_per_client: u64,
    pub(crate) keys: usize,
    pub(crate) unknown_percent: u32,
    /// Every write writes a fresh value (tight constraints) rather than one of a few.
    pub(crate) unique_values: bool,
}

/// Event timestamps are multiples of `TICK_NS`, so many events share one.
const TICK_NS: u64 = 10;

/// Ops whose effect instants are within their intervals, outcomes computed by a real register
/// at those instants: linearizable by construction.
pub(crate) fn generate(params: GenParams) -> Vec<GenOp> {
    let GenParams { seed, clients, ops_per_client, keys, unknown_percent, unique_values } = params;
    let mut rng = StdRng::seed_from_u64(seed);
    let key_names = [K, K2, "repo-c.git:refs/tags/v1"];
    let mut written: Value = 0;
    let mut ops = Vec::new();
    for client in 0..clients {
        let mut tick = rng.gen_range(0..4u64);
        for _ in 0..ops_per_client {
            let key = key_names[rng.gen_range(0..keys)];
            let kind = if rng.gen_bool(0.4) {
                OpKind::Read
            } else {
                let new = if rng.gen_bool(0.15) {
                    None
                } else if unique_values {
                    // Values are per-client-unique tokens; ties across clients are fine.
                    written += 1;
                    Some(written)
                } else {
                    Some(rng.gen_range(1..=4))
                };
                let expected = match rng.gen_range(0..10) {
                    0 | 1 => Expected::Any,
                    2 | 3 => Expected::MustNotExist,
                    _ if unique_values => Expected::Value(written.saturating_sub(rng.gen_range(0..3)).max(1)),
                    _ => Expected::Value(rng.gen_range(1..=4)),
                };
                OpKind::Cas { expected, new }
            };
            let duration_ticks = rng.gen_range(1..=6u64);
            let invoked_ns = tick * TICK_NS;
            let completed_ns = (tick + duration_ticks) * TICK_NS;
            let fate = if rng.gen_range(0..100) < unknown_percent {
                if rng.gen_bool(0.5) {
                    Fate::Unknown
                } else {
                    Fate::Pending
                }
            } else {
                Fate::Definite
            };
            let effect_ns = match fate {
                Fate::Definite => Some(invoked_ns + rng.gen_range(1..completed_ns - invoked_ns)),
                // Perhaps never, perhaps long after the client gave up.
                Fate::Unknown | Fate::Pending => {
                    rng.gen_bool(0.6).then(|| invoked_ns + rng.gen_range(1..40 * TICK_NS) / TICK_NS * TICK_NS + 1)
                }
            };
            ops.push(GenOp { client, key, kind, invoked_ns, completed_ns, fate, effect_ns, outcome: Outcome::Pending });
            // A client whose op is pending forever has crashed: it comes back as the same
            // client id, which the checker must not rely on being sequential.
            tick += duration_ticks + rng.gen_range(0..3u64);
        }
    }

    // Apply the effects in time order to one register per key.
    let mut order: Vec<usize> = (0..ops.len()).filter(|&index| ops[index].effect_ns.is_some()).collect();
    order.sort_by_key(|&index| (ops[index].effect_ns, index));
    let mut registers: std::collections::BTreeMap<&str, Option<Value>> = Default::default();
    for index in order {
        let op = &mut ops[index];
        let register = registers.entry(op.key).or_insert(None);
        op.outcome = match op.kind {
            OpKind::Read => Outcome::ReadOk(*register),
            OpKind::Cas { expected, new } if expected.holds(*register) => {
                *register = new;
                Outcome::CasOk
            }
            OpKind::Cas { .. } => Outcome::CasFailed { current: *register },
        };
    }
    ops
}

/// Records the ops' events in time order; events sharing a timestamp in a random order.
pub(crate) fn record(ops: &[GenOp], seed: u64) -> History {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    // (time, tie-breaker, op index, is completion)
    let mut events = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        events.push((op.invoked_ns, rng.gen::<u64>(), index, false));
        if !matches!(op.fate, Fate::Pending) {
            events.push((op.completed_ns, rng.gen::<u64>(), index, true));
        }
    }
    events.sort();
    let mut history = History::new();
    let mut ids = vec![None; ops.len()];
    for (time_ns, _, index, is_completion) in events {
        let op = &ops[index];
        if is_completion {
            let outcome = match op.fate {
                Fate::Definite => op.outcome.clone(),
                Fate::Unknown => Outcome::Unknown,
                Fate::Pending => unreachable!("pending ops have no completion event"),
            };
            history.complete(ids[index].expect("invoked before completed"), outcome, time_ns);
        } else {
            ids[index] = Some(history.invoke(op.client, op.key, op.kind.clone(), time_ns));
        }
    }
    history
}

pub(crate) fn params_strategy() -> impl Strategy<Value = GenParams> {
    (any::<u64>(), 1..=8u64, 1..=25u64, 1..=3usize, 0..=25u32, any::<bool>()).prop_map(
        |(seed, clients, ops_per_client, keys, unknown_percent, unique_values)| GenParams {
            seed,
            clients,
            ops_per_client,
            keys,
            unknown_percent,
            unique_values,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// A history produced by a real register passes; the same history with one completed
    /// read's observation replaced by a value nobody wrote fails, on that read's key.
    #[test]
    fn generated_histories_pass_and_a_corrupted_read_fails(params in params_strategy()) {
        let ops = generate(params);
        let history = record(&ops, params.seed);
        let report = match check(&history) {
            Ok(report) => report,
            Err(violation) => panic!("{params:?}: a real register's history was rejected: {violation}"),
        };
        prop_assert_eq!(report.ops_total(), history.len());

        let completed_reads: Vec<usize> = (0..ops.len())
            .filter(|&index| matches!((&ops[index].kind, ops[index].fate), (OpKind::Read, Fate::Definite)))
            .collect();
        if !completed_reads.is_empty() {
            let mut rng = StdRng::seed_from_u64(params.seed);
            let victim = completed_reads[rng.gen_range(0..completed_reads.len())];
            let mut corrupted = ops.clone();
            corrupted[victim].outcome = Outcome::ReadOk(Some(NEVER_WRITTEN));
            let history = record(&corrupted, params.seed);
            match check(&history) {
                Err(Violation::NotLinearizable { key, .. }) => prop_assert_eq!(key, ops[victim].key),
                // Refuting a history whose writes repeat values, with many unknown outcomes,
                // can exceed the search budget (the checker's documented limit; the workload
                // writes unique values). Inconclusive is still not a pass.
                Err(Violation::Inconclusive { .. }) if !params.unique_values => {}
                other => panic!("{params:?}: corrupted read of op {victim} not caught: {other:?}"),
            }
        }
    }
}

/// Campaign-sized histories (one key, ten clients, 500 ops, unique values, some unknown
/// outcomes): both verdicts come well within the default budget, even the exhaustive one.
#[test]
fn campaign_sized_histories_check_within_budget() {
    for seed in 0..3 {
        let params =
            GenParams { seed, clients: 10, ops_per_client: 50, keys: 1, unknown_percent: 5, unique_values: true };
        let ops = generate(params);
        let history = record(&ops, seed);
        let started = Instant::now();
        let report = check(&history).unwrap_or_else(|violation| panic!("seed {seed}: {violation}"));
        let pass_elapsed = started.elapsed();

        let reads: Vec<usize> = (0..ops.len())
            .filter(|&index| matches!((&ops[index].kind, ops[index].fate), (OpKind::Read, Fate::Definite)))
            .collect();
        let victim = reads[reads.len() / 2];
        let mut corrupted = ops.clone();
        corrupted[victim].outcome = Outcome::ReadOk(Some(NEVER_WRITTEN));
        let started = Instant::now();
        match check(&record(&corrupted, seed)) {
            Err(Violation::NotLinearizable { explanation, .. }) => {
                let first_line = explanation.lines().next().unwrap_or_default();
                eprintln!(
                    "seed {seed}: pass {} states in {pass_elapsed:?}; corrupted in {:?}: {first_line}",
                    report.states_total(),
                    started.elapsed()
                );
            }
            other => panic!("seed {seed}: corrupted read of op {victim} not caught: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tiny random histories, mostly not linearizable: the checker agrees with brute force.

/// Whether some order of the ops explains the history, by trying them all: every op with a
/// definite outcome placed once, unknown ones at most once, each after every op that returned
/// before its invocation.
fn brute_force_linearizable(history: &History) -> bool {
    fn search(ops: &[&cohort_sim::history::Op], placed: &mut Vec<bool>, state: Option<Value>) -> bool {
        if ops.iter().zip(placed.iter()).all(|(op, &placed)| placed || !op.is_definite()) {
            return true;
        }
        for index in 0..ops.len() {
            if placed[index] {
                continue;
            }
            let op = ops[index];
            // Every unplaced op that returned before this one was invoked must go first.
            let blocked = ops.iter().zip(placed.iter()).any(|(other, &other_placed)| {
                !other_placed && other.is_definite() && other.completed_seq.unwrap() < op.invoked_seq
            });
            if blocked {
                continue;
            }
            let next = match (&op.kind, &op.outcome) {
                (OpKind::Read, Outcome::ReadOk(observed)) => (state == *observed).then_some(state),
                (OpKind::Read, _) => Some(state),
                (OpKind::Cas { expected, new }, Outcome::CasOk) => expected.holds(state).then_some(*new),
                (OpKind::Cas { expected, .. }, Outcome::CasFailed { current }) => {
                    (!expected.holds(state) && state == *current).then_some(state)
                }
                (OpKind::Cas { expected, new }, _) => Some(if expected.holds(state) { *new } else { state }),
            };
            if let Some(next) = next {
                placed[index] = true;
                let found = search(ops, placed, next);
                placed[index] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    history.by_key().values().all(|ops| search(ops, &mut vec![false; ops.len()], None))
}

fn small_value(rng: &mut StdRng) -> Option<Value> {
    match rng.gen_range(0..4) {
        0 => None,
        value => Some(value),
    }
}

/// Up to `ops_max` ops on one key with random kinds and outcomes, events in a random order.
fn random_history(seed: u64, ops_max: usize) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let ops_count = rng.gen_range(1..=ops_max);
    let kinds: Vec<OpKind> = (0..ops_count)
        .map(|_| {
            if rng.gen_bool(0.4) {
                OpKind::Read
            } else {
                let expected = match rng.gen_range(0..5) {
                    0 => Expected::Any,
                    1 => Expected::MustNotExist,
                    value => Expected::Value(value - 1),
                };
                cas(expected, small_value(&mut rng))
            }
        })
        .collect();
    // A random interleaving of invocations and completions: each op is invoked at a random
    // slot, completed (or left pending) at a later one.
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for index in 0..ops_count {
        let invoked = rng.gen_range(0..100u64);
        events.push((invoked, index, false));
        if rng.gen_range(0..10) != 0 {
            events.push((invoked + rng.gen_range(1..60), index, true));
        }
    }
    events.sort();
    let mut history = History::new();
    let mut ids = vec![0; ops_count];
    for (slot, index, is_completion) in events {
        // Several events per timestamp, in slot order.
        let now_ns = slot / 3;
        if is_completion {
            let outcome = match (&kinds[index], rng.gen_range(0..8)) {
                (_, 0) => Outcome::Unknown,
                (OpKind::Read, _) => Outcome::ReadOk(small_value(&mut rng)),
                (OpKind::Cas { .. }, 1..=4) => Outcome::CasOk,
                (OpKind::Cas { .. }, _) => Outcome::CasFailed { current: small_value(&mut rng) },
            };
            history.complete(ids[index], outcome, now_ns);
        } else {
            ids[index] = history.invoke(index as u64 % 3, K, kinds[index].clone(), now_ns);
        }
    }
    history
}

#[test]
fn agrees_with_brute_force_on_tiny_histories() {
    let (mut linearizable, mut not_linearizable) = (0, 0);
    for seed in 0..3000 {
        let history = random_history(seed, 7);
        let expected = brute_force_linearizable(&history);
        match check(&history) {
            Ok(_) if expected => linearizable += 1,
            Err(Violation::NotLinearizable { .. }) if !expected => not_linearizable += 1,
            other => {
                let ops: Vec<String> = history.ops().iter().map(|op| op.to_string()).collect();
                panic!("seed {seed}: brute force says {expected}, checker {other:?}\n{}", ops.join("\n"));
            }
        }
    }
    eprintln!("{linearizable} linearizable, {not_linearizable} not");
    // Both verdicts are exercised.
    assert!(linearizable > 300 && not_linearizable > 300, "{linearizable} / {not_linearizable}");
}
