//! A snapshot file on disk as a broken disk or a hostile peer could leave it: a real file with
//! bytes flipped, cut short or grown, or bytes of any kind. `check_file` (what a receiver runs
//! before it installs a transfer, and `cohort debug verify` on every snapshot file) returns
//! an error or the file's header, never panics, and never passes a file whose bytes differ
//! from what they were unless the mutation also rewrote the checksum to match. A file it
//! passes streams to a store import that either refuses it or leaves rows that check out.
#![no_main]

use cohort_core::env::{write_file_atomic, Disk};
use cohort_core::ids::PartitionId;
use cohort_core::snapshot::{check_file, SnapshotStore};
use cohort_core::store::check::check_partition;
use cohort_core::store::{self, Commit, DedupLimits, Store, StoreError};
use cohort_storage::SimDisk;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const PARTITION: PartitionId = PartitionId(4);

#[path = "common/snapshot_fixture.rs"]
mod snapshot_fixture;

use snapshot_fixture::{snapshot_file, Fixture};

/// A real snapshot file of a few small blobs.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| snapshot_file(PARTITION, 3, 200, 7))
}

/// The fixture changed as `input` says, or `input`'s own bytes.
fn mutated(input: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let fixture = fixture();
    if input.ratio(1, 8)? {
        return Ok(input.bytes(input.len())?.to_vec());
    }
    let mut file = fixture.file.clone();
    for _ in 0..input.int_in_range(1..=4)? {
        match input.int_in_range(0..=2)? {
            0 if !file.is_empty() => {
                let at = input.choose_index(file.len())?;
                file[at] ^= input.int_in_range(1..=255)?;
            }
            1 => file.truncate(input.int_in_range(0..=file.len())?),
            _ => {
                let len = input.int_in_range(0..=16)?;
                file.extend_from_slice(input.bytes(len)?);
            }
        }
    }
    Ok(file)
}

fuzz_target!(|bytes: &[u8]| {
    let mut input = Unstructured::new(bytes);
    let Ok(file) = mutated(&mut input) else { return };
    let fixture = fixture();
    let sim = SimDisk::new(2);
    sim.create_dir_all(fixture.path.parent().unwrap()).unwrap();
    write_file_atomic(&sim, &fixture.path, &file).unwrap();
    let disk: Arc<dyn Disk> = Arc::new(sim);
    let Ok(meta) = check_file(&disk, &fixture.path) else { return };
    if file == fixture.file {
        assert_eq!(meta, fixture.meta, "the unchanged file reads back as written");
        return;
    }
    // A changed file passed: its checksum was rewritten to match. It must still never break
    // a store that imports it.
    let files = SnapshotStore::new(disk, "default", PARTITION);
    let Ok(mut rows) = files.open_rows(meta.position) else { return };
    let imported = Store::in_memory();
    let outcome = imported.write(Commit::Lazy, |writer| {
        store::snapshot::import(writer, PARTITION, meta.position.index, &mut rows, &DedupLimits::DEFAULT)
            .map(|_| ())
            .map_err(|e| StoreError::Corrupt { reason: e.to_string() })
    });
    if outcome.is_ok() {
        let read = imported.read().unwrap();
        check_partition(&read, PARTITION, meta.position.index, &DedupLimits::DEFAULT).expect("imported rows check out");
    }
});
