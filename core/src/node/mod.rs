//! A node's partitions as actors: each loaded replica is an actor with a bounded mailbox,
//! stepped by one of a fixed set of workers (`workers.rs`), and the [`Router`] delivers
//! messages and requests to them.
//!
//! The actor is the only code around a [`Partition`](crate::partition::Partition) that waits
//! on anything: it turns mailbox inputs, log completions and its ticks into `handle_*` calls
//! and carries out what `poll_output` returns. It is written against
//! [`Env`](crate::env::Env) only, so the same code runs on tokio and on madsim.

mod actor;
mod applier;
pub mod identity;
pub mod liveness;
mod persisted;
mod router;
mod service;
mod workers;

pub use actor::PartitionInput;
pub use applier::{run_applier, ApplierOptions, ApplyDone, ApplyRequest, ApplyResult, ApplyWork, DurableSignal};
pub use router::{RouteError, Router, RouterConfig, RouterStats};
pub use service::{
    place, ApiError, MembersAction, NodeService, PartitionView, ReadAnswer, Retirement, RoutedRepository, UploadBegun,
    DIRECTORY, PREPARE_IN_PLACE_BYTES_MAX, UPLOAD_PIECE_BYTES,
};
pub use workers::stepping_partition;
