//! Where the store places a partition's whole objects (`store::Placement`), decided by the
//! partition's log, so that every replica places each object alike.
//!
//! A new partition's bootstrap log ends with an empty normal entry whose context is
//! [`PLACE_BY_INDEX_MARK`]: from there every replica's store places the objects it stores by
//! apply index. A partition created by an earlier build places them by id until a leader
//! proposes that entry. A replica knows its partition places by index if it created it with
//! that entry, its store said so when it opened, its log held the entry committed, it has
//! handed the entry to the store since, or it installed a snapshot whose rows say so; a leader
//! that does not know it proposes the entry, at most once per term. A redundant one (from a
//! leader that could not tell yet, such as one whose log holds the entry not yet known to be
//! committed) changes nothing when applied.
//!
//! The objects already placed by id stay where they are.
//!
//! With Raft off nothing is proposed: such a partition switches once Raft is on again.

use super::Partition;
use crate::persist::{EntryKind, RaftMode, RecoveredPartition};
use crate::store::Placement;

/// The context of the entry that makes a partition place objects by index.
pub(super) const PLACE_BY_INDEX_MARK: &[u8] = b"cohort-place-by-index";

/// Whether an entry is the one that places objects by index.
pub(super) fn is_switch(kind_is_normal: bool, data: &[u8], context: &[u8]) -> bool {
    kind_is_normal && data.is_empty() && context == PLACE_BY_INDEX_MARK
}

/// Where a replica opening knows its partition places objects: by index if its store said so
/// or its log holds the entry committed past what the store applied (a new replica's
/// committed bootstrap log included).
pub(super) fn at_open(recovered: &RecoveredPartition, applied: u64, stored: Placement) -> Placement {
    let commit = recovered.hard_state.commit;
    let committed_switch = recovered.entries.iter().any(|entry| {
        entry.index > applied
            && entry.index <= commit
            && is_switch(entry.kind == EntryKind::Normal, &entry.data, &entry.context)
    });
    match committed_switch {
        true => Placement::ByIndex,
        false => stored,
    }
}

impl Partition {
    /// On a leader not known to place objects by index: proposes the entry that makes it,
    /// once per term. Called before each Ready is taken, so the entry goes out with it.
    pub(super) fn propose_placement_if_unknown(&mut self) {
        let term = self.raw.raft.term;
        if self.placement == Placement::ByIndex
            || self.mode != RaftMode::On
            || !self.is_leader()
            || self.placement_proposed_in == Some(term)
            || self.switching.is_some()
            || self.fatal.is_some()
        {
            return;
        }
        self.placement_proposed_in = Some(term);
        match self.raw.propose(PLACE_BY_INDEX_MARK.to_vec(), Vec::new()) {
            Ok(()) => tracing::info!(partition = %self.config.partition, term, "proposed placing objects by index"),
            Err(error) => tracing::warn!(partition = %self.config.partition, term, %error,
                "could not propose placing objects by index; a later leader will"),
        }
    }
}
