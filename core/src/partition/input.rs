//! Requests a partition serves.

use crate::ids::NodeId;
use crate::state_machine::{Command, ReadQuery};

/// A request from a client, routed to one partition.
#[derive(Clone, Debug)]
pub enum Request {
    /// A client's write: served by the leader; a follower answers `NotLeader`.
    Write(Command),
    /// A write the node makes on a client's behalf (a directory step of creating a
    /// repository): a follower forwards it to the leader through Raft and answers once it
    /// applies the command, matched by its (client, sequence) pair.
    ForwardedWrite(Command),
    Read {
        query: ReadQuery,
        consistency: ReadConsistency,
    },
    /// One membership change, through the Raft log (leader only). Answered with the new
    /// membership once the change is applied.
    ChangeMembership(MembershipChange),
    /// Hands leadership to a voter (leader only). Answered at once; the transfer completes
    /// within an election timeout or is abandoned.
    TransferLeader(NodeId),
    /// Turns Raft on or off for the partition in place (`raft_mode.rs`). Answered with the
    /// mode once the switch's entry is applied.
    SetRaft(crate::persist::RaftMode),
}

/// A change to a partition's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// A new read-only member, which receives the log but does not vote.
    AddLearner(NodeId),
    /// A learner becomes a voter.
    Promote(NodeId),
    /// A voter or learner leaves.
    Remove(NodeId),
    /// The node's replica (which lost its data with its node's data directory) gives way to a
    /// new, empty one on the same node in the same role, in one change through a joint
    /// configuration (left automatically): the node stays a member throughout, and nothing
    /// the old replica promised can count for the new one, which is a new Raft peer.
    Replace(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Served by the leader after a ReadIndex round confirms it still leads and this replica
    /// has applied everything committed before the read arrived.
    Linearizable,
    /// Served from this replica's applied state at once; may be behind (the answer says how far).
    Stale,
}
