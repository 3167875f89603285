//! The `Disk` contract as named cases: [`disk_suite`] for every disk, [`sim_crash_suite`] for
//! the crash semantics of [`SimDisk`].

use crate::sim_disk::SimDisk;
use cohort_core::env::{write_file_atomic, Disk};
use std::path::Path;
use std::sync::Arc;

type DiskCase = (&'static str, fn(&dyn Disk));

/// Runs every case of the `Disk` contract, each on a fresh disk from `make`. A failing case
/// panics after its name was printed.
pub fn disk_suite(make: impl Fn() -> Arc<dyn Disk>) {
    let cases: &[DiskCase] = &[
        ("append_read_len", append_read_len),
        ("second_handle_appends_at_the_end", second_handle_appends_at_the_end),
        ("read_at_bounds", read_at_bounds),
        ("missing_paths", missing_paths),
        ("list_is_sorted_and_shallow", list_is_sorted_and_shallow),
        ("rename_moves_and_replaces", rename_moves_and_replaces),
        ("remove_file_and_dir", remove_file_and_dir),
        ("truncate_cuts", truncate_cuts),
        ("sync_dir_and_file_sync", sync_dir_and_file_sync),
        ("write_file_atomic_replaces", write_file_atomic_replaces),
        ("exists_for_files_and_dirs", exists_for_files_and_dirs),
        ("positional_write_read_and_resize", positional_write_read_and_resize),
        ("positional_reopen_sees_what_was_written", positional_reopen_sees_what_was_written),
    ];
    for (name, case) in cases {
        eprintln!("disk_suite: {name}");
        case(&*make());
    }
}

fn p(path: &str) -> &Path {
    Path::new(path)
}

fn write(disk: &dyn Disk, path: &str, bytes: &[u8]) {
    let mut file = disk.open_append(p(path)).unwrap();
    file.append(bytes).unwrap();
    file.sync().unwrap();
}

fn append_read_len(disk: &dyn Disk) {
    disk.create_dir_all(p("d")).unwrap();
    let mut file = disk.open_append(p("d/f")).unwrap();
    assert_eq!(file.len(), 0);
    assert!(file.is_empty());
    file.append(b"hello").unwrap();
    file.append(b" world").unwrap();
    assert_eq!(file.len(), 11);
    // Appended bytes are readable before any sync.
    assert_eq!(disk.read(p("d/f")).unwrap(), b"hello world");
    file.sync().unwrap();
    assert_eq!(disk.read(p("d/f")).unwrap(), b"hello world");
    file.append(b"").unwrap();
    assert_eq!(file.len(), 11);
}

fn second_handle_appends_at_the_end(disk: &dyn Disk) {
    write(disk, "f", b"abc");
    let mut again = disk.open_append(p("f")).unwrap();
    assert_eq!(again.len(), 3, "an opened file reports its existing length");
    again.append(b"def").unwrap();
    assert_eq!(again.len(), 6);
    assert_eq!(disk.read(p("f")).unwrap(), b"abcdef");
}

fn read_at_bounds(disk: &dyn Disk) {
    let bytes: Vec<u8> = (0..100).collect();
    write(disk, "f", &bytes);
    assert_eq!(disk.read_at(p("f"), 10, 5).unwrap(), &bytes[10..15]);
    assert_eq!(disk.read_at(p("f"), 0, 100).unwrap(), bytes);
    assert_eq!(disk.read_at(p("f"), 95, 10).unwrap(), &bytes[95..], "short only at the end");
    assert!(disk.read_at(p("f"), 100, 5).unwrap().is_empty());
    assert!(disk.read_at(p("f"), 1000, 5).unwrap().is_empty());
    assert!(disk.read_at(p("f"), 3, 0).unwrap().is_empty());
}

fn missing_paths(disk: &dyn Disk) {
    assert!(disk.read(p("nope")).unwrap_err().is_not_found());
    assert!(disk.read_at(p("nope"), 0, 1).unwrap_err().is_not_found());
    assert!(disk.remove_file(p("nope")).unwrap_err().is_not_found());
    assert!(disk.rename(p("nope"), p("other")).is_err());
    assert!(disk.truncate(p("nope"), 0).is_err());
    assert!(!disk.exists(p("nope")).unwrap());
    assert!(disk.list(p("no_dir")).unwrap().is_empty(), "listing a missing directory is empty");
    assert!(disk.open_append(p("no_dir/f")).is_err(), "no file without its directory");
    assert!(disk.sync_dir(p("no_dir")).is_err());
}

fn list_is_sorted_and_shallow(disk: &dyn Disk) {
    disk.create_dir_all(p("d/sub")).unwrap();
    for name in ["d/b", "d/a", "d/c", "d/sub/x"] {
        write(disk, name, name.as_bytes());
    }
    assert_eq!(disk.list(p("d")).unwrap(), vec!["a", "b", "c", "sub"]);
    assert_eq!(disk.list(p("d/sub")).unwrap(), vec!["x"]);
    assert!(disk.list(p("")).unwrap().contains(&"d".to_owned()));
}

fn rename_moves_and_replaces(disk: &dyn Disk) {
    disk.create_dir_all(p("d")).unwrap();
    disk.create_dir_all(p("e")).unwrap();
    write(disk, "d/a", b"A");
    write(disk, "d/b", b"B");
    disk.rename(p("d/a"), p("d/z")).unwrap();
    assert!(!disk.exists(p("d/a")).unwrap());
    assert_eq!(disk.read(p("d/z")).unwrap(), b"A");
    disk.rename(p("d/b"), p("d/z")).unwrap();
    assert_eq!(disk.read(p("d/z")).unwrap(), b"B", "rename replaces the target");
    assert_eq!(disk.list(p("d")).unwrap(), vec!["z"]);
    disk.rename(p("d/z"), p("e/z")).unwrap();
    assert_eq!(disk.read(p("e/z")).unwrap(), b"B");
    assert!(disk.list(p("d")).unwrap().is_empty());
    // A directory moves with its content.
    disk.rename(p("e"), p("f")).unwrap();
    assert_eq!(disk.read(p("f/z")).unwrap(), b"B");
}

fn remove_file_and_dir(disk: &dyn Disk) {
    disk.create_dir_all(p("d/sub")).unwrap();
    write(disk, "d/a", b"A");
    write(disk, "d/sub/b", b"B");
    disk.remove_file(p("d/a")).unwrap();
    assert!(!disk.exists(p("d/a")).unwrap());
    assert_eq!(disk.list(p("d")).unwrap(), vec!["sub"]);
    disk.remove_dir_all(p("d")).unwrap();
    assert!(!disk.exists(p("d")).unwrap());
    assert!(!disk.exists(p("d/sub/b")).unwrap());
    assert!(disk.list(p("d")).unwrap().is_empty());
}

fn truncate_cuts(disk: &dyn Disk) {
    write(disk, "f", b"abcdef");
    disk.truncate(p("f"), 3).unwrap();
    assert_eq!(disk.read(p("f")).unwrap(), b"abc");
    let mut file = disk.open_append(p("f")).unwrap();
    assert_eq!(file.len(), 3);
    file.append(b"x").unwrap();
    assert_eq!(disk.read(p("f")).unwrap(), b"abcx", "appends continue at the new end");
    disk.truncate(p("f"), 0).unwrap();
    assert!(disk.read(p("f")).unwrap().is_empty());
}

fn sync_dir_and_file_sync(disk: &dyn Disk) {
    disk.create_dir_all(p("d")).unwrap();
    disk.sync_dir(p("")).unwrap();
    let mut file = disk.open_append(p("d/f")).unwrap();
    file.sync().unwrap();
    file.append(b"x").unwrap();
    file.sync().unwrap();
    file.sync().unwrap();
    disk.sync_dir(p("d")).unwrap();
}

fn write_file_atomic_replaces(disk: &dyn Disk) {
    disk.create_dir_all(p("d")).unwrap();
    write_file_atomic(disk, p("d/state"), b"v1").unwrap();
    assert_eq!(disk.read(p("d/state")).unwrap(), b"v1");
    write_file_atomic(disk, p("d/state"), b"version two").unwrap();
    assert_eq!(disk.read(p("d/state")).unwrap(), b"version two");
    assert_eq!(disk.list(p("d")).unwrap(), vec!["state"], "no temporary file is left behind");
}

fn exists_for_files_and_dirs(disk: &dyn Disk) {
    assert!(disk.exists(p("")).unwrap(), "the root exists");
    disk.create_dir_all(p("a/b")).unwrap();
    assert!(disk.exists(p("a")).unwrap());
    assert!(disk.exists(p("a/b")).unwrap());
    write(disk, "a/b/f", b"");
    assert!(disk.exists(p("a/b/f")).unwrap());
    disk.create_dir_all(p("a/b")).unwrap();
    assert!(disk.exists(p("a/b/f")).unwrap(), "create_dir_all of an existing directory keeps it");
}

fn positional_write_read_and_resize(disk: &dyn Disk) {
    let file = disk.open_positional(p("db")).unwrap();
    assert_eq!(file.len().unwrap(), 0);
    let mut one = [0u8; 1];
    assert!(file.read_at(0, &mut one).is_err(), "reading past the end is an error");
    file.set_len(4096).unwrap();
    assert_eq!(file.len().unwrap(), 4096);
    let mut page = vec![1u8; 4096];
    file.read_at(0, &mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0), "new bytes read as zeros");
    file.write_at(100, b"hello").unwrap();
    file.write_at(4091, b"world").unwrap();
    let mut five = [0u8; 5];
    file.read_at(100, &mut five).unwrap();
    assert_eq!(&five, b"hello", "written bytes read back before any sync");
    file.read_at(4091, &mut five).unwrap();
    assert_eq!(&five, b"world");
    assert!(file.read_at(4092, &mut five).is_err(), "a read crossing the end is an error");
    file.write_at(102, b"LL").unwrap();
    file.read_at(100, &mut five).unwrap();
    assert_eq!(&five, b"heLLo", "a write changes only its own range");
    file.sync().unwrap();
    file.set_len(102).unwrap();
    assert_eq!(file.len().unwrap(), 102);
    file.set_len(200).unwrap();
    let mut tail = [9u8; 98];
    file.read_at(102, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0), "bytes cut and grown back read as zeros");
    file.sync().unwrap();
    assert_eq!(disk.read(p("db")).unwrap().len(), 200, "the whole-file read sees the same file");
}

