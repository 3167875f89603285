//! A node's partitions as actors: each replica runs in its own task with a bounded mailbox,
//! and the [`Router`] delivers messages and requests to them.
//!
//! The actor is the only async code around a [`Partition`](crate::partition::Partition): it
//! turns mailbox inputs, log completions and its timer into `handle_*` calls and carries out
//! what `poll_output` returns. It is written against [`Env`](crate::env::Env) only, so the same
//! code runs on tokio and on madsim.

mod actor;
mod applier;
pub mod liveness;
mod persisted;
mod router;
mod service;

pub use actor::PartitionInput;
pub use applier::{run_applier, ApplierOptions, ApplyDone, ApplyRequest, ApplyResult, ApplyWork, DurableSignal};
pub use router::{RouteError, Router, RouterConfig, RouterStats};
pub use service::{
    place, ApiError, MembersAction, NodeService, PartitionView, ReadAnswer, RoutedRepository, UploadBegun, DIRECTORY,
    UPLOAD_PIECE_BYTES,
};
