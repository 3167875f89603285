//! Handling one raft-rs `Ready`, in the order its contract requires, and what comes back from
//! the store for the committed entries it handed out. This is the only place that calls
//! `ready()` and `advance_append_async`.
//!
//! For each Ready, in order:
//! 1. messages sendable now (a leader's appends go out before its own fsync: Raft thesis
//!    10.2.1) are queued for sending;
//! 2. a snapshot Raft accepted (already installed in the store, see
//!    `Partition::handle_snapshot_received`), new entries and the hard state are copied into
//!    `PartitionStorage` (raft-rs reads them from there once `on_persist_ready` is called) and
//!    handed to the log as one `Persist`;
//! 3. `persisted_messages` (votes, append responses) wait until that `Persist` is durable:
//!    they promise what the log holds;
//! 4. `advance_append_async`;
//! 5. committed entries (raft-rs hands out only entries durable here) go to the store as one
//!    `Apply`; membership changes among them are applied to Raft at once, so that the store
//!    records the membership with the index; read states are recorded.
//!
//! The store answers through `handle_applied`, in order; only then are proposals answered,
//! reads served and raft-rs told what is applied (`advance_apply_to`).

use super::proposals::Fate;
use super::{raft_mode, reads, Output, Partition, Response};
use crate::bugs::{self, Bug};
use crate::persist::{LogPosition, LogWrite, RaftMode};
use crate::store::{AppliedOutcome, ApplyEntry, ApplyKind, DirectoryChange};
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};

/// Readies handled per input before giving control back; each Ready either persists
/// something or applies something, so a handful is the most a single input produces.
const READIES_PER_INPUT_MAX: usize = 64;

impl Partition {
    pub(super) fn process_ready(&mut self) {
        if self.installing.is_some() {
            // The Ready would record a snapshot the store does not hold yet.
            return;
        }
        for _ in 0..READIES_PER_INPUT_MAX {
            if !self.raw.has_ready() {
                return;
            }
            self.handle_one_ready();
        }
        assert!(!self.raw.has_ready(), "a Ready loop runs at most {READIES_PER_INPUT_MAX} times");
    }

    fn handle_one_ready(&mut self) {
        let mut ready = self.raw.ready();
        let raft_number = ready.number();
        let number = self.raft_numbers_from + raft_number;
        self.last_ready_number = number;

        for message in ready.take_messages() {
            self.send(message);
        }
        let mut write = LogWrite::new(self.config.partition);
        if !ready.snapshot().is_empty() {
            self.record_snapshot(ready.snapshot(), &mut write);
        }
        let store = self.raw.mut_store();
        write.entries = store.append(ready.entries());
        let hard_state_changed = ready.hs().is_some();
        if let Some(hard_state) = ready.hs() {
            store.set_hard_state(hard_state);
        }
        let mut persisted_messages = ready.take_persisted_messages();
        if bugs::is_active(Bug::ForgetVote) {
            // Planted: votes leave before the hard state recording them is durable.
            let (votes, rest): (Vec<_>, Vec<_>) = persisted_messages
                .into_iter()
                .partition(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgRequestVoteResponse);
            votes.into_iter().for_each(|m| self.send(m));
            persisted_messages = rest;
        }
        let premature = if bugs::is_active(Bug::ApplyUncommitted) && self.is_leader() {
            // Planted: the leader applies what it just appended, before any quorum has it.
            ready.entries().clone()
        } else {
            Vec::new()
        };
        let committed = ready.take_committed_entries();
        let read_states = ready.take_read_states();
        self.raw.advance_append_async(ready);

        self.hand_out_committed(premature);
        self.hand_out_committed(committed);
        if self.conf_state_dirty {
            write.conf_state = Some(self.raw.store().conf_state());
            self.conf_state_dirty = false;
        }
        self.log_hard_state(&mut write, hard_state_changed);
        for state in read_states {
            if let Some(context) = reads::context_from_bytes(&state.request_ctx) {
                self.reads.confirmed(context, state.index);
            }
        }
        self.serve_ready_reads();

        if write.is_empty() && self.unpersisted.is_empty() {
            // Nothing new to make durable and nothing earlier still in flight: what these
            // messages promise is already on disk.
            for message in persisted_messages {
                self.send(message);
            }
            self.raw.on_persist_ready(raft_number);
        } else {
            write.assert_well_formed();
            self.unpersisted.push_back((number, persisted_messages));
            self.outputs.push_back(Output::Persist { ready_number: number, write });
        }
    }

