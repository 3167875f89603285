//! Linearizability of every reference: a Wing–Gong search with Porcupine's refinements.
//!
//! Each key is a register (initially `None`) checked on its own: linearizability is
//! compositional, so a history is linearizable iff every key's sub-history is.
//!
//! # The search
//!
//! A key's events (invocations and completions) are put in a doubly linked list in the order
//! they happened. A depth-first search linearizes, one at a time, an operation whose invocation
//! comes before the first completion of an operation not yet linearized (that operation must
//! take effect before it returned, so nothing invoked after that completion may go first). An
//! operation is linearized if the register model accepts it in the current state: a read must
//! see the register's value, a `CasOk` needs its precondition to hold, a `CasFailed { current }`
//! needs it to fail with the register holding exactly `current`. Linearizing removes the
//! operation's events from the list ("lift", dancing links), backtracking puts them back. The
//! search is iterative (an explicit stack of nodes, each with its list of candidates) and
//! succeeds once every operation with a definite outcome is linearized.
//!
//! # Unknown outcomes
//!
//! Operations that timed out, or are still pending, may have taken effect at any instant after
//! their invocation, or never. They have no completion event (their "return" is at +infinity),
//! so they remain candidates for the rest of the search, and they are optional: one left over
//! when every definite operation is placed took effect after everything anyone observed, which
//! is the same as never. Since they pile up as the search advances, three sound reductions keep
//! them cheap:
//! - Unknown reads constrain nothing and are left out.
//! - An unknown compare-and-set writing a value no operation of the key mentions after its
//!   invocation is left out. "Mentions": a read or a failed compare-and-set observes the value,
//!   or a precondition expects it; "after": the mentioning operation returns after the unknown
//!   one's invocation, or never. While the register holds that value, which it can only do
//!   after the invocation, no definite operation but a blind write (`Expected::Any`) can be
//!   placed, and no unknown one can change it except by a blind write, so any linearization
//!   that applies it stays valid without it. With unique values per write (the workload's
//!   object ids), this drops the timed-out writes nobody saw, which are most of them.
//! - An unknown compare-and-set is only tried where it changes the register (where it would
//!   not, leaving it for later is never worse), and of several available ones with the same
//!   precondition and new value only the earliest is tried: they are interchangeable, and
//!   anything available now stays available.
//!
//! # Pruning
//!
//! A memo of visited states: (definite operations linearized, register value) → the sets of
//! unknown operations linearized with them. A new state is pruned if a visited one has the same
//! definite set and value and a subset of its unknown operations: that one had every option
//! this one has (the same candidates, the same register, more unknown operations still
//! available), and it was (or is being) explored. Without unknown operations this is exactly
//! Porcupine's cache. The memo is a `HashMap`: only membership is ever asked, never iteration
//! order, so the verdict, the states count and the explanation are deterministic.
//!
//! # Equal timestamps
//!
//! Events are ordered by their sequence number in the history, which is the order they were
//! recorded in; timestamps never decrease along it. So among events sharing a timestamp, an
//! invocation recorded after a completion happens after it (the operations do not overlap: a
//! real-time constraint), and one recorded before it happens before it (they overlap). Under a
//! simulated clock many events share an instant, and this is the real order, where ordering
//! ties by kind alone would invent constraints (or drop them).
//!
//! # Bounds
//!
//! Each key's search stops after `states_max` states with [`Violation::Inconclusive`], never
//! with a silent pass. The memo holds at most `states_max` states, each about 100 bytes plus
//! (ops of the key) / 4 bytes: some 200 MB for 500 ops at [`STATES_PER_KEY_MAX_DEFAULT`].
//!
//! Measured (release; debug is about ten times slower): ten clients, 500 ops on one key, unique
//! values, 5–20% unknown outcomes: a linearizable history in 3,000–85,000 states (milliseconds),
//! a corrupted one refuted in 45,000–850,000 states (under 0.4 s). The search is exponential
//! in the worst case, though: many unknown outcomes over a small set of values (the same few
//! values written again and again) can exhaust the budget; workloads should write unique
//! values per key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write as _;

use crate::history::{DisplayValue, Expected, History, Op, OpKind, Outcome, Value};

