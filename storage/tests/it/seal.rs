//! The state store's seal (`cohort_core::store::seal`) on a real disk model.

use cohort_core::env::{write_file_atomic, Disk};
use cohort_core::store::seal::{check, seal, unseal, SealCheck};
use cohort_core::store::STORE_FILE;
use cohort_storage::SimDisk;
use std::path::Path;

const READ_CHUNK_BYTES: usize = 1024 * 1024;

#[test]
fn a_sealed_file_matches_until_a_byte_changes_and_unsealing_forgets() {
    let disk = SimDisk::new(3);
    disk.create_dir_all(Path::new("state")).unwrap();
    let content: Vec<u8> = (0..3 * READ_CHUNK_BYTES + 17).map(|i| (i * 7) as u8).collect();
    write_file_atomic(&disk, Path::new(STORE_FILE), &content).unwrap();
    assert_eq!(check(&disk).unwrap(), SealCheck::Absent);
    seal(&disk).unwrap();
    assert_eq!(check(&disk).unwrap(), SealCheck::Matches);
    for at in [0, READ_CHUNK_BYTES, content.len() - 1] {
        let mut flipped = content.clone();
        flipped[at] ^= 0x10;
        write_file_atomic(&disk, Path::new(STORE_FILE), &flipped).unwrap();
        assert!(matches!(check(&disk).unwrap(), SealCheck::Differs { .. }), "a flip at {at} is found");
    }
    write_file_atomic(&disk, Path::new(STORE_FILE), &content[..10]).unwrap();
    assert!(matches!(check(&disk).unwrap(), SealCheck::Differs { reason } if reason.contains("bytes")));
    unseal(&disk).unwrap();
    assert_eq!(check(&disk).unwrap(), SealCheck::Absent);
    unseal(&disk).unwrap();
}
