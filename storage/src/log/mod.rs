//! The node's write-ahead log: one log shared by every partition, in segment files
//! `<dir>/<20-digit seq>.log`, made durable by group commit.
//!
//! - [`record`]: the framing and the records, and the decoder that never panics.
//! - [`segment`]: segment file names, and reading a record back.
//! - [`state`]: one partition's state and how a `LogWrite` changes it.
//! - [`recovery`]: replay at start, torn tails, corruption.
//! - [`engine`]: [`LogEngine`], appending, syncing, rotating and compacting.
//! - [`group_commit`]: the async writer that turns many partitions' writes into one fsync.
//!
//! Invariant: nothing is reported durable before the fsync that covers it, and after a failed
//! fsync or append the engine refuses all work (it is poisoned): the node stops this log.

pub mod engine;
pub mod group_commit;
pub mod record;
pub(crate) mod recovery;
pub mod segment;
pub mod state;

pub use engine::{CompactStats, LogEngine};
pub use group_commit::{run_group_commit, GroupCommitOptions};
pub use recovery::{replay_read_only, ReadOnlyReplay};
pub use state::PartitionLogState;

use crate::limits::{
    SEGMENTS_DEFAULT, SEGMENTS_MIN, SEGMENT_SIZE_BYTES_DEFAULT, SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN,
};
use cohort_core::env::DiskError;
use cohort_core::ids::PartitionId;
use std::path::PathBuf;

/// Why the log could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Bytes on disk that are not a torn tail and not a valid log: the node must stop.
    #[error("corrupt log at {path}:{offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    /// One write is larger than a record may be.
    #[error("log write for partition {partition} encodes to {size_bytes} bytes, over the {size_bytes_max}-byte record limit")]
    WriteTooLarge { partition: PartitionId, size_bytes: usize, size_bytes_max: usize },
    /// An earlier append or sync failed; nothing more is written to this log.
    #[error("log stopped after an earlier failure: {reason}")]
    Poisoned { reason: String },
    #[error("invalid log options: {reason}")]
    InvalidOptions { reason: String },
}

/// How the log lays out its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// Start a new segment once the current one holds this many bytes.
    pub segment_size_bytes: u64,
    /// Segments kept before compaction rewrites the live entries that pin the oldest ones.
    pub segments_max: usize,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions { segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT, segments_max: SEGMENTS_DEFAULT }
    }
}

impl LogOptions {
    pub fn validate(&self) -> Result<(), LogError> {
        let range = SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX;
        if !range.contains(&self.segment_size_bytes) {
            return Err(LogError::InvalidOptions {
                reason: format!("segment_size_bytes {} is outside {range:?}", self.segment_size_bytes),
            });
        }
        if self.segments_max < SEGMENTS_MIN {
            return Err(LogError::InvalidOptions {
                reason: format!("segments_max {} is below {SEGMENTS_MIN}", self.segments_max),
            });
        }
        Ok(())
    }
}
