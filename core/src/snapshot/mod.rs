//! Snapshots of a partition's state machine: the files that hold them (`file`) and how a leader
//! streams one to a replica that needs it (`transfer`, over `message`'s wire types).
//!
//! A snapshot at position P is the state machine after applying entries 1..=P.index, plus the
//! membership at P. Its encoding is canonical, so every replica's snapshot at P is the same
//! bytes. Snapshots exist for two reasons: to compact the log (a replica saves one, then drops
//! the entries it covers) and to bring up a replica whose next entry was compacted away (the
//! leader sends its newest one).

mod file;
mod message;
mod transfer;

pub use file::{check_file, partition_dir, AuthorityDir, SnapshotError, SnapshotStore, DIRECTORY_AUTHORITY};
pub use message::{SnapshotChunk, SnapshotMessage};
pub use transfer::{CheckedSnapshot, Installed, PendingCheck, TransferEvents, Transfers};