/// A reasonable `states_max` for campaign histories (hundreds of operations per key, about ten
/// clients, unique values): they need far fewer states, and the memo stays within a few
/// hundred MB.
pub const STATES_PER_KEY_MAX_DEFAULT: usize = 1_000_000;

/// How many operations of the longest linearizable prefix an explanation lists (the last ones:
/// they are closest to the point of failure).
const EXPLANATION_PREFIX_OPS_MAX: usize = 32;

/// The per-key work done for a linearizable history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub keys: BTreeMap<String, KeyReport>,
}

impl Report {
    pub fn ops_total(&self) -> usize {
        self.keys.values().map(|key| key.ops).sum()
    }

    pub fn states_total(&self) -> usize {
        self.keys.values().map(|key| key.states).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyReport {
    /// Operations on the key, whatever their outcome.
    pub ops: usize,
    /// Search states explored (visited, not pruned) before a linearization was found.
    pub states: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// No order of the key's operations explains what clients observed.
    NotLinearizable {
        key: String,
        /// Every operation on the key, in invocation order.
        ops: Vec<Op>,
        /// The longest linearizable prefix found and why no remaining operation fits after it.
        explanation: String,
    },
    /// The search for the key gave up after exploring `states` states: neither a pass nor a
    /// proof of a bug.
    Inconclusive { key: String, states: usize },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable { key, ops, explanation } => {
                writeln!(f, "key {key:?} is not linearizable ({} ops): {explanation}", ops.len())?;
                writeln!(f, "all ops of the key:")?;
                for op in ops {
                    writeln!(f, "  {op}")?;
                }
                Ok(())
            }
            Violation::Inconclusive { key, states } => {
                write!(f, "key {key:?}: linearizability search gave up after {states} states")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// Checks every key of `history` for linearizability, exploring at most `states_max` states per
/// key. A key that is not linearizable is reported in preference to one whose search gave up;
/// among several, the first key in order.
pub fn check_linearizable(history: &History, states_max: usize) -> Result<Report, Violation> {
    assert!(states_max > 0, "linearizability: states_max must be positive");
    let mut report = Report::default();
    let mut inconclusive = None;
    for (key, ops) in history.by_key() {
        match check_key(&ops, states_max) {
            KeyVerdict::Linearizable { states } => {
                assert!(states <= states_max, "linearizability: search exceeded its bound");
                report.keys.insert(key, KeyReport { ops: ops.len(), states });
            }
            KeyVerdict::NotLinearizable { explanation } => {
                let ops = ops.into_iter().cloned().collect();
                return Err(Violation::NotLinearizable { key, ops, explanation });
            }
            KeyVerdict::Inconclusive { states } => {
                inconclusive.get_or_insert(Violation::Inconclusive { key, states });
            }
        }
    }
    match inconclusive {
        Some(violation) => Err(violation),
        None => Ok(report),
    }
}

enum KeyVerdict {
    Linearizable { states: usize },
    NotLinearizable { explanation: String },
    Inconclusive { states: usize },
}

fn check_key(ops: &[&Op], states_max: usize) -> KeyVerdict {
    let mut search = Search::new(ops);
    search.run(states_max)
}

/// What an operation claims, as the register model sees it.
#[derive(Clone, Copy, Debug)]
enum Step {
    Read { observed: Option<Value> },
    CasOk { expected: Expected, new: Option<Value> },
    CasFailed { expected: Expected, current: Option<Value> },
    CasUnknown { expected: Expected, new: Option<Value> },
}

impl Step {
    /// The register after the step taken in `state`, or `None` if the step cannot happen there.
    fn apply(self, state: Option<Value>) -> Option<Option<Value>> {
        match self {
            Step::Read { observed } => (state == observed).then_some(state),
            Step::CasOk { expected, new } => expected.holds(state).then_some(new),
            Step::CasFailed { expected, current } => (!expected.holds(state) && state == current).then_some(state),
            Step::CasUnknown { expected, new } => Some(if expected.holds(state) { new } else { state }),
        }
    }

    /// Why the step can or cannot be the next one when the register holds `state`.
    fn explain(self, state: Option<Value>) -> String {
        let register = DisplayValue(state);
        let dead_end = "but no order of the remaining ops works from there";
        match self {
            Step::Read { observed } if observed == state => format!("could read {register} here, {dead_end}"),
            Step::Read { observed } => {
                format!("read {}, but the register holds {register}", DisplayValue(observed))
            }
            Step::CasOk { expected, new } if expected.holds(state) => {
                format!("could apply here (register -> {}), {dead_end}", DisplayValue(new))
            }
            Step::CasOk { expected, .. } => {
                format!("succeeded, but its precondition {expected} fails on register {register}")
            }
            Step::CasFailed { expected, .. } if expected.holds(state) => {
                format!("failed, but its precondition {expected} holds on register {register}")
            }
            Step::CasFailed { current, .. } if current != state => {
                format!("failed observing {}, but the register holds {register}", DisplayValue(current))
            }
            Step::CasFailed { .. } => format!("could fail here, {dead_end}"),
            Step::CasUnknown { expected, new } if expected.holds(state) && new != state => {
                format!("may take effect here (register -> {}), {dead_end}", DisplayValue(new))
            }
            Step::CasUnknown { .. } => "unknown outcome, would change nothing here".to_string(),
        }
    }
}

/// An operation the search may linearize.
struct Call {
    /// Index into the key's ops.
    op_index: usize,
    step: Step,
    /// Definite outcome: it must be linearized, and it has a return event.
    definite: bool,
    /// Its bit in the definite or the unknown bitset.
    bit: usize,
    /// Unknown ops with the same class (precondition, new value) are interchangeable.
    class: usize,
    /// Its list nodes.
    call_node: usize,
    return_node: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Call(usize),
    Return(usize),
}

/// A node of the depth-first search: a state, and the candidates still to try from it.
struct Node {
    state: Option<Value>,
    /// The call linearized to reach this node (`None` at the root).
    entered_by: Option<usize>,
    /// This node's candidates are `candidates[candidates_start..]` while it is on top.
    candidates_start: usize,
    candidate_next: usize,
}

struct Search<'a> {
    ops: &'a [&'a Op],
    calls: Vec<Call>,
    definite_count: usize,
    unknown_count: usize,
    /// Unknown reads: no effect, no observation, left out of the search.
    ignored_reads: usize,
    /// Unknown compare-and-set writing values nobody mentions, left out of the search.
    ignored_writes: usize,
    /// List node `n` (for `1..=events.len()`) holds `events[n - 1]`; node 0 is the head
    /// sentinel, node `events.len() + 1` the tail sentinel.
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    definite_done: Vec<u64>,
    definite_done_count: usize,
    unknown_done: Vec<u64>,
    /// (definite bitset words ++ encoded register) → unknown bitsets seen with it.
    memo: HashMap<Vec<u64>, Vec<Vec<u64>>>,
    memo_key: Vec<u64>,
    states: usize,
    stack: Vec<Node>,
    candidates: Vec<usize>,
    candidates_unknown: Vec<usize>,
    /// `class_seen[class] == candidates_generation`: an unknown op of that class is already a
    /// candidate of the node being built.
    class_seen: Vec<u64>,
    candidates_generation: u64,
    /// The deepest path found (calls in order), for the explanation.
    best_path: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [&'a Op]) -> Self {
        let mut calls = Vec::with_capacity(ops.len());
        // (sequence number, event) for every event of the key.
        let mut events_seq: Vec<(u64, Event)> = Vec::with_capacity(ops.len() * 2);
        // Value → the latest return (sequence number; `u64::MAX` for none) of the ops that
        // observe or expect it. An unknown write of a value not mentioned by an op returning
        // after the write's invocation cannot matter.
        let mut mentioned_until_seq: BTreeMap<Value, u64> = BTreeMap::new();
        for op in ops {
            let returned_seq =
                if op.is_definite() { op.completed_seq.expect("definite ops completed") } else { u64::MAX };
            let mut mention = |value: Value| {
                let until_seq = mentioned_until_seq.entry(value).or_insert(0);
                *until_seq = (*until_seq).max(returned_seq);
            };
            if let OpKind::Cas { expected: Expected::Value(value), .. } = op.kind {
                mention(value);
            }
            if let Outcome::ReadOk(Some(value)) | Outcome::CasFailed { current: Some(value) } = op.outcome {
                mention(value);
            }
        }
        let mut classes: BTreeMap<(Expected, Option<Value>), usize> = BTreeMap::new();
        let (mut definite_count, mut unknown_count, mut ignored_reads, mut ignored_writes) = (0, 0, 0, 0);
        for (op_index, op) in ops.iter().enumerate() {
            let step = match (&op.kind, &op.outcome) {
                (OpKind::Read, Outcome::ReadOk(observed)) => Step::Read { observed: *observed },
                (OpKind::Read, Outcome::Unknown | Outcome::Pending) => {
                    ignored_reads += 1;
                    continue;
                }
                (OpKind::Cas { new: Some(value), .. }, Outcome::Unknown | Outcome::Pending)
                    if mentioned_until_seq.get(value).is_none_or(|&until_seq| until_seq < op.invoked_seq) =>
                {
                    ignored_writes += 1;
                    continue;
                }
                (OpKind::Cas { expected, new }, Outcome::CasOk) => Step::CasOk { expected: *expected, new: *new },
                (OpKind::Cas { expected, .. }, Outcome::CasFailed { current }) => {
                    Step::CasFailed { expected: *expected, current: *current }
                }
                (OpKind::Cas { expected, new }, Outcome::Unknown | Outcome::Pending) => {
                    Step::CasUnknown { expected: *expected, new: *new }
                }
                (kind, outcome) => panic!("linearizability: op #{} is {kind:?} with outcome {outcome:?}", op.id),
            };
            let call = calls.len();
            let definite = op.is_definite();
            let bit = if definite { definite_count } else { unknown_count };
            let class = match step {
                Step::CasUnknown { expected, new } => {
                    let classes_len = classes.len();
                    *classes.entry((expected, new)).or_insert(classes_len)
                }
                _ => usize::MAX,
            };
            if definite {
                definite_count += 1;
            } else {
                unknown_count += 1;
            }
            events_seq.push((op.invoked_seq, Event::Call(call)));
            if definite {
                let completed_seq = op.completed_seq.expect("a definite outcome has a completion");
                assert!(completed_seq > op.invoked_seq, "op #{}: completion recorded before invocation", op.id);
                events_seq.push((completed_seq, Event::Return(call)));
            }
            calls.push(Call { op_index, step, definite, bit, class, call_node: 0, return_node: None });
        }
        events_seq.sort_unstable_by_key(|&(seq, _)| seq);
        for pair in events_seq.windows(2) {
            assert!(pair[0].0 < pair[1].0, "linearizability: two events share sequence number {}", pair[0].0);
        }
        // The history asserts that time never decreases in recording order; check that the
        // order used here is indeed a time order.
        let event_ns = |event: Event| match event {
            Event::Call(call) => ops[calls[call].op_index].invoked_ns,
            Event::Return(call) => ops[calls[call].op_index].completed_ns.expect("a return has a time"),
        };
        for pair in events_seq.windows(2) {
            assert!(event_ns(pair[0].1) <= event_ns(pair[1].1), "linearizability: event order is not a time order");
        }

        let events: Vec<Event> = events_seq.into_iter().map(|(_, event)| event).collect();
        for (index, &event) in events.iter().enumerate() {
            let node = index + 1;
            match event {
                Event::Call(call) => calls[call].call_node = node,
                Event::Return(call) => calls[call].return_node = Some(node),
            }
        }
        let nodes = events.len() + 2;
        let next = (0..nodes).map(|node| (node + 1).min(nodes - 1)).collect();
        let prev = (0..nodes).map(|node| node.saturating_sub(1)).collect();
        Search {
            ops,
            calls,
            definite_count,
            unknown_count,
            ignored_reads,
            ignored_writes,
            events,
            next,
            prev,
            definite_done: vec![0; definite_count.div_ceil(64)],
            definite_done_count: 0,
            unknown_done: vec![0; unknown_count.div_ceil(64)],
            memo: HashMap::new(),
            memo_key: Vec::with_capacity(definite_count.div_ceil(64) + 2),
            states: 0,
            stack: Vec::new(),
            candidates: Vec::new(),
            candidates_unknown: Vec::new(),
            class_seen: vec![0; classes.len()],
            candidates_generation: 0,
            best_path: Vec::new(),
        }
    }

    fn run(&mut self, states_max: usize) -> KeyVerdict {
        // Every step of the loop either visits a state (at most `states_max`), rejects one
        // candidate of the top node (each node has at most `calls` candidates) or pops a node
        // (once per visit).
        let iterations_max = (states_max + 1).saturating_mul(self.calls.len() + 2);
        let mut iterations = 0usize;

        let root_new = self.visit(None);
        assert!(root_new, "linearizability: the memo starts empty");
        self.states = 1;
        if self.definite_done_count == self.definite_count {
            return KeyVerdict::Linearizable { states: self.states };
        }
        self.push_node(None, None);

        loop {
            iterations += 1;
            assert!(iterations <= iterations_max, "linearizability: search loop exceeded its bound");
            let top = self.stack.last_mut().expect("the search ends when the root is exhausted");
            if top.candidate_next == self.candidates.len() {
                // Every candidate from this state failed: backtrack.
                let node = self.stack.pop().expect("top exists");
                self.candidates.truncate(node.candidates_start);
                match node.entered_by {
                    Some(call) => self.unlinearize(call),
                    None => {
                        assert!(self.stack.is_empty(), "linearizability: only the root has no entering call");
                        return KeyVerdict::NotLinearizable { explanation: self.explain() };
                    }
                }
                continue;
            }
            let call = self.candidates[top.candidate_next];
            top.candidate_next += 1;
            let state = top.state;
            let Some(state_new) = self.calls[call].step.apply(state) else { continue };
            if !self.calls[call].definite && state_new == state {
                continue;
            }
            self.set_done(call, true);
            if !self.visit(state_new) {
                self.set_done(call, false);
                continue;
            }
            self.states += 1;
            if self.states > states_max {
                return KeyVerdict::Inconclusive { states: self.states };
            }
            self.lift(call);
            if self.definite_done_count == self.definite_count {
                return KeyVerdict::Linearizable { states: self.states };
            }
            self.push_node(Some(call), state_new);
        }
    }

    /// Pushes a search node for the current list, after `entered_by` was linearized.
    fn push_node(&mut self, entered_by: Option<usize>, state: Option<Value>) {
        let candidates_start = self.candidates.len();
        self.collect_candidates();
        assert!(
            self.candidates.len() > candidates_start,
            "linearizability: an unlinearized definite op always has its own invocation before its return"
        );
        self.stack.push(Node { state, entered_by, candidates_start, candidate_next: candidates_start });
        // The stack holds the root plus one node per linearized call.
        if self.stack.len() - 1 > self.best_path.len() {
            self.best_path = self.stack.iter().filter_map(|node| node.entered_by).collect();
        }
    }

    /// Appends the calls that may go next: those invoked before the first return of an
    /// unlinearized op. Definite ones first, in invocation order, so that unknown ops are only
    /// applied where needed, which keeps the unknown sets small and the memo effective.
    fn collect_candidates(&mut self) {
        assert!(self.definite_done_count < self.definite_count, "linearizability: search already succeeded");
        self.candidates_unknown.clear();
        self.candidates_generation += 1;
        let tail = self.events.len() + 1;
        let mut node = self.next[0];
        loop {
            // An unlinearized definite op still has its return in the list.
            assert!(node != tail, "linearizability: no return left while definite ops remain");
            match self.events[node - 1] {
                Event::Return(_) => break,
                Event::Call(call) if self.calls[call].definite => self.candidates.push(call),
                Event::Call(call) => {
                    let class = self.calls[call].class;
                    if self.class_seen[class] != self.candidates_generation {
                        self.class_seen[class] = self.candidates_generation;
                        self.candidates_unknown.push(call);
                    }
                }
            }
            node = self.next[node];
        }
        self.candidates.extend_from_slice(&self.candidates_unknown);
    }

    /// Records a visit of (linearized set, `state`); false if it is pruned by a visited state
    /// with the same definite ops and register and no more unknown ops.
    fn visit(&mut self, state: Option<Value>) -> bool {
        self.memo_key.clear();
        self.memo_key.extend_from_slice(&self.definite_done);
        match state {
            None => self.memo_key.extend_from_slice(&[0, 0]),
            Some(value) => self.memo_key.extend_from_slice(&[1, value]),
        }
        let unknown_done = &self.unknown_done;
        match self.memo.get_mut(self.memo_key.as_slice()) {
            Some(unknown_sets) => {
                if unknown_sets.iter().any(|seen| is_subset(seen, unknown_done)) {
                    return false;
                }
                // Visited states this one dominates need no longer be compared against.
                unknown_sets.retain(|seen| !is_subset(unknown_done, seen));
                unknown_sets.push(unknown_done.clone());
            }
            None => {
                self.memo.insert(self.memo_key.clone(), vec![unknown_done.clone()]);
            }
        }
        true
    }

    fn set_done(&mut self, call: usize, done: bool) {
        let Call { definite, bit, .. } = self.calls[call];
        let words = if definite { &mut self.definite_done } else { &mut self.unknown_done };
        let mask = 1u64 << (bit % 64);
        assert_eq!(words[bit / 64] & mask != 0, !done, "linearizability: call {call} done twice or undone twice");
        words[bit / 64] ^= mask;
        if definite {
            if done {
                self.definite_done_count += 1;
            } else {
                self.definite_done_count -= 1;
            }
        }
    }

    /// Removes the call's events from the list (its bit is already set).
    fn lift(&mut self, call: usize) {
        let Call { call_node, return_node, .. } = self.calls[call];
        self.unlink(call_node);
        if let Some(return_node) = return_node {
            self.unlink(return_node);
        }
    }

    /// Undoes `lift` and the bit of the most recently linearized call.
    fn unlinearize(&mut self, call: usize) {
        let Call { call_node, return_node, .. } = self.calls[call];
        // Dancing links: relink in the reverse order of unlinking.
        if let Some(return_node) = return_node {
            self.relink(return_node);
        }
        self.relink(call_node);
        self.set_done(call, false);
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        assert!(self.next[prev] == node && self.prev[next] == node, "linearizability: node {node} not linked");
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        assert!(self.next[prev] == next && self.prev[next] == prev, "linearizability: relinking out of order");
        self.next[prev] = node;
        self.prev[next] = node;
    }

    /// Describes the longest linearizable prefix found and why no remaining op fits after it.
    fn explain(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "no order of the ops fits ({} states explored; {} ops with a known outcome, {} compare-and-set \
             with an unknown outcome; ignored: {} reads with an unknown outcome, {} compare-and-set with an \
             unknown outcome writing values nobody mentions later).",
            self.states, self.definite_count, self.unknown_count, self.ignored_reads, self.ignored_writes,
        );

        let mut linearized = vec![false; self.calls.len()];
        let mut state = None;
        let mut prefix_lines = Vec::with_capacity(self.best_path.len());
        for &call in &self.best_path {
            linearized[call] = true;
            state = self.calls[call].step.apply(state).expect("the best path is a valid linearization");
            let op = self.ops[self.calls[call].op_index];
            prefix_lines.push(format!("  {op}  => register {}", DisplayValue(state)));
        }
        let _ = writeln!(text, "longest linearizable prefix: {} ops", prefix_lines.len());
        let skipped = prefix_lines.len().saturating_sub(EXPLANATION_PREFIX_OPS_MAX);
        if skipped > 0 {
            let _ = writeln!(text, "  ... ({skipped} earlier ops)");
        }
        for line in &prefix_lines[skipped..] {
            let _ = writeln!(text, "{line}");
        }

        // The first return of an unlinearized op bounds what may go next.
        let blocker = self.events.iter().find_map(|&event| match event {
            Event::Return(call) if !linearized[call] => Some(call),
            _ => None,
        });
        let blocker = blocker.expect("a failed search leaves a definite op unlinearized");
        let _ = writeln!(
            text,
            "then {} must take effect before it returns, but no op invoked by then fits next \
             (register {}):",
            self.ops[self.calls[blocker].op_index],
            DisplayValue(state)
        );
        for &event in &self.events {
            match event {
                Event::Return(call) if call == blocker => break,
                Event::Call(call) if !linearized[call] => {
                    let op = self.ops[self.calls[call].op_index];
                    let _ = writeln!(text, "  {op}: {}", self.calls[call].step.explain(state));
                }
                _ => {}
            }
        }
        text
    }
}

/// Whether every bit of `small` is set in `large` (equal lengths).
fn is_subset(small: &[u64], large: &[u64]) -> bool {
    debug_assert_eq!(small.len(), large.len());
    small.iter().zip(large).all(|(small, large)| small & !large == 0)
}
