//! Bugs planted on purpose, to prove the simulator catches what it claims to. They exist only
//! when the `planted-bugs` feature is on (the simulator turns it on; production builds never
//! do), and only one is active at a time, chosen at start by `activate`.

/// A deliberate defect, named as the campaign runner's `--bug` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Group commit acknowledges writes before the fsync that makes them durable.
    AckBeforeFsync,
    /// A replica sends its vote before the hard state that records it is durable.
    ForgetVote,
    /// A leader applies (and acknowledges) entries as soon as it appends them.
    ApplyUncommitted,
    /// A leader serves linearizable reads from its own state, without a ReadIndex round.
    StaleRead,
    /// Group commit's fsync lags one batch: each batch first syncs the one before it, then is
    /// appended and acknowledged, so the newest batch is acknowledged but not durable until
    /// the next one comes. Batches that install, compact or remove still sync before they are
    /// acknowledged, so snapshot files are never deleted early and every node can restart:
    /// what is lost is only acknowledged entries, which the checkers must notice.
    LaggingFsync,
    /// A leader answers a write as soon as it has proposed it, as if it had applied, before
    /// any quorum has the entry (the entry still applies normally if it commits). The node's
    /// own assertions stay quiet; only the clients' view shows the bug.
    AckUncommitted,
    /// A follower silently skips some committed writes (it records their index as applied but
    /// changes nothing), so its state drifts from the leader's without any error.
    SkipApply,
    /// A linearizable read is answered as soon as its read index is confirmed, before this
    /// replica's store has applied through it.
    ReadBeforeApply,
    /// The applier commits a batch's effects, then the applied index (with the dedup results)
    /// in a transaction of its own: a crash between them makes the replica apply entries
    /// again on top of their own effects.
    ApplyNotAtomic,
    /// A quiesced follower ignores its node learning that its leader's node went down: it
    /// sleeps on, and the partition never elects a new leader until something else wakes it.
    QuiesceIgnoresLiveness,
    /// With Raft off, a linearizable read is answered from the store at once, as if every
    /// acknowledged write were applied: after a restart, it misses the writes the log still has
    /// to apply again (the bug `three-raft-mode` found in the first build of Raft off).
    RaftOffReadEarly,
    /// The applier tells partitions that their state is durable as soon as the durable commit
    /// is written, before the store's fsync it owes returns: a crash between the two loses
    /// applied entries that the partitions' logs have already dropped.
    DurableBeforeStoreSync,
}

impl Bug {
    pub const ALL: [Bug; 12] = [
        Bug::AckBeforeFsync,
        Bug::ForgetVote,
        Bug::ApplyUncommitted,
        Bug::StaleRead,
        Bug::LaggingFsync,
        Bug::AckUncommitted,
        Bug::SkipApply,
        Bug::ReadBeforeApply,
        Bug::ApplyNotAtomic,
        Bug::QuiesceIgnoresLiveness,
        Bug::RaftOffReadEarly,
        Bug::DurableBeforeStoreSync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::ForgetVote => "forget-vote",
            Bug::ApplyUncommitted => "apply-uncommitted",
            Bug::StaleRead => "stale-read",
            Bug::LaggingFsync => "lagging-fsync",
            Bug::AckUncommitted => "ack-uncommitted",
            Bug::SkipApply => "skip-apply",
            Bug::ReadBeforeApply => "read-before-apply",
            Bug::QuiesceIgnoresLiveness => "quiesce-ignores-liveness",
            Bug::ApplyNotAtomic => "apply-not-atomic",
            Bug::RaftOffReadEarly => "raft-off-read-early",
            Bug::DurableBeforeStoreSync => "durable-before-store-sync",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(feature = "planted-bugs")]
mod active {
    use super::Bug;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0: none; otherwise 1 + the bug's index in `Bug::ALL`. Process-wide: the simulator runs
    /// each seed in its own process.
    static ACTIVE: AtomicU8 = AtomicU8::new(0);

    pub fn activate(bug: Option<Bug>) {
        let value = bug.map_or(0, |b| 1 + Bug::ALL.iter().position(|&x| x == b).expect("listed") as u8);
        ACTIVE.store(value, Ordering::Relaxed);
    }

    pub fn is_active(bug: Bug) -> bool {
        let value = ACTIVE.load(Ordering::Relaxed);
        value != 0 && Bug::ALL[value as usize - 1] == bug
    }
}

#[cfg(feature = "planted-bugs")]
pub use active::activate;

/// Whether `bug` is planted in this run. Without the `planted-bugs` feature this is always
/// false, so the defective branches compile away.
#[inline(always)]
pub fn is_active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        active::is_active(bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}
