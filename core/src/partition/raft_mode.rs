//! Raft on and off for one partition, in place (`RaftMode`).
//!
//! With Raft off, a partition has one replica and no Raft: a write is appended to the same
//! write-ahead log, in the same entry format, at the next index and in the term Raft left, with
//! the hard state's commit at that index in the same log write; once that write is durable the
//! entry is committed and goes to the store like any committed entry. No message, tick or
//! election. The Raft node is left as it was, untouched, and rebuilt from the log when Raft
//! turns on again.
//!
//! The mode is decided by the partition's log, like its membership: a switch is an empty
//! normal entry whose context carries `RAFT_ON_MARK` or `RAFT_OFF_MARK`, and the store records
//! the mode of the last one it applied (`PartitionRecord::raft`). A replica opens in the mode
//! of the last switch in its log after the store's applied position, or else in the store's.
//! So a power loss leaves a switch wholly made (its entry durable) or not at all.
//!
//! - **Off** (from Raft): the leader of a partition whose only member is itself proposes the
//!   off entry. Single-voter Raft commits it once it is durable here, and nothing can overwrite
//!   it: no other member exists, and membership changes and transfers are refused while a
//!   switch is pending. Once it is committed, every entry is durable and handed to the store,
//!   and Raft has nothing left to do, the replica stops driving Raft.
//! - **On** (from off): the on entry is appended like a write; once it is durable, the Raft
//!   node is rebuilt from the log (hard state: the same term, everything committed) and
//!   campaigns. As the only voter it wins at once, in the next term, and its first entry of that
//!   term commits nothing new: every earlier entry was committed already.
//!
//! While a switch is pending, writes are answered `Busy` (clients retry): the switch waits for
//! nothing but one fsync and the entries before it.

use super::{Output, Partition, ReadConsistency, Request, Response};
use crate::env::Instant;
use crate::ids::{RequestId, DIRECTORY};
use crate::limits;
use crate::persist::{LogPosition, LogWrite, RaftMode, RecoveredPartition};
use crate::state_machine::{self, Command, ReadQuery};
use raft::eraftpb::{Entry, EntryType};
use raft::{GetEntriesContext, Storage as _};

/// The context of the entry that turns Raft off.
pub(super) const RAFT_OFF_MARK: &[u8] = b"cohort-raft-off";
/// The context of the entry that turns Raft on.
pub(super) const RAFT_ON_MARK: &[u8] = b"cohort-raft-on";

/// The mode an entry switches to, if it is a switch.
pub(super) fn switch_of(kind_is_normal: bool, data: &[u8], context: &[u8]) -> Option<RaftMode> {
    if !kind_is_normal || !data.is_empty() {
        return None;
    }
    match context {
        RAFT_OFF_MARK => Some(RaftMode::Off),
        RAFT_ON_MARK => Some(RaftMode::On),
        _ => None,
    }
}

/// The mode a replica opens in: that of the last switch in its log past what the store applied,
/// or else the store's.
pub(super) fn mode_at_open(recovered: &RecoveredPartition, applied: u64, stored: RaftMode) -> RaftMode {
    recovered
        .entries
        .iter()
        .filter(|e| e.index > applied)
        .filter_map(|e| switch_of(e.kind == crate::persist::EntryKind::Normal, &e.data, &e.context))
        .next_back()
        .unwrap_or(stored)
}

/// A switch asked for and not made yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PendingSwitch {
    pub to: RaftMode,
    /// The index of its entry.
    pub index: u64,
}

impl Partition {
    /// Raft off: a client request.
    pub(super) fn handle_request_off(&mut self, now: Instant, request: RequestId, body: Request) {
        match body {
            Request::Write(command) | Request::ForwardedWrite(command) => self.append_write(request, command),
            Request::Read { query, consistency: ReadConsistency::Stale } => self.serve_read_off(request, query),
            Request::Read { query, consistency: ReadConsistency::Linearizable } => {
                self.read_linearizable_off(request, query)
            }
            Request::ChangeMembership(_) | Request::TransferLeader(_) => {
                let reason = "Raft is off for this partition: turn it on first (`cohort partition raft on`)";
                self.respond(request, Response::Refused(reason.into()));
            }
            Request::SetRaft(RaftMode::Off) => match self.switching {
                None => self.respond(request, Response::RaftMode(RaftMode::Off)),
                Some(_) => self.respond(request, Response::Refused("Raft is being turned on".into())),
            },
            Request::SetRaft(RaftMode::On) => self.turn_on(request),
        }
        self.after_input(now);
    }

    fn serve_read_off(&mut self, request: RequestId, query: ReadQuery) {
        self.outputs.push_back(Output::Read { request, query });
    }

