//! How a partition's store lays out its rows (`store::Format`), decided by the partition's log,
//! so that every replica lays out each row alike.
//!
//! A new partition's bootstrap log ends with an empty normal entry whose context marks
//! [`Format::LATEST`]: from there every replica's store uses it. A partition created by an
//! earlier build keeps the format its log switched to last until a leader proposes the latest
//! one. A replica knows its partition's format if it created it, its store said so when it
//! opened, its log held the entry committed, it has handed the entry to the store since, or it
//! installed a snapshot whose rows say so; a leader that does not know its partition has the
//! latest format proposes the entry, at most once per term. A redundant one (from a leader
//! that could not tell yet, such as one whose log holds the entry not yet known to be
//! committed) changes nothing when applied.
//!
//! Each format keeps what the one before changed: a switch to the latest applies every change
//! the partition has not had. What a change leaves is the store's business (objects placed by
//! id stay where they are; dedup rows are rewritten).
//!
//! With Raft off nothing is proposed: such a partition switches once Raft is on again.

use super::Partition;
use crate::persist::{EntryKind, RaftMode, RecoveredPartition};
use crate::store::Format;

/// The context of the entry that switches a partition to [`Format::PlacedByIndex`] (which
/// builds before the dedup ring bootstrapped and proposed).
const PLACED_BY_INDEX_MARK: &[u8] = b"cohort-place-by-index";
/// The context of the entry that switches a partition to [`Format::DedupRing`].
const DEDUP_RING_MARK: &[u8] = b"cohort-format-dedup-ring";

/// The context of the entry that switches a partition to `format`.
pub(super) fn mark(format: Format) -> Option<&'static [u8]> {
    match format {
        Format::Original => None,
        Format::PlacedByIndex => Some(PLACED_BY_INDEX_MARK),
        Format::DedupRing => Some(DEDUP_RING_MARK),
    }
}

/// The format an entry switches its partition to, if it is such an entry.
pub(super) fn switch_of(kind_is_normal: bool, data: &[u8], context: &[u8]) -> Option<Format> {
    if !kind_is_normal || !data.is_empty() {
        return None;
    }
    [Format::PlacedByIndex, Format::DedupRing].into_iter().find(|format| mark(*format) == Some(context))
}

/// The format a replica opening knows its partition has: its store's, or a later one that its
/// log holds committed past what the store applied (a new replica's committed bootstrap log
/// included).
pub(super) fn at_open(recovered: &RecoveredPartition, applied: u64, stored: Format) -> Format {
    let commit = recovered.hard_state.commit;
    recovered
        .entries
        .iter()
        .filter(|entry| entry.index > applied && entry.index <= commit)
        .filter_map(|entry| switch_of(entry.kind == EntryKind::Normal, &entry.data, &entry.context))
        .fold(stored, Format::max)
}

impl Partition {
    /// On a leader not known to have the latest format: proposes the entry that switches to it,
    /// once per term. Called before each Ready is taken, so the entry goes out with it.
    pub(super) fn propose_format_if_unknown(&mut self) {
        let term = self.raw.raft.term;
        if self.format == Format::LATEST
            || self.mode != RaftMode::On
            || !self.is_leader()
            || self.format_proposed_in == Some(term)
            || self.switching.is_some()
            || self.fatal.is_some()
        {
            return;
        }
        self.format_proposed_in = Some(term);
        let latest = mark(Format::LATEST).expect("the latest format has a mark").to_vec();
        match self.raw.propose(latest, Vec::new()) {
            Ok(()) => tracing::info!(partition = %self.config.partition, term, from = ?self.format,
                "proposed switching to the latest store format"),
            Err(error) => tracing::warn!(partition = %self.config.partition, term, %error,
                "could not propose switching to the latest store format; a later leader will"),
        }
    }
}
