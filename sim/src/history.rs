//! The record of what clients asked for and what they were told: the input of the checkers.
//!
//! A workload calls [`History::invoke`] just before it sends a request and
//! [`History::complete`] just after it learns the outcome (or gives up on it). Each key is one
//! reference of one repository (`"repo-a.git:refs/heads/k1"`), modelled as a register that
//! starts as `None` ("does not exist") and holds opaque [`Value`] tokens (the workload maps
//! object ids to unique `u64`s).
//!
//! Events are recorded in the order they happen: time never goes backwards, and every event
//! gets a sequence number (`invoked_seq`, `completed_seq`) so that events sharing a timestamp
//! (common under a simulated clock) keep their real order. Only ordered containers are used, so
//! everything derived from a history (`by_key`, `fingerprint`) is deterministic.

use std::collections::BTreeMap;
use std::fmt;

/// The value of a reference: an opaque token standing for an object id.
pub type Value = u64;

/// Identifies an operation in its [`History`]: its index in invocation order.
pub type OpId = u64;

/// A bound on the operations one history may hold. The checker indexes operations with `u32`,
/// and a campaign that records this many operations per seed has lost its way.
pub const HISTORY_OPS_MAX: usize = 1 << 24;

/// What the client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Read the current value of the reference.
    Read,
    /// Set the reference to `new` (`None` deletes it) if its current value matches `expected`.
    Cas { expected: Expected, new: Option<Value> },
}

/// The precondition of a compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expected {
    /// No precondition: the update always applies.
    Any,
    /// The reference must not exist.
    MustNotExist,
    /// The reference must hold exactly this value.
    Value(Value),
}

impl Expected {
    /// Whether the precondition holds when the register holds `current`.
    pub fn holds(self, current: Option<Value>) -> bool {
        match self {
            Expected::Any => true,
            Expected::MustNotExist => current.is_none(),
            Expected::Value(value) => current == Some(value),
        }
    }
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A read returned this value (`None`: the reference does not exist).
    ReadOk(Option<Value>),
    /// A compare-and-set applied.
    CasOk,
    /// A compare-and-set was rejected because its precondition failed; the node reported the
    /// value it found. This is a read of the register at the operation's linearization point.
    CasFailed { current: Option<Value> },
    /// Timeout, crash, connection lost: the operation may or may not have taken effect, at any
    /// instant after its invocation.
    Unknown,
    /// Not completed yet. The checkers treat operations still pending as `Unknown`.
    Pending,
}

/// One operation: an invocation and, perhaps, its completion.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub id: OpId,
    pub client: u64,
    pub key: String,
    pub kind: OpKind,
    pub invoked_ns: u64,
    /// When the client learned the outcome, or gave up (`Outcome::Unknown`); `None` while
    /// pending.
    pub completed_ns: Option<u64>,
    pub outcome: Outcome,
    /// Position of the invocation among all events of the history (invocations and
    /// completions), which orders events that share a timestamp.
    pub invoked_seq: u64,
    /// Position of the completion among all events of the history; `None` while pending.
    pub completed_seq: Option<u64>,
}

impl Op {
    pub fn is_pending(&self) -> bool {
        self.outcome == Outcome::Pending
    }

    /// Whether the client learned a definite outcome (not `Unknown`, not `Pending`).
    pub fn is_definite(&self) -> bool {
        !matches!(self.outcome, Outcome::Unknown | Outcome::Pending)
    }
}

