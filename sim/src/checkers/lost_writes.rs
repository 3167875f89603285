//! No acknowledged write is lost: once a compare-and-set has been acknowledged, no operation
//! that starts after the acknowledgement observes the register as it was before that write.
//!
//! Linearizability implies this, but the linearizability search reports only that no order
//! exists; this checker names the write that vanished and the operation that saw it missing,
//! which is what a durability bug (acknowledging before fsync, before commit) looks like.
//!
//! # The rule
//!
//! Values are unique per write (the workload writes a fresh object for every compare-and-set).
//! Take an observation `O` of a key (a read, or a failed compare-and-set's `current`) that saw
//! value `v`, written by operation `P`. If `P` was acknowledged (`CasOk`), it took effect before
//! it returned. Any other acknowledged write `W` invoked after `P` returned and acknowledged
//! before `O` was invoked took effect between the two, so `O` cannot see `v` any more: `W` was
//! lost. If `O` saw nothing (`None`), any acknowledged write that returned before `O` was
//! invoked was lost, unless the key has deletes (a write of `None`), which this rule leaves to
//! the linearizability checker. Writes whose outcome is unknown may take effect at any later
//! instant, so an observation of their value proves nothing here and is skipped; so is an
//! observation of a value nobody wrote, or whose write failed (phantoms are the
//! linearizability checker's).
//!
//! Real-time order is the history's event order (`invoked_seq`, `completed_seq`), as in the
//! linearizability checker. The cost is O(observations × acknowledged writes) per key.

use crate::history::{History, Op, OpKind, Outcome, Value};
use std::collections::BTreeMap;
use std::fmt;

/// An acknowledged write that a later observation did not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWrite {
    pub key: String,
    /// The acknowledged write that was lost.
    pub write: u64,
    pub write_value: Value,
    pub write_completed_ns: u64,
    /// The observation that proves it.
    pub observation: u64,
    pub observation_invoked_ns: u64,
    /// What the observation saw, and the acknowledged write that had put it there (`None`
    /// when the register was seen empty).
    pub seen: Option<Value>,
    pub seen_writer: Option<u64>,
}

impl fmt::Display for LostWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {}: op {} (write of {}) was acknowledged at {} ms, yet op {} (invoked at {} ms) saw ",
            self.key,
            self.write,
            self.write_value,
            self.write_completed_ns / 1_000_000,
            self.observation,
            self.observation_invoked_ns / 1_000_000,
        )?;
        match (self.seen, self.seen_writer) {
            (Some(value), Some(writer)) => {
                write!(f, "{value}, written by op {writer}, which was acknowledged before op {} began", self.write)
            }
            _ => write!(f, "the reference missing"),
        }
    }
}

/// What the check looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub observations: usize,
    pub acknowledged_writes: usize,
}

/// At most this many lost writes are reported per key (the first is what matters).
const LOST_PER_KEY_MAX: usize = 3;

/// Checks every key of `history`; returns what was checked, or every lost write found (at most
/// a few per key).
pub fn check_no_lost_writes(history: &History) -> Result<Report, Vec<LostWrite>> {
    let mut report = Report::default();
    let mut lost = Vec::new();
    for (key, ops) in history.by_key() {
        let found = check_key(&key, &ops, &mut report);
        lost.extend(found);
    }
    if lost.is_empty() {
        Ok(report)
    } else {
        Err(lost)
    }
}

/// An acknowledged write, with its value and when it returned.
struct Acknowledged<'a> {
    op: &'a Op,
    value: Value,
    completed_seq: u64,
}

fn check_key(key: &str, ops: &[&Op], report: &mut Report) -> Vec<LostWrite> {
    let mut has_delete = false;
    let mut writer_of: BTreeMap<Value, &Op> = BTreeMap::new();
    let mut acknowledged: Vec<Acknowledged> = Vec::new();
    for &op in ops {
        if let OpKind::Cas { new, .. } = &op.kind {
            match new {
                None => has_delete = true,
                Some(value) => {
                    let previous = writer_of.insert(*value, op);
                    assert!(previous.is_none(), "lost writes: value {value} of key {key} written twice");
                    if op.outcome == Outcome::CasOk {
                        let completed_seq = op.completed_seq.expect("an acknowledged op completed");
                        acknowledged.push(Acknowledged { op, value: *value, completed_seq });
                    }
                }
            }
        }
    }
    report.acknowledged_writes += acknowledged.len();
    let mut lost = Vec::new();
    for &observation in ops {
        let seen = match &observation.outcome {
            Outcome::ReadOk(value) => *value,
            Outcome::CasFailed { current } => *current,
            _ => continue,
        };
        report.observations += 1;
        // Acknowledged writes that must have taken effect after `after_seq` and before this
        // observation began.
        let (after_seq, seen_writer) = match seen {
            None if has_delete => continue,
            None => (None, None),
            Some(value) => match writer_of.get(&value) {
                Some(writer) if writer.outcome == Outcome::CasOk => {
                    (Some(writer.completed_seq.expect("an acknowledged op completed")), Some(*writer))
                }
                // Unknown, pending, failed or nobody's: nothing to conclude here.
                _ => continue,
            },
        };
        let vanished = acknowledged.iter().find(|w| {
            w.completed_seq < observation.invoked_seq && after_seq.is_none_or(|after| w.op.invoked_seq > after)
        });
        if let Some(w) = vanished {
            lost.push(LostWrite {
                key: key.to_owned(),
                write: w.op.id,
                write_value: w.value,
                write_completed_ns: w.op.completed_ns.expect("an acknowledged op completed"),
                observation: observation.id,
                observation_invoked_ns: observation.invoked_ns,
                seen,
                seen_writer: seen_writer.map(|op| op.id),
            });
            if lost.len() >= LOST_PER_KEY_MAX {
                break;
            }
        }
    }
    lost
}
