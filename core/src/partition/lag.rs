//! How far behind in time each member is, as its leader sees it: the age of the oldest entry
//! it lacks, and when the leader last heard from it. Entries tell how much a follower lacks;
//! time tells whether that matters (ten entries behind a busy leader is normal, one entry for
//! a minute is not).
//!
//! Kept on the leader only, and small: a sample of when the leader appended, taken once per
//! input that appended and pruned as every member catches up (an idle or quiesced partition
//! keeps none), at most `SAMPLES_MAX`; when full, every other sample is dropped, so the
//! samples still span the whole backlog, with coarser resolution.

use crate::env::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// Samples kept of when entries were appended (16 bytes each).
const SAMPLES_MAX: usize = 64;

#[derive(Debug, Default)]
pub(super) struct LeaderLag {
    /// (last index after an input that appended, that input's time), oldest first.
    appended: VecDeque<(u64, Instant)>,
    /// When this replica last heard from each member, by peer id (a handful: a vector is
    /// smaller than a map, and every loaded leader keeps one).
    heard: Vec<(u64, Instant)>,
    /// When this replica became leader: entries it did not append itself count from then.
    since: Option<Instant>,
}

impl LeaderLag {
    pub(super) fn became_leader(&mut self, now: Instant) {
        *self = LeaderLag { since: Some(now), ..LeaderLag::default() };
    }

    pub(super) fn stepped_down(&mut self) {
        *self = LeaderLag::default();
    }

    /// The leader's log ends at `last_index` after an input at `now`.
    pub(super) fn appended(&mut self, last_index: u64, now: Instant) {
        if self.since.is_none() || self.appended.back().is_some_and(|&(index, _)| index >= last_index) {
            return;
        }
        self.appended.push_back((last_index, now));
        if self.appended.len() > SAMPLES_MAX {
            // Keep the oldest (it dates the longest backlog) and every other one after it.
            let mut keep = false;
            self.appended.retain(|_| {
                keep = !keep;
                keep
            });
        }
        debug_assert!(self.appended.len() <= SAMPLES_MAX);
    }

    /// Every member has every entry through `matched_min`: their samples are not needed.
    pub(super) fn prune(&mut self, matched_min: u64) {
        while self.appended.front().is_some_and(|&(index, _)| index <= matched_min) {
            self.appended.pop_front();
        }
        if self.appended.is_empty() && self.appended.capacity() > 0 {
            self.appended = VecDeque::new();
        }
    }

    pub(super) fn heard_from(&mut self, peer: u64, now: Instant) {
        if self.since.is_none() {
            return;
        }
        match self.heard.iter_mut().find(|(id, _)| *id == peer) {
            Some((_, at)) => *at = now,
            None => self.heard.push((peer, now)),
        }
    }

    /// Forgets peers that are no longer members (`is_member` says which are).
    pub(super) fn retain_members(&mut self, is_member: impl Fn(u64) -> bool) {
        self.heard.retain(|&(id, _)| is_member(id));
    }

    /// How long ago the leader last heard from `peer` (`None`: not since it became leader).
    pub(super) fn last_heard(&self, peer: u64, now: Instant) -> Option<Duration> {
        self.heard.iter().find(|(id, _)| *id == peer).map(|&(_, at)| now.saturating_duration_since(at))
    }

    /// How far behind in time a member that has everything through `matched` is, the log
    /// ending at `last_index`: the age of the first entry it lacks (at least; samples may be
    /// coarser than entries).
    pub(super) fn behind(&self, matched: u64, last_index: u64, now: Instant) -> Duration {
        let Some(since) = self.since else { return Duration::ZERO };
        if matched >= last_index {
            return Duration::ZERO;
        }
        let appended = self.appended.iter().find(|&&(index, _)| index > matched).map_or(since, |&(_, at)| at);
        now.saturating_duration_since(appended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn a_member_is_as_far_behind_as_the_oldest_entry_it_lacks() {
        let mut lag = LeaderLag::default();
        lag.appended(5, at(0));
        assert_eq!(lag.behind(0, 5, at(100)), Duration::ZERO, "not a leader: nothing measured");
        lag.became_leader(at(1_000));
        assert_eq!(lag.behind(4, 5, at(1_500)), Duration::from_millis(500), "entries before leading count from then");
        lag.appended(6, at(2_000));
        lag.appended(9, at(3_000));
        assert_eq!(lag.behind(9, 9, at(4_000)), Duration::ZERO);
        assert_eq!(lag.behind(6, 9, at(4_000)), Duration::from_millis(1_000), "lacks 7..=9, appended at 3 s");
        assert_eq!(lag.behind(5, 9, at(4_000)), Duration::from_millis(2_000), "lacks 6, appended at 2 s");
        lag.prune(6);
        assert_eq!(lag.behind(6, 9, at(4_000)), Duration::from_millis(1_000), "pruning keeps what is lacked");
        lag.prune(9);
        assert_eq!(lag.appended.capacity(), 0, "caught up: nothing kept");
        lag.stepped_down();
        assert_eq!(lag.behind(0, 9, at(9_000)), Duration::ZERO);
    }

    #[test]
    fn samples_are_bounded_and_still_date_the_oldest_backlog() {
        let mut lag = LeaderLag::default();
        lag.became_leader(at(0));
        for i in 1..=10_000 {
            lag.appended(i, at(i));
        }
        assert!(lag.appended.len() <= SAMPLES_MAX);
        assert_eq!(lag.behind(0, 10_000, at(20_000)), Duration::from_millis(19_999), "the oldest sample is kept");
        let behind = lag.behind(9_000, 10_000, at(20_000));
        assert!(behind <= Duration::from_millis(10_999) && behind >= Duration::from_millis(10_000), "{behind:?}");
    }

    #[test]
    fn the_leader_remembers_when_it_last_heard_from_each_member() {
        let mut lag = LeaderLag::default();
        lag.heard_from(2, at(10));
        assert_eq!(lag.last_heard(2, at(20)), None, "a follower does not keep track");
        lag.became_leader(at(100));
        lag.heard_from(2, at(150));
        assert_eq!(lag.last_heard(2, at(400)), Some(Duration::from_millis(250)));
        assert_eq!(lag.last_heard(3, at(400)), None);
        lag.heard_from(2, at(300));
        lag.heard_from(3, at(300));
        assert_eq!(lag.heard.len(), 2, "one record per member");
        lag.retain_members(|id| id == 3);
        assert_eq!(lag.last_heard(2, at(400)), None, "a member removed is forgotten");
        assert_eq!(lag.last_heard(3, at(400)), Some(Duration::from_millis(100)));
    }
}
