//! Handling one raft-rs `Ready`, in the order its contract requires. This is the only place
//! that calls `ready()` and `advance_append_async`.
//!
//! For each Ready, in order:
//! 1. messages sendable now (a leader's appends go out before its own fsync: Raft thesis
//!    10.2.1) are queued for sending;
//! 2. new entries and the hard state are copied into `PartitionStorage` (raft-rs reads them
//!    from there once `on_persist_ready` is called) and handed to the log as one `Persist`;
//! 3. `persisted_messages` (votes, append responses) wait until that `Persist` is durable:
//!    they promise what the log holds;
//! 4. `advance_append_async`;
//! 5. committed entries (raft-rs hands out only entries durable here) are applied, their
//!    proposals answered, and read states recorded;
//! 6. `advance_apply_to`.

use super::proposals::Fate;
use super::{reads, Output, Partition, Response};
use crate::bugs::{self, Bug};
use crate::persist::LogWrite;
use crate::state_machine::{Command, WriteOp, WriteResult};
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};

/// Readies handled per input before giving control back; each Ready either persists
/// something or applies something, so a handful is the most a single input produces.
const READIES_PER_INPUT_MAX: usize = 64;

impl Partition {
    pub(super) fn process_ready(&mut self) {
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
        let number = ready.number();

        for message in ready.take_messages() {
            self.send(message);
        }
        let mut write = LogWrite::new(self.config.partition);
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot(), &mut write);
        }
        let store = self.raw.mut_store();
        write.entries = store.append(ready.entries());
        if let Some(hard_state) = ready.hs() {
            store.set_hard_state(hard_state);
            write.hard_state = Some(store.hard_state());
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

        self.apply_committed(premature);
        self.apply_committed(committed);
        self.announce_directory_if_replayed();
        if self.conf_state_dirty {
            write.conf_state = Some(self.raw.store().conf_state());
            self.conf_state_dirty = false;
        }
        for state in read_states {
            if let Some(context) = reads::context_from_bytes(&state.request_ctx) {
                self.reads.confirmed(context, state.index);
            }
        }
        self.serve_ready_reads();
        self.advance_raft_applied();

        if write.is_empty() && self.unpersisted.is_empty() {
            // Nothing new to make durable and nothing earlier still in flight: what these
            // messages promise is already on disk.
            for message in persisted_messages {
                self.send(message);
            }
            self.raw.on_persist_ready(number);
        } else {
            write.assert_well_formed();
            self.unpersisted.push_back((number, persisted_messages));
            self.outputs.push_back(Output::Persist { ready_number: number, write });
        }
    }

    /// Tells raft-rs how far the state machine has applied. A snapshot's state counts as
    /// applied only once raft-rs knows the snapshot is durable.
    pub(super) fn advance_raft_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let mut applied = self.state_machine.applied_index().min(log.persisted);
        if bugs::is_active(Bug::ApplyUncommitted) {
            // raft-rs refuses an applied index past commit; the planted bug hides it.
            applied = applied.min(log.committed);
        }
        if applied > log.applied {
            self.raw.advance_apply_to(applied);
        }
    }

    /// Raft accepted a snapshot from the leader: it replaces the log and the state machine.
    fn install_snapshot(&mut self, snapshot: &raft::eraftpb::Snapshot, write: &mut LogWrite) {
        let metadata = snapshot.get_metadata();
        let (meta, state) = self.staged_snapshot.take().expect("raft accepts only the snapshot just staged");
        assert_eq!((meta.position.index, meta.position.term), (metadata.index, metadata.term));
        assert_eq!(meta.conf_state, (metadata.get_conf_state()).into(), "the file's membership is raft's");
        assert!(meta.position.index > self.state_machine.applied_index(), "a snapshot moves the state forward");
        tracing::info!(partition = %self.config.partition, node = %self.config.node, position = ?meta.position,
            "installing snapshot");
        if let Some(observer) = &self.config.observer {
            observer.snapshot_installed(self.config.node, self.config.partition, meta.position.index);
        }
        write.snapshot = Some((meta.position, meta.conf_state.clone()));
        self.raw.mut_store().apply_snapshot(meta);
        self.state_machine = state;
        self.applied_bytes_since_snapshot = 0;
        self.conf_state_dirty = false;
        if self.config.partition == crate::ids::DIRECTORY && self.directory_ready {
            // The directory jumped over entries whose changes were never reported one by one:
            // the node reconciles with the whole of it again.
            let partitions = self.state_machine.directory().partitions().map(|(p, info)| (p, info.clone())).collect();
            self.outputs.push_back(Output::DirectoryReady { partitions });
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let mut membership: Option<Response> = None;
            let index = entry.index;
            if bugs::is_active(Bug::ApplyUncommitted) && index <= self.state_machine.applied_index() {
                continue; // Applied early by the planted bug.
            }
            assert_eq!(index, self.state_machine.applied_index() + 1, "entries apply in order, once");
            if let Some(observer) = &self.config.observer {
                observer.applied(self.config.node, self.config.partition, index, entry.term, &entry.data);
            }
            self.applied_bytes_since_snapshot += entry.data.len() as u64;
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // A new leader's empty entry.
                    self.state_machine.apply_noop(index);
                    None
                }
                EntryType::EntryNormal => match Command::decode(&entry.data) {
                    Ok(command) if self.planted_skip(index, &command) => {
                        // Planted: the entry counts as applied, but nothing changed.
                        self.state_machine.apply_noop(index);
                        None
                    }
                    Ok(command) => {
                        let result = self.state_machine.apply(index, &command);
                        self.after_apply(index, &command, &result);
                        Some(result)
                    }
                    Err(error) => {
                        // Every replica decodes the same committed bytes the same way, so
                        // skipping keeps replicas equal; but our leader encoded this entry,
                        // so it means a version skew or a bug. Say so loudly.
                        tracing::error!(partition = %self.config.partition, index, %error,
                            "committed entry does not decode; applied as a no-op");
                        self.state_machine.apply_noop(index);
                        None
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let outcome = self.apply_conf_change(&entry);
                    self.state_machine.apply_noop(index);
                    membership = Some(outcome);
                    None
                }
            };
            match self.proposals.settle(index, entry.term) {
                Some(Fate::Applied(request)) => {
                    let response = match (result, membership) {
                        (Some(result), _) => Response::Written(result),
                        (None, Some(membership)) => membership,
                        (None, None) => Response::Unknown,
                    };
                    self.outputs.push_back(Output::Respond { request, response });
                }
                Some(Fate::Overwritten(request)) => {
                    let leader = self.leader();
                    self.outputs.push_back(Output::Respond { request, response: Response::NotLeader { leader } });
                }
                None => {}
            }
        }
    }

    /// Whether the planted `skip-apply` bug skips this entry: on a follower, one write in 16.
    fn planted_skip(&self, index: u64, command: &Command) -> bool {
        bugs::is_active(Bug::SkipApply)
            && !self.is_leader()
            && index.is_multiple_of(16)
            && matches!(command.op, WriteOp::Transaction { .. })
    }

    /// Effects of an applied command beyond the state machine: answering a forwarded write,
    /// and telling the node about a partition the directory allocated.
    fn after_apply(&mut self, index: u64, command: &Command, result: &WriteResult) {
        let live = self.is_live(index);
        if let (true, WriteOp::SetPartitionMembers { partition, .. }, Ok(_)) = (live, &command.op, result) {
            if let Some(info) = self.state_machine.directory().partition(*partition) {
                let info = info.clone();
                self.outputs.push_back(Output::MembersChanged { partition: *partition, info });
            }
        }
        if let (true, WriteOp::AllocatePartition { .. }, Ok(ok)) = (live, &command.op, result) {
            let partition = ok.partition.expect("an allocation names its partition");
            let info = self
                .state_machine
                .directory()
                .partition(partition)
                .expect("an allocated partition is in the directory")
                .clone();
            let campaign = self.is_leader();
            self.outputs.push_back(Output::PartitionAllocated { partition, info, campaign });
        }
        if let Some(request) = self.forwarded.settle((command.client, command.seq)) {
            self.outputs.push_back(Output::Respond { request, response: Response::Written(result.clone()) });
        }
    }

    /// Applies a committed membership change; returns the answer for whoever proposed it.
    fn apply_conf_change(&mut self, entry: &Entry) -> Response {
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
                self.raw.mut_store().set_conf_state(conf_state);
                self.conf_state_dirty = true;
                tracing::info!(partition = %self.config.partition, node = %self.config.node, ?applied, "membership changed");
                Response::Membership(applied)
            }
            // Deterministic on every replica; the membership stays as it was.
            Ok(Err(error)) => {
                tracing::warn!(partition = %self.config.partition, %error, "committed membership change refused by raft");
                Response::Refused(format!("raft refused the change: {error}"))
            }
            Err(error) => {
                tracing::error!(partition = %self.config.partition, %error, "committed membership change does not decode");
                Response::Refused(format!("the change does not decode: {error}"))
            }
        }
    }
}
