//! Bounds on every record, segment, batch and scan in storage, with their units in their names.
//! Each limit is a constant here so that the relations between them are checked at compile
//! time.

use cohort_core::codec::DECODE_SIZE_BYTES_MAX;
use cohort_core::limits::{COMMAND_SIZE_BYTES_MAX, PERSIST_QUEUE_WRITES_MAX};

/// Size of a record frame's header: the payload length (u32 LE) and its crc32c (u32 LE).
pub const RECORD_HEADER_BYTES: usize = 8;

/// Largest record payload the log writes, and the largest length a reader believes. A batch
/// larger than this is split into several records; one `LogWrite` larger than this is refused.
pub const RECORD_SIZE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Target size of one log segment: the log starts a new segment once the current one holds
/// this many bytes. A segment exceeds it by at most the batch that crossed it.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest segment target accepted; tests use it to exercise rotation and compaction.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 1024;
/// Zeros the log writes ahead of its records at a time (never more than a segment's target
/// size): appends then overwrite space the file system has allocated and written, and the
/// fsync after each flushes data alone (see `log::engine`'s `Head`).
pub const LOG_PREALLOCATE_BYTES: u64 = 256 * 1024;
/// Largest segment target accepted: recovery reads one segment into memory at a time.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Largest Raft log index (and snapshot or compaction index) the log accepts; far beyond any
/// real log, and low enough that index arithmetic never overflows.
pub const LOG_INDEX_MAX: u64 = u64::MAX / 4;

/// Largest segment sequence number, for the same reason.
pub const SEGMENT_SEQ_MAX: u64 = u64::MAX / 4;

/// Segments the log keeps before it rewrites the live entries that pin the oldest ones.
pub const SEGMENTS_DEFAULT: usize = 16;
/// Fewest segments a log may be asked to keep: the head segment and one behind it.
pub const SEGMENTS_MIN: usize = 2;

/// Encoded bytes of checkpoint entries per checkpoint record; a checkpoint of more partitions
/// spans several records.
pub const CHECKPOINT_RECORD_BYTES_TARGET: usize = 1024 * 1024;

/// Encoded bytes of rewritten writes the compactor puts in one append.
pub const REWRITE_BATCH_BYTES_TARGET: usize = 4 * 1024 * 1024;

/// Bytes recovery may checksum, after a bad record, looking for a valid record behind it (to
/// tell a torn tail from corruption); each candidate costs its length plus
/// `RECORD_HEADER_BYTES`. Past it, recovery cannot prove the tail torn and reports corruption:
/// it never guesses in favour of dropping data.
pub const TORN_TAIL_CHECKSUM_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// Log writes group commit takes into one batch (one fsync).
pub const GROUP_COMMIT_BATCH_WRITES_MAX: usize = 4096;
/// Estimated bytes of log writes group commit takes into one batch; the batch may exceed it by
/// the one write that crossed it.
pub const GROUP_COMMIT_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Batches between two compactions run by group commit.
pub const GROUP_COMMIT_COMPACT_EVERY_BATCHES: u64 = 1024;

/// Bytes of a file's unsynced tail the simulated disk tears at a crash (one sector's worth):
/// it zero-fills or garbles at most this many bytes at the end of what survives.
pub const SIM_TORN_BYTES_MAX: usize = 512;

// A record must be decodable by core's codec, whose own limit is the last line of defence.
const _: () = assert!(RECORD_SIZE_BYTES_MAX < DECODE_SIZE_BYTES_MAX);
// The frame's length field is a u32.
const _: () = assert!(RECORD_SIZE_BYTES_MAX <= u32::MAX as usize);
// One client command, with room for its entry's framing, fits in a record.
const _: () = assert!(COMMAND_SIZE_BYTES_MAX * 2 <= RECORD_SIZE_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_BATCH_BYTES_MAX <= RECORD_SIZE_BYTES_MAX);
// The torn-tail search can afford to checksum at least a few maximal records.
const _: () = assert!(TORN_TAIL_CHECKSUM_BYTES_MAX >= 4 * RECORD_SIZE_BYTES_MAX);
const _: () = assert!(REWRITE_BATCH_BYTES_TARGET <= RECORD_SIZE_BYTES_MAX);
const _: () = assert!(CHECKPOINT_RECORD_BYTES_TARGET * 2 <= RECORD_SIZE_BYTES_MAX);
// A batch never asks for more writes than the queue that feeds it can hold.
const _: () = assert!(GROUP_COMMIT_BATCH_WRITES_MAX <= PERSIST_QUEUE_WRITES_MAX);
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN <= SEGMENT_SIZE_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_SIZE_BYTES_DEFAULT <= SEGMENT_SIZE_BYTES_MAX);
const _: () = assert!(SEGMENTS_MIN <= SEGMENTS_DEFAULT);
// Recovery reads a segment and the zeros ahead of its records into memory at once.
const _: () = assert!(LOG_PREALLOCATE_BYTES <= SEGMENT_SIZE_BYTES_MAX);