/// Operations in invocation order, with their completions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
    /// Invocations and completions recorded so far: the next event's sequence number.
    events_recorded: u64,
    /// The timestamp of the latest event: time must not go backwards.
    now_ns_last: u64,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` asked for `kind` on `key` at `now_ns`.
    pub fn invoke(&mut self, client: u64, key: impl Into<String>, kind: OpKind, now_ns: u64) -> OpId {
        assert!(self.ops.len() < HISTORY_OPS_MAX, "history: more than {HISTORY_OPS_MAX} operations");
        assert!(
            now_ns >= self.now_ns_last,
            "history: time went backwards: invocation at {now_ns} ns after an event at {} ns",
            self.now_ns_last
        );
        let id = self.ops.len() as OpId;
        let invoked_seq = self.next_seq();
        self.now_ns_last = now_ns;
        self.ops.push(Op {
            id,
            client,
            key: key.into(),
            kind,
            invoked_ns: now_ns,
            completed_ns: None,
            outcome: Outcome::Pending,
            invoked_seq,
            completed_seq: None,
        });
        id
    }

    /// Records the outcome of a pending operation at `now_ns`.
    ///
    /// Panics if the operation is not pending, if time went backwards, or if the outcome does
    /// not fit the operation (a read cannot report `CasOk`): those are workload bugs.
    pub fn complete(&mut self, op_id: OpId, outcome: Outcome, now_ns: u64) {
        assert!(
            now_ns >= self.now_ns_last,
            "history: time went backwards: completion at {now_ns} ns after an event at {} ns",
            self.now_ns_last
        );
        let seq = self.events_recorded;
        let op = self.op_mut(op_id);
        assert!(op.is_pending(), "history: op #{op_id} completed twice (already {:?})", op.outcome);
        assert!(now_ns >= op.invoked_ns, "history: op #{op_id} completed before its invocation");
        let fits = match (&op.kind, &outcome) {
            (_, Outcome::Pending) => false,
            (_, Outcome::Unknown) => true,
            (OpKind::Read, Outcome::ReadOk(_)) => true,
            (OpKind::Cas { .. }, Outcome::CasOk | Outcome::CasFailed { .. }) => true,
            _ => false,
        };
        assert!(fits, "history: op #{op_id} ({:?}) cannot complete with {outcome:?}", op.kind);
        op.outcome = outcome;
        op.completed_ns = Some(now_ns);
        op.completed_seq = Some(seq);
        self.events_recorded += 1;
        self.now_ns_last = now_ns;
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn op(&self, op_id: OpId) -> &Op {
        let op = usize::try_from(op_id).ok().and_then(|index| self.ops.get(index));
        let op = op.unwrap_or_else(|| panic!("history: no op #{op_id} (len {})", self.ops.len()));
        assert_eq!(op.id, op_id, "history: op ids are indexes");
        op
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Operations never completed (the checkers count them as `Unknown`).
    pub fn pending(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(|op| op.is_pending())
    }

    /// Operations grouped by key, each group in invocation order.
    pub fn by_key(&self) -> BTreeMap<String, Vec<&Op>> {
        let mut by_key: BTreeMap<String, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            by_key.entry(op.key.clone()).or_default().push(op);
        }
        by_key
    }

    /// A deterministic hash of every operation, in order, for trace hashes: equal histories
    /// give equal fingerprints on every platform and run (FNV-1a over a length-prefixed
    /// encoding, independent of `std`'s randomly seeded hashers).
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = Fnv1a::new();
        hasher.write_u64(self.ops.len() as u64);
        for op in &self.ops {
            hasher.write_u64(op.id);
            hasher.write_u64(op.client);
            hasher.write_bytes(op.key.as_bytes());
            match &op.kind {
                OpKind::Read => hasher.write_u64(0),
                OpKind::Cas { expected, new } => {
                    hasher.write_u64(1);
                    match expected {
                        Expected::Any => hasher.write_u64(0),
                        Expected::MustNotExist => hasher.write_u64(1),
                        Expected::Value(value) => {
                            hasher.write_u64(2);
                            hasher.write_u64(*value);
                        }
                    }
                    hasher.write_option(*new);
                }
            }
            hasher.write_u64(op.invoked_ns);
            hasher.write_option(op.completed_ns);
            match &op.outcome {
                Outcome::ReadOk(value) => {
                    hasher.write_u64(0);
                    hasher.write_option(*value);
                }
                Outcome::CasOk => hasher.write_u64(1),
                Outcome::CasFailed { current } => {
                    hasher.write_u64(2);
                    hasher.write_option(*current);
                }
                Outcome::Unknown => hasher.write_u64(3),
                Outcome::Pending => hasher.write_u64(4),
            }
            hasher.write_u64(op.invoked_seq);
            hasher.write_option(op.completed_seq);
        }
        hasher.finish()
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.events_recorded;
        self.events_recorded += 1;
        seq
    }

    fn op_mut(&mut self, op_id: OpId) -> &mut Op {
        let len = self.ops.len();
        let op = usize::try_from(op_id).ok().and_then(|index| self.ops.get_mut(index));
        let op = op.unwrap_or_else(|| panic!("history: no op #{op_id} (len {len})"));
        assert_eq!(op.id, op_id, "history: op ids are indexes");
        op
    }
}

/// 64-bit FNV-1a: tiny, stable across platforms and releases, good enough to tell traces apart.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn write_byte(&mut self, byte: u8) {
        self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Self::PRIME);
    }

    fn write_u64(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.write_byte(byte);
        }
    }

    /// Length first, so that `("ab", "c")` and `("a", "bc")` hash differently.
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        for &byte in bytes {
            self.write_byte(byte);
        }
    }

    fn write_option(&mut self, value: Option<u64>) {
        match value {
            None => self.write_u64(0),
            Some(value) => {
                self.write_u64(1);
                self.write_u64(value);
            }
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn fmt_value(value: Option<Value>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match value {
        None => write!(f, "none"),
        Some(value) => write!(f, "{value}"),
    }
}

/// Formats a register value: `none` or the token.
pub struct DisplayValue(pub Option<Value>);

impl fmt::Display for DisplayValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_value(self.0, f)
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Any => write!(f, "any"),
            Expected::MustNotExist => write!(f, "must-not-exist"),
            Expected::Value(value) => write!(f, "{value}"),
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Read => write!(f, "read"),
            OpKind::Cas { expected, new } => write!(f, "cas({expected} -> {})", DisplayValue(*new)),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::ReadOk(value) => fmt_value(*value, f),
            Outcome::CasOk => write!(f, "ok"),
            Outcome::CasFailed { current } => write!(f, "failed(current {})", DisplayValue(*current)),
            Outcome::Unknown => write!(f, "unknown"),
            Outcome::Pending => write!(f, "pending"),
        }
    }
}

impl fmt::Display for Op {
    /// `#7 client 2 cas(5 -> 6) = ok [1000, 2000] ns`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} client {} {} = {} [{}, ", self.id, self.client, self.kind, self.outcome, self.invoked_ns)?;
        match self.completed_ns {
            Some(completed_ns) => write!(f, "{completed_ns}] ns"),
            None => write!(f, "..) ns"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cas(expected: Expected, new: Option<Value>) -> OpKind {
        OpKind::Cas { expected, new }
    }

    #[test]
    fn records_invocations_and_completions_in_order() {
        let mut history = History::new();
        let a = history.invoke(1, "r:refs/heads/a", cas(Expected::MustNotExist, Some(1)), 10);
        let b = history.invoke(2, "r:refs/heads/b", OpKind::Read, 10);
        history.complete(b, Outcome::ReadOk(None), 10);
        history.complete(a, Outcome::CasOk, 15);
        let c = history.invoke(1, "r:refs/heads/a", OpKind::Read, 20);

        assert_eq!((a, b, c), (0, 1, 2));
        let ops = history.ops();
        assert_eq!((ops[0].invoked_seq, ops[0].completed_seq), (0, Some(3)));
        assert_eq!((ops[1].invoked_seq, ops[1].completed_seq), (1, Some(2)));
        assert_eq!((ops[2].invoked_seq, ops[2].completed_seq), (4, None));
        assert_eq!(ops[0].completed_ns, Some(15));
        assert!(history.op(c).is_pending());
        assert_eq!(history.pending().map(|op| op.id).collect::<Vec<_>>(), vec![c]);

        let by_key = history.by_key();
        assert_eq!(by_key.keys().collect::<Vec<_>>(), vec!["r:refs/heads/a", "r:refs/heads/b"]);
        assert_eq!(by_key["r:refs/heads/a"].iter().map(|op| op.id).collect::<Vec<_>>(), vec![a, c]);
        assert_eq!(history.op(a).to_string(), "#0 client 1 cas(must-not-exist -> 1) = ok [10, 15] ns");
        assert_eq!(history.op(c).to_string(), "#2 client 1 read = pending [20, ..) ns");
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let build = |read_value: Option<Value>| {
            let mut history = History::new();
            let a = history.invoke(1, "k", cas(Expected::Any, Some(7)), 1);
            history.complete(a, Outcome::CasOk, 2);
            let b = history.invoke(1, "k", OpKind::Read, 3);
            history.complete(b, Outcome::ReadOk(read_value), 4);
            history
        };
        assert_eq!(build(Some(7)).fingerprint(), build(Some(7)).fingerprint());
        assert_ne!(build(Some(7)).fingerprint(), build(None).fingerprint());
        assert_ne!(build(Some(7)).fingerprint(), History::new().fingerprint());
        // Pinned: the fingerprint goes into trace hashes compared across runs and machines.
        assert_eq!(build(Some(7)).fingerprint(), PINNED_FINGERPRINT);
    }

    const PINNED_FINGERPRINT: u64 = 0x22fe_1d17_b6eb_37fe;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        let hash = |bytes: &[u8]| {
            let mut hasher = Fnv1a::new();
            bytes.iter().for_each(|&byte| hasher.write_byte(byte));
            hasher.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    #[should_panic(expected = "completed twice")]
    fn completing_twice_panics() {
        let mut history = History::new();
        let a = history.invoke(1, "k", OpKind::Read, 1);
        history.complete(a, Outcome::ReadOk(None), 2);
        history.complete(a, Outcome::ReadOk(None), 3);
    }

    #[test]
    #[should_panic(expected = "time went backwards")]
    fn time_going_backwards_panics() {
        let mut history = History::new();
        let a = history.invoke(1, "k", OpKind::Read, 5);
        history.complete(a, Outcome::ReadOk(None), 4);
    }

    #[test]
    #[should_panic(expected = "cannot complete with")]
    fn outcome_must_fit_kind() {
        let mut history = History::new();
        let a = history.invoke(1, "k", OpKind::Read, 5);
        history.complete(a, Outcome::CasOk, 6);
    }
}