fn positional_reopen_sees_what_was_written(disk: &dyn Disk) {
    {
        let file = disk.open_positional(p("db")).unwrap();
        file.set_len(10).unwrap();
        file.write_at(0, b"0123456789").unwrap();
        file.sync().unwrap();
    }
    let file = disk.open_positional(p("db")).unwrap();
    assert_eq!(file.len().unwrap(), 10, "opening an existing file keeps it");
    let mut all = [0u8; 10];
    file.read_at(0, &mut all).unwrap();
    assert_eq!(&all, b"0123456789");
}

type CrashCase = (&'static str, fn(&dyn Fn(u64) -> Arc<SimDisk>));

/// Runs the crash cases of [`SimDisk`], each on fresh disks from `make(seed)`: synced data
/// survives; unsynced data may vanish or tear but never changes synced bytes; directory
/// operations not followed by a `sync_dir` are undone.
pub fn sim_crash_suite(make: impl Fn(u64) -> Arc<SimDisk>) {
    let cases: &[CrashCase] = &[
        ("synced_data_survives", synced_data_survives),
        ("unsynced_tail_vanishes_or_tears_after_synced_bytes", unsynced_tail_vanishes_or_tears),
        ("unsynced_creation_is_undone", unsynced_creation_is_undone),
        ("unsynced_rename_is_undone", unsynced_rename_is_undone),
        ("unsynced_removal_is_undone", unsynced_removal_is_undone),
        ("directory_needs_its_parent_synced", directory_needs_its_parent_synced),
        ("renamed_directory_keeps_its_files", renamed_directory_keeps_its_files),
        ("failed_sync_makes_nothing_durable", failed_sync_makes_nothing_durable),
        ("failed_append_writes_nothing", failed_append_writes_nothing),
        ("handles_from_before_a_crash_fail", handles_from_before_a_crash_fail),
        ("truncate_is_durable", truncate_is_durable),
        ("same_seed_same_crash", same_seed_same_crash),
        ("write_file_atomic_is_atomic", write_file_atomic_is_atomic),
        ("power_loss_stops_every_operation", power_loss_stops_every_operation),
        ("in_place_synced_bytes_survive", in_place_synced_bytes_survive),
        ("in_place_writes_survive_vanish_or_tear_byte_by_byte", in_place_writes_survive_vanish_or_tear),
        ("in_place_length_changes_are_all_or_nothing", in_place_length_changes_are_all_or_nothing),
        ("in_place_failed_sync_makes_nothing_durable", in_place_failed_sync_makes_nothing_durable),
    ];
    for (name, case) in cases {
        eprintln!("sim_crash_suite: {name}");
        case(&make);
    }
}

const SEEDS: u64 = 200;

/// A synced file `d/f` holding `bytes`, with `d` durable too.
fn durable_file(disk: &SimDisk, bytes: &[u8]) {
    disk.create_dir_all(p("d")).unwrap();
    disk.sync_dir(p("")).unwrap();
    write(disk, "d/f", bytes);
    disk.sync_dir(p("d")).unwrap();
}

fn synced_data_survives(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..SEEDS {
        let disk = make(seed);
        durable_file(&disk, b"durable bytes");
        disk.crash();
        assert_eq!(disk.read(p("d/f")).unwrap(), b"durable bytes", "seed {seed}");
    }
}

fn unsynced_tail_vanishes_or_tears(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let synced: Vec<u8> = (0..64).collect();
    let unsynced: Vec<u8> = (100..=255).collect();
    let (mut vanished, mut whole, mut prefix, mut torn) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let disk = make(seed);
        durable_file(&disk, &synced);
        let mut file = disk.open_append(p("d/f")).unwrap();
        file.append(&unsynced[..100]).unwrap();
        file.append(&unsynced[100..]).unwrap();
        drop(file);
        disk.crash();
        let after = disk.read(p("d/f")).unwrap();
        assert!(after.len() >= synced.len(), "seed {seed}: synced bytes are never lost");
        assert!(after.len() <= synced.len() + unsynced.len(), "seed {seed}: nothing appears from nowhere");
        assert_eq!(&after[..synced.len()], &synced[..], "seed {seed}: synced bytes never change");
        let kept = &after[synced.len()..];
        if kept.is_empty() {
            vanished += 1;
        } else if kept == &unsynced[..] {
            whole += 1;
        } else if kept == &unsynced[..kept.len()] {
            prefix += 1;
        } else {
            torn += 1;
        }
        // Durable from now on: a second crash changes nothing.
        disk.crash();
        assert_eq!(disk.read(p("d/f")).unwrap(), after, "seed {seed}: what survived a crash is durable");
    }
    assert!(vanished > 0 && torn > 0, "crashes vary: {vanished} vanished, {whole} whole, {prefix} prefix, {torn} torn");
}

