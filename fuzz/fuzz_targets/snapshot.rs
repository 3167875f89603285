//! Arbitrary bytes as a snapshot's row stream: importing into a store either refuses them
//! (and keeps nothing) or leaves rows that check out whole, and those rows export to a stream
//! that imports to the same state. Never a panic.
#![no_main]

use cohort_core::ids::PartitionId;
use cohort_core::store::check::{check_partition, digest};
use cohort_core::store::snapshot::{export, import};
use cohort_core::store::{Commit, DedupLimits, Store, StoreError};
use libfuzzer_sys::fuzz_target;

const P: PartitionId = PartitionId(1);
/// The index the streams' states were applied through: any, for arbitrary bytes.
const APPLIED: u64 = u64::MAX;

fn import_into(store: &Store, bytes: &[u8]) -> bool {
    store
        .write(Commit::Lazy, |rows| {
            import(rows, P, APPLIED, &mut &bytes[..], &DedupLimits::DEFAULT)
                .map(|_| ())
                .map_err(|e| StoreError::Corrupt { reason: e.to_string() })
        })
        .is_ok()
}

fuzz_target!(|bytes: &[u8]| {
    let store = Store::in_memory();
    if !import_into(&store, bytes) {
        return;
    }
    let rows = store.read().expect("reads");
    check_partition(&rows, P, APPLIED, &DedupLimits::DEFAULT).expect("imported rows check out");
    let mut again = Vec::new();
    export(&rows, P, &mut again).expect("exports to memory");
    let other = Store::in_memory();
    assert!(import_into(&other, &again), "own export imports");
    assert_eq!(digest(&other.read().expect("reads"), P).unwrap(), digest(&rows, P).unwrap());
});