    /// Puts the hard state in `write` if it must be durable with it. Raft's commit index is
    /// volatile state (a restarted replica learns it again, and its store's applied position
    /// bounds it from below), so a change of the commit alone is not worth a log write and an
    /// fsync of its own: it rides with the next write that has something else to make
    /// durable. A term or vote always goes at once (messages wait for it). The directory
    /// logs every change: a restart replays what its durable commit covers without acting on
    /// it again, and a commit known durable at once keeps that window small.
    fn log_hard_state(&mut self, write: &mut LogWrite, changed: bool) {
        let current = self.raw.store().hard_state();
        if current == self.logged_hard_state {
            return;
        }
        let vote_changed = (current.term, current.vote) != (self.logged_hard_state.term, self.logged_hard_state.vote);
        let piggyback = !write.is_empty();
        if vote_changed || piggyback || (changed && self.config.partition == crate::ids::DIRECTORY) {
            write.hard_state = Some(current);
            self.logged_hard_state = current;
        }
    }

    /// Tells raft-rs how far the state machine has applied. A snapshot's state counts as
    /// applied only once raft-rs knows the snapshot is durable.
    pub(super) fn advance_raft_applied(&mut self) {
        if self.mode == RaftMode::Off {
            return;
        }
        let log = &self.raw.raft.raft_log;
        let mut applied = self.applied.index.min(log.persisted);
        if bugs::is_active(Bug::ApplyUncommitted) {
            // raft-rs refuses an applied index past commit; the planted bug hides it.
            applied = applied.min(log.committed);
        }
        if applied > log.applied {
            self.raw.advance_apply_to(applied);
        }
    }

    /// Raft accepted a snapshot, which the store already holds: the log restarts after it.
    fn record_snapshot(&mut self, snapshot: &raft::eraftpb::Snapshot, write: &mut LogWrite) {
        let metadata = snapshot.get_metadata();
        let meta = *self.installed_snapshot.take().expect("raft records only the snapshot the store installed");
        assert_eq!((meta.position.index, meta.position.term), (metadata.index, metadata.term));
        assert_eq!(meta.conf_state, (metadata.get_conf_state()).into(), "the file's membership is raft's");
        write.snapshot = Some((meta.position, meta.conf_state.clone()));
        self.raw.mut_store().apply_snapshot(meta);
        self.conf_state_dirty = false;
        if self.config.partition == crate::ids::DIRECTORY && self.directory_ready {
            // The directory jumped over entries whose changes were never reported one by one:
            // the node reconciles with the whole of it again.
            self.outputs.push_back(Output::DirectoryReady);
        }
    }