fn unsynced_creation_is_undone(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..20 {
        let disk = make(seed);
        durable_file(&disk, b"x");
        // Content synced, but the new name not: the file is gone after a crash.
        write(&*disk, "d/new", b"synced content");
        disk.crash();
        assert!(!disk.exists(p("d/new")).unwrap(), "seed {seed}");
        assert_eq!(disk.list(p("d")).unwrap(), vec!["f"]);
        write(&*disk, "d/new", b"synced content");
        disk.sync_dir(p("d")).unwrap();
        disk.crash();
        assert_eq!(disk.read(p("d/new")).unwrap(), b"synced content", "seed {seed}");
    }
}

fn unsynced_rename_is_undone(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(1);
    durable_file(&disk, b"content");
    disk.rename(p("d/f"), p("d/g")).unwrap();
    disk.crash();
    assert_eq!(disk.list(p("d")).unwrap(), vec!["f"]);
    assert_eq!(disk.read(p("d/f")).unwrap(), b"content");
    disk.rename(p("d/f"), p("d/g")).unwrap();
    disk.sync_dir(p("d")).unwrap();
    disk.crash();
    assert_eq!(disk.list(p("d")).unwrap(), vec!["g"]);
    assert_eq!(disk.read(p("d/g")).unwrap(), b"content");
}

