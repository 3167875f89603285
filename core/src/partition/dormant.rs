//! Unloading: a follower quiesced with nothing in flight is reduced to a [`Dormant`] record,
//! all it needs to reopen, and the shell drops the rest (the Raft node, its task, its
//! mailbox). Reopening ([`Partition::reopen`]) goes through `Partition::open`, the path of a
//! restart, and puts the replica back to rest following the same leader: loading costs no
//! election and no message.
//!
//! Only followers and learners unload. A leader that reopened would be a follower without a
//! leader in a partition whose followers still follow it, so its next request would cost an
//! election.

use super::{Partition, PartitionConfig, PartitionStatus, Role, StoredState};
use crate::env::Instant;
use crate::ids::{NodeId, PartitionId, PeerId};
use crate::persist::{ConfState, HardState, LogPosition, RaftMode, RecoveredPartition};
use raft::StateRole;
use std::sync::Arc;

/// What an unloaded replica keeps in memory: exactly what its log and its store would give
/// back after a restart (its log holds no entry and its store has made everything durable,
/// so that is its hard state, its membership and one position), and the leader it followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dormant {
    pub peer: PeerId,
    pub hard_state: HardState,
    /// Shared with the other unloaded replicas of the same membership (the router pools
    /// them: `Router::unloaded`).
    pub conf_state: Arc<ConfState>,
    /// The last entry: compacted in the log, applied and durable in the store.
    pub position: LogPosition,
    /// The leader of `hard_state.term` it followed, if it knew one.
    pub leader: Option<PeerId>,
    /// The store's format of the partition's rows, as far as the replica knew (`format.rs`).
    pub format: crate::store::Format,
}

impl Dormant {
    /// The record of a replica that a restart recovered in this shape (no entry in its log
    /// past what the store made durable, the store agreeing with the log), if it did: the
    /// restart then opens it unloaded.
    pub fn recovered(peer: PeerId, recovered: &RecoveredPartition, stored: &StoredState) -> Option<Dormant> {
        // Raft off, a replica is its partition's only one and always serves it: never unloaded.
        let clean = stored.raft == RaftMode::On
            && recovered.entries.is_empty()
            && stored.applied == recovered.compacted
            && stored.conf_state == recovered.conf_state
            && recovered.hard_state.commit <= recovered.compacted.index
            && recovered.conf_state.voters_outgoing.is_empty()
            && recovered.conf_state.members().contains(&peer.0);
        clean.then(|| Dormant {
            peer,
            hard_state: HardState { commit: recovered.compacted.index, ..recovered.hard_state },
            conf_state: Arc::new(recovered.conf_state.clone()),
            position: recovered.compacted,
            leader: None,
            format: stored.format,
        })
    }

    /// What `cohort status` shows of an unloaded replica.
    pub fn status(&self, partition: PartitionId) -> PartitionStatus {
        let index = self.position.index;
        PartitionStatus {
            partition,
            node: self.peer.node(),
            role: if self.conf_state.learners.contains(&self.peer.0) { Role::Learner } else { Role::Follower },
            term: self.hard_state.term,
            leader: self.leader_node(),
            commit_index: index,
            applied_index: index,
            last_index: index,
            compacted_index: index,
            durable_index: index,
            quiesced: true,
            unloaded: true,
            conf_state: ConfState::clone(&self.conf_state),
            progress: Vec::new(),
            raft: RaftMode::On,
        }
    }

    /// The node of the leader it followed.
    pub fn leader_node(&self) -> Option<NodeId> {
        self.leader.map(PeerId::node)
    }
}

impl Partition {
    /// This replica reduced to what it needs to reopen, if it may unload now: a follower or
    /// learner, quiesced, with nothing pending, everything it holds committed, applied,
    /// durable in the store and compacted out of its log, and no output waiting.
    pub fn dormant(&self) -> Option<Dormant> {
        let raft = &self.raw.raft;
        let storage = self.raw.store();
        let last = raft.raft_log.last_index();
        // `pending_work` covers the log being committed and applied through its last entry.
        let unloadable = self.is_quiesced()
            && self.mode == RaftMode::On
            && self.switching.is_none()
            && raft.state == StateRole::Follower
            && self.pending_work().is_none()
            && self.outputs.is_empty()
            && !self.campaign_asked
            && self.installed_snapshot.is_none()
            && self.store_durable == self.applied
            && storage.compacted().index == last
            && raft.raft_log.unstable.entries.is_empty()
            && raft.raft_log.unstable.snapshot.is_none();
        if !unloadable {
            return None;
        }
        let conf_state = storage.conf_state();
        if !conf_state.members().contains(&self.config.peer.0) {
            // Removed from its partition: it stays until the node retires it.
            return None;
        }
        let hard_state = storage.hard_state();
        assert_eq!(
            hard_state.commit, last,
            "partition {}: a quiesced follower's log is committed",
            self.config.partition
        );
        assert_eq!(storage.compacted(), self.applied, "the log is compacted through the applied position");
        let leader = (raft.leader_id != raft::INVALID_ID).then_some(PeerId(raft.leader_id));
        let conf_state = Arc::new(conf_state);
        let format = self.format;
        Some(Dormant { peer: self.config.peer, hard_state, conf_state, position: self.applied, leader, format })
    }

    /// Lets go of the snapshot file this replica holds, if any, before it unloads (a reopened
    /// replica holds none); whether it held one, which the shell then deletes.
    pub fn forget_snapshot_file(&mut self) -> bool {
        self.raw.mut_store().forget_snapshot().is_some()
    }

    /// Reopens an unloaded replica, at rest (quiesced) and following the leader it followed.
    pub fn reopen(config: PartitionConfig, dormant: &Dormant, now: Instant) -> Partition {
        assert_eq!(config.peer, dormant.peer, "a replica reopens under the peer id it had");
        let recovered = RecoveredPartition {
            hard_state: dormant.hard_state,
            conf_state: ConfState::clone(&dormant.conf_state),
            compacted: dormant.position,
            snapshot: None,
            entries: Vec::new(),
        };
        let stored = StoredState {
            applied: dormant.position,
            conf_state: ConfState::clone(&dormant.conf_state),
            raft: RaftMode::On,
            format: dormant.format,
        };
        let mut partition = Partition::open(config, recovered, stored, now);
        if let Some(leader) = dormant.leader {
            // The leader of this very term: raft-rs learns it from that leader's next message
            // anyway, and knowing it now lets a request wake the leader rather than campaign.
            partition.raw.raft.leader_id = leader.0;
        }
        partition.rest();
        partition
    }
}
