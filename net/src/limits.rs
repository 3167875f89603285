//! Bounds of the peer transport, units in the names.

/// Largest frame accepted from or sent to a peer. A frame above it closes the connection.
pub const FRAME_SIZE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Room kept in a frame for its own encoding beyond the messages' estimated sizes.
pub const FRAME_MARGIN_BYTES: usize = 64 * 1024;
/// The smallest frame limit: one largest command (in one Raft append) must fit.
pub const FRAME_SIZE_BYTES_MIN: usize = cohort_core::limits::COMMAND_SIZE_BYTES_MAX + 1024 * 1024;
/// Raft messages queued for one peer; beyond it new messages are dropped and counted.
pub const OUTBOX_MESSAGES_MAX: usize = 4096;
/// Payload bytes (entries, snapshot data) queued for one peer; beyond it new messages with a
/// payload are dropped and counted. A few frames' worth: enough to keep a link busy, not
/// enough for a dead peer's queue to matter.
pub const OUTBOX_BYTES_MAX: usize = 4 * FRAME_SIZE_BYTES_MAX;
/// Messages written in one frame.
pub const FRAME_MESSAGES_MAX: usize = 1024;
/// Time a new connection has to complete its handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Connections accepted and still in their handshake; more are closed at once.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 16;
/// Reconnect backoff bounds.
pub const BACKOFF_MIN_MS: u64 = 50;
pub const BACKOFF_MAX_MS: u64 = 2_000;
/// Batches of received messages waiting for the router.
pub const INBOX_BATCHES_MAX: usize = 1024;

const _: () = assert!(FRAME_MESSAGES_MAX <= OUTBOX_MESSAGES_MAX);
const _: () = assert!(FRAME_SIZE_BYTES_MIN <= FRAME_SIZE_BYTES_MAX);
const _: () = assert!(FRAME_SIZE_BYTES_MIN - FRAME_MARGIN_BYTES > cohort_core::limits::COMMAND_SIZE_BYTES_MAX);
const _: () = assert!(BACKOFF_MIN_MS < BACKOFF_MAX_MS);
const _: () = assert!(FRAME_SIZE_BYTES_MAX < cohort_core::codec::DECODE_SIZE_BYTES_MAX);