fn unsynced_removal_is_undone(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(2);
    durable_file(&disk, b"content");
    disk.remove_file(p("d/f")).unwrap();
    assert!(!disk.exists(p("d/f")).unwrap());
    disk.crash();
    assert_eq!(disk.read(p("d/f")).unwrap(), b"content");
    disk.remove_file(p("d/f")).unwrap();
    disk.sync_dir(p("d")).unwrap();
    disk.crash();
    assert!(!disk.exists(p("d/f")).unwrap());
}

fn directory_needs_its_parent_synced(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(3);
    disk.create_dir_all(p("x/y")).unwrap();
    write(&*disk, "x/y/f", b"content");
    disk.sync_dir(p("x/y")).unwrap();
    disk.sync_dir(p("x")).unwrap();
    disk.crash();
    assert!(!disk.exists(p("x")).unwrap(), "x was never made durable in the root");
    disk.create_dir_all(p("x/y")).unwrap();
    write(&*disk, "x/y/f", b"content");
    disk.sync_dir(p("x/y")).unwrap();
    disk.sync_dir(p("x")).unwrap();
    disk.sync_dir(p("")).unwrap();
    disk.crash();
    assert_eq!(disk.read(p("x/y/f")).unwrap(), b"content");
}

fn renamed_directory_keeps_its_files(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(4);
    durable_file(&disk, b"content");
    disk.rename(p("d"), p("e")).unwrap();
    disk.sync_dir(p("")).unwrap();
    disk.crash();
    assert!(!disk.exists(p("d")).unwrap());
    assert_eq!(disk.read(p("e/f")).unwrap(), b"content");
}