    /// Raft off: a read sees every acknowledged write once the store has applied every durable
    /// entry as of now. There is no other replica, but not every acknowledged write need be
    /// applied yet: after a restart, the log's entries past the store's durable state are
    /// applied again, and a read served before them would miss writes acknowledged before the
    /// crash.
    fn read_linearizable_off(&mut self, request: RequestId, query: ReadQuery) {
        let committed = self.commit_index();
        if self.applied.index >= committed || crate::bugs::is_active(crate::bugs::Bug::RaftOffReadEarly) {
            self.serve_read_off(request, query);
        } else if self.reads.is_full() {
            self.respond(request, Response::Busy);
        } else {
            self.reads.hold_until_applied(committed, (request, query));
        }
    }

    /// Raft off: appends a client's write to the log; it is answered once applied.
    fn append_write(&mut self, request: RequestId, command: Command) {
        if let Err(rejection) = state_machine::validate(&command) {
            self.respond(request, Response::Invalid(rejection.to_string()));
            return;
        }
        if self.switching.is_some() || self.proposals.is_full() {
            self.respond(request, Response::Busy);
            return;
        }
        let Some(data) = self.encode_command(request, &command) else { return };
        self.append_awaited(request, data, &[]);
    }

    /// Raft off: appends an entry that `request` waits for (answered once it applies).
    fn append_awaited(&mut self, request: RequestId, data: Vec<u8>, context: &[u8]) -> u64 {
        let position = self.append_off(data, context);
        let displaced = self.proposals.insert(position.index, position.term, request);
        assert!(displaced.is_none(), "Raft off: every index is appended once");
        position.index
    }

