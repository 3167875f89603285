//! Hooks through which a test harness watches replicas without changing what they do: the
//! simulator's Raft-safety checkers see every applied entry and every leadership won. Calls are
//! synchronous and must not block; production installs none.

use crate::ids::{NodeId, PartitionId};
use crate::partition::ElectionCause;

pub trait Observer: std::fmt::Debug + Send + Sync + 'static {
    /// Replica (`node`, `partition`) applied the committed entry `index` of `term`.
    fn applied(&self, node: NodeId, partition: PartitionId, index: u64, term: u64, data: &[u8]);
    /// Replica (`node`, `partition`) became leader of `term`.
    fn became_leader(&self, node: NodeId, partition: PartitionId, term: u64);
    /// Replica (`node`, `partition`) replaced its state with a snapshot received through
    /// `index`.
    fn snapshot_installed(&self, node: NodeId, partition: PartitionId, index: u64) {
        let _ = (node, partition, index);
    }
    /// Replica (`node`, `partition`), at `term`, started an election (pre-vote or vote) for
    /// `cause`.
    fn election_started(&self, node: NodeId, partition: PartitionId, term: u64, cause: ElectionCause) {
        let _ = (node, partition, term, cause);
    }
    /// Replica (`node`, `partition`) was unloaded (`loaded`: false) or loaded again (true).
    fn load_changed(&self, node: NodeId, partition: PartitionId, loaded: bool) {
        let _ = (node, partition, loaded);
    }
}
