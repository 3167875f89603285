//! The log engine's suites on both disks.

use cohort_core::env::Disk;
use cohort_storage::conformance::{log_crash_suite, log_suite};
use cohort_storage::{FsDisk, SimDisk};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[test]
fn log_suite_on_fs_disk() {
    let root = tempfile::tempdir().unwrap();
    let next = AtomicU64::new(0);
    log_suite(|| {
        let dir = root.path().join(next.fetch_add(1, Ordering::Relaxed).to_string());
        Arc::new(FsDisk::new(dir).unwrap()) as Arc<dyn Disk>
    });
}

#[test]
fn log_suite_on_sim_disk() {
    let next = AtomicU64::new(0);
    log_suite(|| Arc::new(SimDisk::new(next.fetch_add(1, Ordering::Relaxed))) as Arc<dyn Disk>);
}

#[test]
fn log_crash_suite_on_sim_disk() {
    log_crash_suite(|seed| Arc::new(SimDisk::new(seed)));
}

#[test]
fn log_crash_suite_with_every_crash_tearing() {
    log_crash_suite(|seed| {
        let disk = SimDisk::new(seed);
        disk.set_torn_write_probability(1.0);
        Arc::new(disk)
    });
}