fn failed_sync_makes_nothing_durable(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let mut lost = 0;
    for seed in 0..SEEDS {
        let disk = make(seed);
        durable_file(&disk, b"old");
        disk.set_fail_syncs(true);
        let mut file = disk.open_append(p("d/f")).unwrap();
        file.append(b"new bytes").unwrap();
        assert!(file.sync().is_err(), "seed {seed}: injected sync failure");
        assert!(disk.sync_dir(p("d")).is_err());
        assert!(disk.truncate(p("d/f"), 0).is_err(), "truncate syncs, so it fails too");
        write_file_atomic(&*disk, p("d/g"), b"g").unwrap_err();
        disk.set_fail_syncs(false);
        drop(file);
        disk.crash();
        let after = disk.read(p("d/f")).unwrap();
        assert!(after.starts_with(b"old"), "seed {seed}");
        if after.len() < b"oldnew bytes".len() {
            lost += 1;
        }
        assert!(!disk.exists(p("d/g")).unwrap(), "seed {seed}: a failed atomic write leaves no file");
    }
    assert!(lost > 0, "a failed sync leaves the bytes at the crash's mercy");
}

fn failed_append_writes_nothing(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(5);
    durable_file(&disk, b"abc");
    disk.set_fail_appends(true);
    let mut file = disk.open_append(p("d/f")).unwrap();
    assert!(file.append(b"def").is_err());
    assert_eq!(file.len(), 3);
    disk.set_fail_appends(false);
    file.append(b"def").unwrap();
    assert_eq!(disk.read(p("d/f")).unwrap(), b"abcdef");
}

