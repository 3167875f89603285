//! What a partition asks its driver to do, and what it answers to requests.

use crate::env::Envelope;
use crate::ids::{NodeId, PartitionId, RequestId};
use crate::persist::{ConfState, LogWrite, PersistError, SnapshotMeta};
use crate::state_machine::{PartitionInfo, ReadQuery, ReadResult, WriteResult};
use crate::store::ApplyEntry;

/// One effect for the driver to carry out, in the order polled.
#[derive(Debug)]
pub enum Output {
    /// Send a Raft message to another replica.
    Send(Envelope),
    /// Make `write` durable, then call `Partition::handle_persisted(ready_number)`. Writes
    /// must be made durable in the order they are polled.
    Persist { ready_number: u64, write: LogWrite },
    /// Deliver Raft's `MsgSnapshot` to `to`: stream the snapshot file it names (see
    /// `crate::snapshot`), then call `Partition::report_snapshot`.
    SendSnapshot { to: NodeId, message: raft::eraftpb::Message },
    /// Apply these committed entries to the partition's state in the store, after every
    /// earlier `Apply`, then call `Partition::handle_applied` with what each did.
    Apply(Vec<ApplyEntry>),
    /// Answer `request` with the store's answer to `query` (the store holds at least every
    /// entry this replica has seen applied).
    Read { request: RequestId, query: ReadQuery },
    /// Save a snapshot of the partition's state in the store, from one read transaction (away
    /// from the partition's task: it can take a while), then call
    /// `Partition::handle_snapshot_saved` with its position and membership.
    SaveSnapshot,
    /// Replace the partition's state in the store with the snapshot file received for
    /// `SnapshotMeta` (one durable write transaction, after every earlier `Apply`), then call
    /// `Partition::handle_snapshot_installed`.
    InstallSnapshot(SnapshotMeta),
    /// Append this log compaction to the log after every earlier `Persist`; nothing waits for
    /// it.
    Compact(LogWrite),
    /// Answer the request `request`.
    Respond { request: RequestId, response: Response },
    /// The directory (partition 0) applied the allocation of a new partition: the node
    /// creates its replica if it is a member. `campaign`: this node is the voter chosen to start
    /// the new partition's first election at once rather than wait (one per partition, spread
    /// over the voters).
    PartitionAllocated { partition: PartitionId, info: PartitionInfo, campaign: bool },
    /// The directory applied new members for `partition`: the node creates its replica if it
    /// became a member, and deletes it if it no longer is.
    MembersChanged { partition: PartitionId, info: PartitionInfo },
    /// This replica leads its partition (not the directory) and its members are these: the node
    /// makes sure the directory records them. Emitted on becoming leader and after each
    /// membership change, so the directory follows the partition even when the operator's call
    /// that changed it was cut short. `as_of`: the log index through which these are the
    /// members (the directory keeps the latest report).
    LeaderMembers { conf: ConfState, as_of: u64 },
    /// The directory replica has applied everything committed before this start: the node
    /// brings its replicas in line with the directory's partitions (in the store) once.
    /// Changes applied while replaying the directory's history are not reported one by one:
    /// acting on a past membership would delete or recreate replicas the present one keeps.
    DirectoryReady,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// The write was committed and applied (or deterministically rejected at apply time).
    Written(WriteResult),
    /// The read's result, as of `applied_index` on this replica.
    Read { result: ReadResult, applied_index: u64 },
    /// This replica is not the leader; `leader` is its best guess of who is.
    NotLeader { leader: Option<NodeId> },
    /// The write may or may not have been applied (the leader changed under it). Retrying with
    /// the same client id and sequence number is safe: writes are idempotent.
    Unknown,
    /// Too many requests in flight on this partition; try again later.
    Busy,
    /// The request was refused before it reached Raft (bad input).
    Invalid(String),
    /// The partition stopped on a fatal error (its log could not be made durable).
    Failed(PersistError),
    /// A membership change was applied; the partition's members are now these.
    Membership(ConfState),
    /// A membership change or transfer was refused; nothing changed.
    Refused(String),
    /// The leader started handing leadership to the node asked for.
    Transferring,
    /// The partition's Raft mode is now this (`Request::SetRaft`).
    RaftMode(crate::persist::RaftMode),
}
