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

#[test]
fn a_wiped_sim_disk_is_empty_and_its_old_handles_fail() {
    use cohort_core::env::write_file_atomic;
    use std::path::Path;
    let disk = SimDisk::new(1);
    disk.create_dir_all(Path::new("a/b")).unwrap();
    write_file_atomic(&disk, Path::new("a/b/f"), b"synced").unwrap();
    let mut open = disk.open_append(Path::new("a/g")).unwrap();
    disk.wipe();
    assert!(!disk.exists(Path::new("a")).unwrap(), "nothing survives a wipe, synced or not");
    assert!(open.append(b"x").is_err(), "a handle from before the wipe is dead");
    write_file_atomic(&disk, Path::new("f"), b"new").unwrap();
    assert_eq!(disk.read(Path::new("f")).unwrap(), b"new");
}