fn handles_from_before_a_crash_fail(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(6);
    durable_file(&disk, b"abc");
    let mut file = disk.open_append(p("d/f")).unwrap();
    disk.crash();
    assert!(file.append(b"zombie").is_err(), "the process that held the handle died");
    assert!(file.sync().is_err());
    assert_eq!(disk.read(p("d/f")).unwrap(), b"abc");
    let mut file = disk.open_append(p("d/f")).unwrap();
    file.append(b"def").unwrap();
    assert_eq!(disk.read(p("d/f")).unwrap(), b"abcdef");
}

fn truncate_is_durable(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..20 {
        let disk = make(seed);
        durable_file(&disk, b"abcdef");
        let mut file = disk.open_append(p("d/f")).unwrap();
        file.append(b"ghi").unwrap();
        drop(file);
        disk.truncate(p("d/f"), 4).unwrap();
        disk.crash();
        assert_eq!(disk.read(p("d/f")).unwrap(), b"abcd", "seed {seed}");
    }
}

fn same_seed_same_crash(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let run = |seed: u64| {
        let disk = make(seed);
        durable_file(&disk, b"base");
        let mut file = disk.open_append(p("d/f")).unwrap();
        file.append(&[7u8; 1000]).unwrap();
        drop(file);
        disk.crash();
        disk.read(p("d/f")).unwrap()
    };
    for seed in 0..20 {
        assert_eq!(run(seed), run(seed), "seed {seed}");
    }
    assert!((0..20).any(|seed| run(seed) != run(seed + 1)), "different seeds crash differently");
}

fn write_file_atomic_is_atomic(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..50 {
        let disk = make(seed);
        disk.create_dir_all(p("d")).unwrap();
        disk.sync_dir(p("")).unwrap();
        write_file_atomic(&*disk, p("d/state"), b"old state").unwrap();
        // A crash right after the rename but before the directory sync: old or new, whole.
        let mut tmp = disk.open_append(p("d/state.tmp")).unwrap();
        tmp.append(b"new state").unwrap();
        tmp.sync().unwrap();
        disk.rename(p("d/state.tmp"), p("d/state")).unwrap();
        disk.crash();
        let after = disk.read(p("d/state")).unwrap();
        assert!(after == b"old state" || after == b"new state", "seed {seed}: {after:?}");
    }
}

fn power_loss_stops_every_operation(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(8);
    durable_file(&disk, b"abc");
    let mut file = disk.open_append(p("d/f")).unwrap();
    disk.set_power_loss_after_ops(Some(2));
    file.append(b"d").unwrap();
    file.sync().unwrap();
    assert!(!disk.is_powered_off());
    assert!(file.append(b"e").is_err(), "the third mutating operation finds the power out");
    assert!(disk.is_powered_off());
    assert!(disk.read(p("d/f")).is_err(), "nothing works without power");
    assert!(disk.exists(p("d")).is_err());
    disk.set_power_loss_after_ops(None);
    assert!(disk.is_powered_off(), "cancelling a schedule does not bring the power back");
    disk.crash();
    assert!(!disk.is_powered_off());
    assert_eq!(disk.read(p("d/f")).unwrap(), b"abcd", "what was synced before the power loss survives");
}

/// A synced in-place file `db` of `len` bytes, each `fill`.
fn durable_in_place(disk: &SimDisk, len: usize, fill: u8) -> Box<dyn cohort_core::env::PositionalFile> {
    let file = disk.open_positional(p("db")).unwrap();
    file.set_len(len as u64).unwrap();
    file.write_at(0, &vec![fill; len]).unwrap();
    file.sync().unwrap();
    disk.sync_dir(p("")).unwrap();
    file
}

