//! Bounds on every queue and buffer in core, with their units in their names. Each limit is a
//! constant here so that the relations between them are checked at compile time.

/// Messages a partition's mailbox holds before senders see it full.
pub const MAILBOX_MESSAGES_MAX: usize = 1024;
/// Bytes (`PartitionInput::size_bytes`) a partition's mailbox holds before senders see it
/// full: room for a few of the largest writes, and for a window of snapshot chunks.
pub const MAILBOX_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Bytes of a mailbox that client requests and inspections may fill; the rest is kept for
/// Raft's messages (a leader whose mailbox is full of writes must still hear the
/// acknowledgements that commit them).
pub const MAILBOX_REQUEST_BYTES_MAX: usize = MAILBOX_BYTES_MAX / 2;
/// Client requests and inspections a mailbox holds; likewise, the rest of its inputs are kept
/// for Raft's messages.
pub const MAILBOX_REQUESTS_MAX: usize = MAILBOX_MESSAGES_MAX / 2;
/// Proposals a partition holds between `propose` and their answer; beyond it: `Busy`.
pub const PROPOSALS_PENDING_MAX: usize = 4096;
/// Linearizable reads waiting for a ReadIndex or for apply; beyond it: `Busy`.
pub const READS_PENDING_MAX: usize = 4096;
/// Size of one client write (its encoded command).
pub const COMMAND_SIZE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Raft's own limit on one append message.
pub const RAFT_MESSAGE_ENTRIES_SIZE_BYTES_MAX: u64 = 1024 * 1024;
/// Raft's limit on appended but uncommitted bytes; beyond it proposals are dropped.
pub const RAFT_UNCOMMITTED_SIZE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Append messages in flight to one follower.
pub const RAFT_INFLIGHT_MESSAGES_MAX: usize = 256;
/// Committed entries one `Apply` hands to the store (raft-rs's committed bytes per Ready).
pub const APPLY_BATCH_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// `Apply` batches of one partition handed to the store and not yet answered; at this bound
/// the partition's actor takes no inputs until the store catches up.
pub const APPLY_BATCHES_IN_FLIGHT_MAX: usize = 64;
/// Command bytes of one partition handed to the store and not yet answered; likewise. A batch
/// larger than this may still be in flight alone. Bounds memory when entries are large (an
/// upload's 1 MiB pieces) and the store applies slower than Raft commits.
pub const APPLY_BYTES_IN_FLIGHT_MAX: u64 = 8 * 1024 * 1024;
/// Apply requests queued for the node's applier (all partitions of a node).
pub const APPLY_QUEUE_REQUESTS_MAX: usize = 4096;
/// Log writes queued for the group-commit writer (all partitions of a node).
pub const PERSIST_QUEUE_WRITES_MAX: usize = 8192;

/// Log bytes a leader keeps (uncompacted) for a member on a node known down, so that it catches
/// up from the log when it returns rather than by a snapshot: enough for the empty entry that
/// begins a failover's term and a few small writes; a busier partition compacts and sends a
/// snapshot. Per partition, kept only while that node is down.
pub const DOWN_MEMBER_LOG_RETAIN_BYTES_MAX: usize = 4 * 1024;

/// The largest snapshot a replica accepts from a peer, unless configured otherwise.
pub const SNAPSHOT_SIZE_BYTES_MAX_DEFAULT: u64 = 64 << 30;
/// Free disk space a replica keeps when it accepts a snapshot: a transfer that would leave less
/// is refused, so the log and the store can still write.
pub const SNAPSHOT_DISK_RESERVE_BYTES: u64 = 256 << 20;
/// Bytes of snapshot file in one transfer chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
/// Unacknowledged chunks in flight per transfer: each side holds at most this many chunks.
pub const SNAPSHOT_WINDOW_CHUNKS: u64 = 8;
/// Ticks without an acknowledgement before a sender resends from the last acknowledged byte.
pub const SNAPSHOT_ACK_TIMEOUT_TICKS: u32 = 5;
/// Consecutive timeouts before a sender gives up and tells Raft the snapshot failed.
pub const SNAPSHOT_RETRIES_MAX: u32 = 10;
/// Ticks an unfinished incoming snapshot is kept without hearing from its sender.
pub const SNAPSHOT_INCOMING_IDLE_TICKS_MAX: u32 = 100;
/// Snapshots one replica sends at once (one per receiver).
pub const SNAPSHOT_OUTGOING_MAX: usize = 4;
/// Memory the state store's page cache may use, by default.
pub const STORE_CACHE_BYTES_DEFAULT: usize = 32 * 1024 * 1024;
/// Routes (repository to partition) a node keeps in memory from its directory replica; when
/// full, they are all dropped and read again as asked for. A route is a repository's name and
/// a partition id: a few MiB at most.
pub const ROUTE_CACHE_ENTRIES_MAX: usize = 16 * 1024;
/// Buffer between the state machine's encoder and a snapshot file.
pub const SNAPSHOT_WRITE_BUFFER_BYTES: usize = 1024 * 1024;

const _: () = assert!(COMMAND_SIZE_BYTES_MAX as u64 <= RAFT_UNCOMMITTED_SIZE_BYTES_MAX);
const _: () = assert!(COMMAND_SIZE_BYTES_MAX as u64 <= APPLY_BATCH_BYTES_MAX);
const _: () = assert!(COMMAND_SIZE_BYTES_MAX < crate::codec::DECODE_SIZE_BYTES_MAX);
const _: () = assert!(PROPOSALS_PENDING_MAX >= MAILBOX_MESSAGES_MAX);
const _: () = assert!(MAILBOX_BYTES_MAX >= 2 * COMMAND_SIZE_BYTES_MAX);
const _: () = assert!(MAILBOX_REQUEST_BYTES_MAX >= 2 * COMMAND_SIZE_BYTES_MAX);
const _: () = assert!(MAILBOX_BYTES_MAX >= 2 * SNAPSHOT_WINDOW_CHUNKS as usize * SNAPSHOT_CHUNK_BYTES);
const _: () = assert!(SNAPSHOT_INCOMING_IDLE_TICKS_MAX > SNAPSHOT_ACK_TIMEOUT_TICKS * 2);
