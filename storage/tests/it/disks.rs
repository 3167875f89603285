//! The `Disk` conformance suites on both disks.

use cohort_core::env::Disk;
use cohort_storage::conformance::{disk_suite, sim_crash_suite};
use cohort_storage::{FsDisk, SimDisk};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[test]
fn fs_disk_passes_the_disk_suite() {
    let root = tempfile::tempdir().unwrap();
    let next = AtomicU64::new(0);
    disk_suite(|| {
        let dir = root.path().join(next.fetch_add(1, Ordering::Relaxed).to_string());
        Arc::new(FsDisk::new(dir).unwrap()) as Arc<dyn Disk>
    });
}

#[test]
fn sim_disk_passes_the_disk_suite() {
    let next = AtomicU64::new(0);
    disk_suite(|| Arc::new(SimDisk::new(next.fetch_add(1, Ordering::Relaxed))) as Arc<dyn Disk>);
}

#[test]
fn sim_disk_passes_the_crash_suite() {
    sim_crash_suite(|seed| Arc::new(SimDisk::new(seed)));
}

#[test]
fn sim_disk_crash_with_every_write_torn() {
    sim_crash_suite(|seed| {
        let disk = SimDisk::new(seed);
        disk.set_torn_write_probability(1.0);
        Arc::new(disk)
    });
}

#[test]
fn the_real_file_system_reports_its_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FsDisk::new(dir.path()).unwrap();
    let free = disk.available_bytes().unwrap();
    assert!(free > 0 && free < 1 << 60, "free space {free}");
}
