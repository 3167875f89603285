//! Writes proposed by this replica while it led, waiting for their entry to be applied.

use crate::ids::RequestId;
use crate::limits::PROPOSALS_PENDING_MAX;
use std::collections::BTreeMap;

/// Pending proposals by the log index their entry was appended at. An entry's (index, term)
/// names it uniquely: if the entry applied at that index has another term, the proposal was
/// overwritten by a new leader and will never apply.
#[derive(Debug, Default)]
pub struct Proposals {
    by_index: BTreeMap<u64, (u64, RequestId)>,
}

/// What became of a proposal once its index was applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Applied(RequestId),
    Overwritten(RequestId),
}

impl Proposals {
    pub fn is_full(&self) -> bool {
        self.by_index.len() >= PROPOSALS_PENDING_MAX
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }

    /// Records a proposal; returns the proposal it displaces, if any. This replica may lead
    /// again in a later term and append at an index it had proposed at before: the old entry
    /// was then overwritten and will never apply.
    pub fn insert(&mut self, index: u64, term: u64, request: RequestId) -> Option<RequestId> {
        assert!(!self.is_full(), "proposals are bounded by PROPOSALS_PENDING_MAX");
        let old = self.by_index.insert(index, (term, request));
        old.map(|(old_term, old_request)| {
            assert!(old_term < term, "two proposals at index {index} in term {term}");
            old_request
        })
    }

    /// The entry at `index` with `term` was applied: settle the proposal waiting there, if any.
    pub fn settle(&mut self, index: u64, term: u64) -> Option<Fate> {
        // Any proposal below `index` was settled when its own index applied.
        debug_assert!(self.by_index.range(..index).next().is_none(), "proposals settle in order");
        let (proposed_term, request) = self.by_index.remove(&index)?;
        Some(if proposed_term == term { Fate::Applied(request) } else { Fate::Overwritten(request) })
    }

    /// Takes every pending proposal (the partition is stopping).
    pub fn drain(&mut self) -> Vec<RequestId> {
        std::mem::take(&mut self.by_index).into_values().map(|(_, r)| r).collect()
    }
}