fn in_place_synced_bytes_survive(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..SEEDS {
        let disk = make(seed);
        let file = durable_in_place(&disk, 64, 7);
        file.write_at(8, &[1; 8]).unwrap();
        file.sync().unwrap();
        drop(file);
        disk.crash();
        let mut expected = vec![7u8; 64];
        expected[8..16].fill(1);
        assert_eq!(disk.read(p("db")).unwrap(), expected, "seed {seed}");
    }
}

fn in_place_writes_survive_vanish_or_tear(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let (mut whole, mut vanished, mut torn) = (0, 0, 0);
    for seed in 0..SEEDS {
        let disk = make(seed);
        let file = durable_in_place(&disk, 256, 0xAA);
        // Two unsynced writes, one overlapping the other, and bytes between them untouched.
        file.write_at(16, &[0x11; 64]).unwrap();
        file.write_at(48, &[0x22; 64]).unwrap();
        file.write_at(200, &[0x33; 32]).unwrap();
        drop(file);
        disk.crash();
        let after = disk.read(p("db")).unwrap();
        assert_eq!(after.len(), 256, "seed {seed}: the length did not change");
        for (i, &byte) in after.iter().enumerate() {
            let allowed: &[u8] = match i {
                16..48 => &[0xAA, 0x11],
                48..80 => &[0xAA, 0x11, 0x22],
                80..112 => &[0xAA, 0x22],
                200..232 => &[0xAA, 0x33],
                _ => &[0xAA],
            };
            assert!(allowed.contains(&byte), "seed {seed}: byte {i} is {byte:#x}, neither old nor new");
        }
        let last = &after[200..232];
        if last.iter().all(|&b| b == 0x33) {
            whole += 1;
        } else if last.iter().all(|&b| b == 0xAA) {
            vanished += 1;
        } else {
            torn += 1;
        }
        disk.crash();
        assert_eq!(disk.read(p("db")).unwrap(), after, "seed {seed}: what survived a crash is durable");
    }
    assert!(whole > 0 && vanished > 0 && torn > 0, "writes vary: {whole} whole, {vanished} vanished, {torn} torn");
}

fn in_place_length_changes_are_all_or_nothing(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let (mut grown, mut kept) = (0, 0);
    for seed in 0..SEEDS {
        let disk = make(seed);
        let file = durable_in_place(&disk, 100, 5);
        file.set_len(300).unwrap();
        file.write_at(250, &[9; 10]).unwrap();
        drop(file);
        disk.crash();
        let after = disk.read(p("db")).unwrap();
        assert_eq!(&after[..100], &[5u8; 100][..], "seed {seed}: synced bytes never change");
        match after.len() {
            100 => kept += 1,
            300 => {
                grown += 1;
                assert!(after[100..250].iter().all(|&b| b == 0), "seed {seed}: grown bytes are zeros");
                assert!(after[250..260].iter().all(|&b| b == 0 || b == 9), "seed {seed}");
            }
            other => panic!("seed {seed}: length {other}, neither the old 100 nor the new 300"),
        }
    }
    assert!(grown > 0 && kept > 0, "length changes vary: {grown} grown, {kept} kept");
}

fn in_place_failed_sync_makes_nothing_durable(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..SEEDS {
        let disk = make(seed);
        let file = durable_in_place(&disk, 32, 1);
        file.write_at(0, &[2; 32]).unwrap();
        disk.set_fail_syncs(true);
        assert!(file.sync().is_err());
        disk.set_fail_syncs(false);
        drop(file);
        disk.crash();
        let after = disk.read(p("db")).unwrap();
        assert!(after.iter().all(|&b| b == 1 || b == 2), "seed {seed}: every byte old or new");
    }
}