    /// Hands committed entries to the store as one `Apply`, in order.
    pub(super) fn hand_out_committed(&mut self, entries: Vec<Entry>) {
        let mut batch = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.index;
            if bugs::is_active(Bug::ApplyUncommitted) && index <= self.applying {
                continue; // Handed out early by the planted bug.
            }
            assert_eq!(index, self.applying + 1, "entries are handed to the store in order, once");
            self.applying = index;
            if let Some(observer) = &self.config.observer {
                observer.applied(self.config.node, self.config.partition, index, entry.term, &entry.data);
            }
            let kind = match entry.get_entry_type() {
                // A new leader's empty entry, a switch of Raft mode, or one of the store's
                // format (`format.rs`).
                EntryType::EntryNormal if entry.data.is_empty() => {
                    match raft_mode::switch_of(true, &entry.data, &entry.context) {
                        Some(mode) => ApplyKind::RaftMode(mode),
                        None => match super::format::switch_of(true, &entry.data, &entry.context) {
                            Some(format) => {
                                self.format = self.format.max(format);
                                ApplyKind::Format(format)
                            }
                            None => ApplyKind::Noop,
                        },
                    }
                }
                EntryType::EntryNormal if self.planted_skip(index) => ApplyKind::Noop,
                EntryType::EntryNormal => ApplyKind::Command(entry.data.to_vec()),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let outcome = self.apply_conf_change(&entry);
                    if outcome.is_ok() {
                        self.announce_members();
                    }
                    ApplyKind::Membership(outcome)
                }
            };
            batch.push(ApplyEntry { position: LogPosition { index, term: entry.term }, kind });
        }
        if !batch.is_empty() {
            let bytes = batch
                .iter()
                .map(|e| match &e.kind {
                    ApplyKind::Command(data) => data.len() as u64,
                    _ => 0,
                })
                .sum();
            self.apply_batches_in_flight.push_back(bytes);
            self.apply_bytes_in_flight += bytes;
            self.outputs.push_back(Output::Apply(batch));
        }
    }

    /// Whether the planted `skip-apply` bug skips this entry: on a follower, one entry in 16
    /// (applied as a no-op: it counts as applied, but nothing changed).
    fn planted_skip(&self, index: u64) -> bool {
        bugs::is_active(Bug::SkipApply) && !self.is_leader() && index.is_multiple_of(16)
    }

    /// Answers for an entry the store applied at `position`.
    pub(super) fn settle_applied(&mut self, position: LogPosition, outcome: AppliedOutcome) {
        let response = match outcome {
            AppliedOutcome::Noop => Response::Unknown,
            AppliedOutcome::Undecodable(error) => {
                // Every replica decodes the same committed bytes the same way, so skipping
                // keeps replicas equal; but our leader encoded this entry, so it means a
                // version skew or a bug. Say so loudly.
                tracing::error!(partition = %self.config.partition, index = position.index, %error,
                    "committed entry does not decode; applied as a no-op");
                Response::Unknown
            }
            AppliedOutcome::Membership(Ok(conf_state)) => Response::Membership(conf_state),
            AppliedOutcome::Membership(Err(reason)) => Response::Refused(reason),
            AppliedOutcome::RaftMode(mode) => Response::RaftMode(mode),
            AppliedOutcome::Command { client, seq, result, directory } => {
                if let Some(change) = directory.filter(|_| self.is_live(position.index)) {
                    self.outputs.push_back(match change {
                        DirectoryChange::Allocated { partition, info } => {
                            let campaign = first_leader(partition, &info.voters) == Some(self.config.node);
                            Output::PartitionAllocated { partition, info, campaign }
                        }
                        DirectoryChange::MembersChanged { partition, info } => {
                            Output::MembersChanged { partition, info }
                        }
                    });
                }
                if let Some(request) = self.forwarded.settle((client, seq)) {
                    self.outputs.push_back(Output::Respond { request, response: Response::Written(result.clone()) });
                }
                Response::Written(result)
            }
        };
        match self.proposals.settle(position.index, position.term) {
            Some(Fate::Applied(request)) => self.outputs.push_back(Output::Respond { request, response }),
            Some(Fate::Overwritten(request)) => {
                let leader = self.leader();
                self.outputs.push_back(Output::Respond { request, response: Response::NotLeader { leader } });
            }
            None => {}
        }
    }

    /// A leader applied its own removal. `check_membership` refuses to remove the leader that
    /// proposes it, but a removal proposed by an earlier leader can commit under this one.
    /// raft-rs leaves such a leader leading with no progress of its own, and its next
    /// acknowledgement panics (`maybe_commit`). Hand leadership to the voter furthest along
    /// (it campaigns at once; if it cannot win, the others elect one after a timeout), then
    /// step down; this replica is no longer promotable, so it never campaigns again.
    fn step_down_after_own_removal(&mut self) {
        let raft = &self.raw.raft;
        let successor = raft
            .prs()
            .iter()
            .filter(|(id, _)| raft.prs().conf().voters().contains(**id))
            .max_by_key(|(id, pr)| (pr.matched, **id));
        let successor = successor.map(|(id, _)| *id);
        tracing::info!(partition = %self.config.partition, node = %self.config.node, ?successor,
            "this leader applied its own removal: stepping down");
        if let Some(successor) = successor {
            self.raw.raft.send_timeout_now(successor);
        }
        let term = self.raw.raft.term;
        self.raw.raft.become_follower(term, raft::INVALID_ID);
    }

    /// Applies a committed membership change to Raft; returns the members after it, or why
    /// Raft refused it (deterministic on every replica; the membership stays as it was).
    fn apply_conf_change(&mut self, entry: &Entry) -> Result<crate::persist::ConfState, String> {
        use protobuf::Message as _;
        let conf_state = if entry.get_entry_type() == EntryType::EntryConfChange {
            let mut change = ConfChange::default();
            change.merge_from_bytes(&entry.data).map(|_| self.raw.apply_conf_change(&change))
        } else {
            let mut change = ConfChangeV2::default();
            change.merge_from_bytes(&entry.data).map(|_| self.raw.apply_conf_change(&change))
        };
        match conf_state {
            Ok(Ok(conf_state)) => {
                let applied = (&conf_state).into();
                let still_voter = conf_state.voters.contains(&self.raw.raft.id);
                self.raw.mut_store().set_conf_state(conf_state);
                self.conf_state_dirty = true;
                tracing::info!(partition = %self.config.partition, node = %self.config.node, ?applied, "membership changed");
                if self.is_leader() && !still_voter {
                    self.step_down_after_own_removal();
                }
                Ok(applied)
            }
            Ok(Err(error)) => {
                tracing::warn!(partition = %self.config.partition, %error, "committed membership change refused by raft");
                Err(format!("raft refused the change: {error}"))
            }
            Err(error) => {
                tracing::error!(partition = %self.config.partition, %error, "committed membership change does not decode");
                Err(format!("the change does not decode: {error}"))
            }
        }
    }
}

/// The voter of a new partition that starts its first election: one per partition, the same
/// on every node, and spread over the voters, so that leadership (and the work and failover
/// that come with it) is spread too. Had the directory's leader campaigned for every
/// partition, its node would lead them all.
fn first_leader(partition: crate::ids::PartitionId, voters: &[crate::ids::NodeId]) -> Option<crate::ids::NodeId> {
    let mut sorted = voters.to_vec();
    sorted.sort();
    sorted.get((partition.0 % sorted.len().max(1) as u64) as usize).copied()
}