    /// Raft off: appends one entry after the log's last, committed in the same log write.
    fn append_off(&mut self, data: Vec<u8>, context: &[u8]) -> LogPosition {
        debug_assert_eq!(self.mode, RaftMode::Off);
        let storage = self.raw.mut_store();
        let index = storage.last_index().expect("the log's last index is known") + 1;
        let mut hard_state = storage.hard_state();
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryNormal);
        entry.index = index;
        entry.term = hard_state.term;
        entry.data = data.into();
        entry.context = context.to_vec().into();
        let entries = storage.append(&[entry]);
        hard_state.commit = index;
        let raft_hard_state: raft::eraftpb::HardState = hard_state.into();
        storage.set_hard_state(&raft_hard_state);
        let mut write = LogWrite::new(self.config.partition);
        write.entries = entries;
        write.hard_state = Some(hard_state);
        self.logged_hard_state = hard_state;
        write.assert_well_formed();
        self.last_ready_number += 1;
        let number = self.last_ready_number;
        self.unpersisted_off.push_back((number, index));
        self.outputs.push_back(Output::Persist { ready_number: number, write });
        LogPosition { index, term: hard_state.term }
    }

    /// Raft off: every log write through `ready_number` is durable, so committed.
    pub(super) fn handle_persisted_off(&mut self, now: Instant, ready_number: u64) {
        let mut durable = None;
        // Raft's own writes from before Raft went off were all durable before it did.
        assert!(self.unpersisted.is_empty(), "Raft went off with nothing of Raft's in flight");
        while let Some(&(number, index)) = self.unpersisted_off.front() {
            if number > ready_number {
                break;
            }
            self.unpersisted_off.pop_front();
            durable = Some(index);
        }
        let durable = durable.unwrap_or_else(|| panic!("persisted write {ready_number} was outstanding"));
        self.hand_out_through(durable);
        self.after_input(now);
    }

    /// Hands the entries after those handed out, through `index`, to the store: Raft off, or
    /// on opening off, every durable entry is committed.
    pub(super) fn hand_out_through(&mut self, index: u64) {
        while self.applying < index {
            let entries = self
                .raw
                .store()
                .entries(self.applying + 1, index + 1, limits::APPLY_BATCH_BYTES_MAX, GetEntriesContext::empty(false))
                .expect("entries past the applied position are in the log");
            assert!(!entries.is_empty(), "entries() returns at least one entry");
            self.hand_out_committed(entries);
        }
    }

    /// Raft off: asks to turn Raft on, with an entry after every write so far.
    fn turn_on(&mut self, request: RequestId) {
        if self.switching.is_some() {
            self.respond(request, Response::Refused("Raft is being turned on".into()));
            return;
        }
        if self.proposals.is_full() {
            self.respond(request, Response::Busy);
            return;
        }
        let index = self.append_awaited(request, Vec::new(), RAFT_ON_MARK);
        self.switching = Some(PendingSwitch { to: RaftMode::On, index });
        tracing::info!(partition = %self.config.partition, index, "turning Raft on");
    }

    /// Raft on: asks to turn Raft off. Refused unless this replica leads a partition whose only
    /// member it is, with nothing else changing its membership or leadership.
    pub(super) fn turn_off(&mut self, request: RequestId) {
        if !self.may_propose(request, |partition| partition.check_turn_off()) {
            return;
        }
        let last_before = self.raw.raft.raft_log.last_index();
        match self.raw.propose(RAFT_OFF_MARK.to_vec(), Vec::new()) {
            Ok(()) => {
                let (index, term) = self.proposed_entry(last_before);
                self.await_entry(index, term, request);
                self.switching = Some(PendingSwitch { to: RaftMode::Off, index });
                tracing::info!(partition = %self.config.partition, index, "turning Raft off");
            }
            Err(error) => self.respond(request, Response::Refused(format!("raft refused the proposal: {error}"))),
        }
    }

    fn check_turn_off(&self) -> Result<(), String> {
        if self.config.partition == DIRECTORY {
            return Err("the directory runs Raft on every node; it cannot turn Raft off".into());
        }
        if self.switching.is_some() {
            return Err("Raft is being turned off already".into());
        }
        let raft = &self.raw.raft;
        let conf = raft.prs().conf().to_conf_state();
        let me = self.config.peer.0;
        if conf.voters != [me] || !conf.learners.is_empty() || !conf.voters_outgoing.is_empty() {
            let members = self.raw.store().conf_state();
            return Err(format!(
                "Raft can be turned off only for a partition with one voter and no learners; \
                 this one has voters on nodes {:?} and learners on nodes {:?}: remove the others first",
                members.voter_nodes(),
                members.learner_nodes()
            ));
        }
        if raft.has_pending_conf() {
            return Err("a membership change of this partition is in flight; try again once it applies".into());
        }
        if raft.lead_transferee.is_some() {
            return Err("a leadership transfer is under way".into());
        }
        Ok(())
    }

    /// Makes the pending switch once everything before it is done (called after every input).
    pub(super) fn maybe_finish_switch(&mut self, now: Instant) {
        let Some(switch) = self.switching else { return };
        if self.fatal.is_some() {
            return;
        }
        match switch.to {
            RaftMode::Off => {
                let raft = &self.raw.raft;
                let last = raft.raft_log.last_index();
                let done = raft.raft_log.committed >= switch.index
                    && raft.raft_log.committed == last
                    && raft.raft_log.persisted == last
                    && self.applying == last
                    && self.unpersisted.is_empty()
                    && !self.saving_snapshot
                    && self.installing.is_none()
                    && !self.raw.has_ready();
                if done {
                    self.finish_turning_off();
                }
            }
            RaftMode::On => {
                if self.unpersisted_off.is_empty() && self.applying >= switch.index {
                    self.finish_turning_on(now);
                }
            }
        }
    }

    fn finish_turning_off(&mut self) {
        let last = self.raw.raft.raft_log.last_index();
        assert!(self.is_leader(), "only a leader turns Raft off");
        assert_eq!(self.raw.store().last_index().expect("known"), last, "every entry is in the log");
        self.mode = RaftMode::Off;
        self.switching = None;
        // Reads waiting for a ReadIndex round wait instead for what is committed to be applied
        // (everything is: the switch waited for it, but maybe not yet applied); those whose
        // round confirmed an index keep waiting for it.
        let committed = self.commit_index();
        for read in self.reads.take_unconfirmed() {
            self.reads.hold_until_applied(committed, read);
        }
        self.serve_ready_reads();
        tracing::info!(partition = %self.config.partition, last, term = self.raw.raft.term, "Raft is off");
    }

    fn finish_turning_on(&mut self, now: Instant) {
        let storage = std::mem::replace(
            self.raw.mut_store(),
            super::storage::PartitionStorage::new(&RecoveredPartition::default()),
        );
        let hard_state = storage.hard_state();
        assert_eq!(hard_state.commit, storage.last_index().expect("known"), "Raft off: the whole log is committed");
        // Raft's ready numbers start again at 1: the new node's are counted after every number
        // already handed out, so the log's durable watermark keeps rising.
        self.raft_numbers_from = self.last_ready_number;
        self.raw = super::new_raw_node(&self.config, storage, self.applying);
        self.mode = RaftMode::On;
        self.switching = None;
        self.observed = (u64::MAX, raft::StateRole::Follower, u64::MAX);
        self.campaign_asked = true;
        tracing::info!(partition = %self.config.partition, term = hard_state.term, "Raft is on; campaigning");
        self.after_input(now);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_written, create_repo, elect, list_refs, set_main, STEPS_MAX};
    use super::super::{ReadConsistency, Response};
    use super::*;
    use crate::ids::NodeId;
    use crate::state_machine::{Oid, ReadResult, RefValue};
    use crate::testing::Cluster;

    const NODE: NodeId = NodeId(1);

    /// Sends `body` to node 1 and drives until it is answered.
    fn ask(cluster: &mut Cluster, body: Request) -> Response {
        let request = cluster.request(NODE, body);
        assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()), "request is answered");
        cluster.response(request).unwrap().clone()
    }

    fn main_ref(cluster: &mut Cluster) -> Option<Oid> {
        match ask(cluster, list_refs(ReadConsistency::Linearizable)) {
            Response::Read { result: ReadResult::Refs(refs), .. } => {
                refs.into_iter().find_map(|(name, value)| match (name.as_str(), value) {
                    ("refs/heads/main", RefValue::Direct(oid)) => Some(oid),
                    _ => None,
                })
            }
            other => panic!("expected the references, got {other:?}"),
        }
    }

    /// A single-voter partition with a repository, its leader elected.
    fn single_voter() -> Cluster {
        let mut cluster = Cluster::new(1, 41);
        elect(&mut cluster);
        assert_written(&ask(&mut cluster, create_repo(1)));
        cluster
    }

    #[test]
    fn raft_off_commits_each_write_once_durable_with_no_messages_and_no_new_term() {
        let mut cluster = single_voter();
        let term = cluster.replica(NODE).term();
        assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::Off)), Response::RaftMode(RaftMode::Off));
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::Off);
        for seq in 2..10 {
            let (body, oid) = set_main(1, seq, format!("off {seq}").as_bytes());
            assert_written(&ask(&mut cluster, body));
            assert_eq!(main_ref(&mut cluster), Some(oid));
        }
        assert_eq!(cluster.in_flight().count(), 0, "Raft off sends nothing");
        assert_eq!(cluster.replica(NODE).poll_timeout(), None, "Raft off has no timer");
        let status = cluster.status_of(NODE);
        assert_eq!((status.term, status.leader), (term, Some(NODE)), "no election, no new term");
        assert_eq!(status.commit_index, status.last_index);
        // Asking again is answered at once.
        assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::Off)), Response::RaftMode(RaftMode::Off));
    }

    #[test]
    fn raft_off_survives_a_restart_and_keeps_every_write() {
        let mut cluster = single_voter();
        assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::Off)), Response::RaftMode(RaftMode::Off));
        let (body, oid) = set_main(1, 2, b"before the crash");
        assert_written(&ask(&mut cluster, body));
        let digest = cluster.digest(NODE);
        cluster.crash(NODE);
        cluster.restart(NODE);
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::Off, "the mode comes back from the log and the store");
        assert_eq!(cluster.digest(NODE), digest);
        assert_eq!(main_ref(&mut cluster), Some(oid));
        let (body, oid) = set_main(1, 3, b"after the crash");
        assert_written(&ask(&mut cluster, body));
        assert_eq!(main_ref(&mut cluster), Some(oid));
    }

    #[test]
    fn raft_on_again_elects_in_the_next_term_and_keeps_every_write() {
        let mut cluster = single_voter();
        let term = cluster.replica(NODE).term();
        assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::Off)), Response::RaftMode(RaftMode::Off));
        let (body, _) = set_main(1, 2, b"written off");
        assert_written(&ask(&mut cluster, body));
        let off_last = cluster.status_of(NODE).last_index;
        assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::On)), Response::RaftMode(RaftMode::On));
        elect(&mut cluster);
        let status = cluster.status_of(NODE);
        assert_eq!(status.raft, RaftMode::On);
        assert_eq!(status.term, term + 1, "one election, as the only voter");
        assert!(status.commit_index > off_last, "the new term's entry committed after every earlier one");
        let (body, oid) = set_main(1, 3, b"written on");
        assert_written(&ask(&mut cluster, body));
        assert_eq!(main_ref(&mut cluster), Some(oid));
        // And again, repeatedly: off, on, with a restart in each mode.
        for round in 0..2u64 {
            assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::Off)), Response::RaftMode(RaftMode::Off));
            cluster.crash(NODE);
            cluster.restart(NODE);
            assert_eq!(cluster.status_of(NODE).raft, RaftMode::Off);
            assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::On)), Response::RaftMode(RaftMode::On));
            cluster.crash(NODE);
            cluster.restart(NODE);
            assert_eq!(cluster.status_of(NODE).raft, RaftMode::On);
            elect(&mut cluster);
            let (body, oid) = set_main(1, 10 + round, format!("round {round}").as_bytes());
            assert_written(&ask(&mut cluster, body));
            assert_eq!(main_ref(&mut cluster), Some(oid));
        }
        cluster.assert_logs_agree();
    }

    #[test]
    fn a_switch_whose_entry_was_not_durable_is_not_made() {
        // Off: the entry is lost with the crash, Raft stays on.
        let mut cluster = single_voter();
        cluster.auto_persist = false;
        let request = cluster.request(NODE, Request::SetRaft(RaftMode::Off));
        assert_eq!(cluster.response(request), None);
        cluster.crash(NODE);
        cluster.restart(NODE);
        cluster.auto_persist = true;
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::On);
        elect(&mut cluster);
        // On: the same.
        assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::Off)), Response::RaftMode(RaftMode::Off));
        cluster.auto_persist = false;
        let request = cluster.request(NODE, Request::SetRaft(RaftMode::On));
        assert_eq!(cluster.response(request), None);
        cluster.crash(NODE);
        cluster.restart(NODE);
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::Off);
    }

    #[test]
    fn a_switch_durable_but_not_applied_is_made_after_a_crash() {
        let mut cluster = single_voter();
        cluster.auto_persist = false;
        cluster.request(NODE, Request::SetRaft(RaftMode::Off));
        // The entry's log write is durable; the node crashes before anything else.
        cluster.complete_persists(NODE);
        cluster.crash(NODE);
        cluster.restart(NODE);
        cluster.auto_persist = true;
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::Off, "the durable entry decides");
        cluster.auto_persist = false;
        cluster.request(NODE, Request::SetRaft(RaftMode::On));
        cluster.complete_persists(NODE);
        cluster.crash(NODE);
        cluster.restart(NODE);
        cluster.auto_persist = true;
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::On);
        elect(&mut cluster);
        let (body, _) = set_main(1, 2, b"after both");
        assert_written(&ask(&mut cluster, body));
    }

    #[test]
    fn a_new_single_voter_partition_starts_with_raft_off_when_the_options_say_so() {
        let options = super::super::ReplicaOptions { raft_enabled_by_default: false, ..Default::default() };
        let mut cluster = Cluster::with_options(1, 43, options.clone());
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::Off);
        assert_written(&ask(&mut cluster, create_repo(1)));
        let (body, oid) = set_main(1, 2, b"never under Raft");
        assert_written(&ask(&mut cluster, body));
        assert_eq!(cluster.status_of(NODE).term, 1, "no election ever");
        cluster.crash(NODE);
        cluster.restart(NODE);
        assert_eq!(cluster.status_of(NODE).raft, RaftMode::Off);
        assert_eq!(main_ref(&mut cluster), Some(oid));
        // Several voters run Raft whatever the options say.
        let cluster = Cluster::with_options(3, 44, options);
        for node in cluster.nodes() {
            assert_eq!(cluster.status_of(node).raft, RaftMode::On);
        }
    }

    #[test]
    fn turning_raft_off_is_refused_unless_the_leader_is_the_only_member() {
        let mut cluster = Cluster::new(3, 42);
        let leader = elect(&mut cluster);
        let request = cluster.request(leader, Request::SetRaft(RaftMode::Off));
        assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
        match cluster.response(request) {
            Some(Response::Refused(reason)) => assert!(reason.contains("one voter"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(cluster.status_of(leader).raft, RaftMode::On);
    }

    #[test]
    fn raft_off_refuses_membership_changes_and_transfers() {
        let mut cluster = single_voter();
        assert_eq!(ask(&mut cluster, Request::SetRaft(RaftMode::Off)), Response::RaftMode(RaftMode::Off));
        for body in [
            Request::ChangeMembership(super::super::MembershipChange::AddLearner(NodeId(2))),
            Request::TransferLeader(NodeId(2)),
        ] {
            match ask(&mut cluster, body) {
                Response::Refused(reason) => assert!(reason.contains("Raft is off"), "{reason}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn writes_while_a_switch_is_pending_are_busy() {
        let mut cluster = single_voter();
        cluster.auto_persist = false;
        let switch = cluster.request(NODE, Request::SetRaft(RaftMode::Off));
        let (body, _) = set_main(1, 2, b"during");
        let write = cluster.request(NODE, body);
        assert_eq!(cluster.response(write), Some(&Response::Busy));
        cluster.auto_persist = true;
        cluster.complete_persists(NODE);
        assert!(cluster.drive_until(STEPS_MAX, |c| c.response(switch).is_some()));
        let (body, _) = set_main(1, 2, b"after");
        assert_written(&ask(&mut cluster, body));
    }
}
