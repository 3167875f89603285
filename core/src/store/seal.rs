//! A checksum of the whole state store file, written when a node stops cleanly and removed
//! before the store is opened for writing: offline, `cohort debug verify` compares the file
//! with it, which finds a flipped byte anywhere in the file, free pages included (redb's own
//! checksums cover only the pages its trees reach). A node that crashed leaves no seal, and the
//! check then rests on redb's integrity check alone.

use super::STORE_FILE;
use crate::env::{write_file_atomic, Disk, DiskError};
use std::path::Path;

/// Next to the store file: `size <bytes>` and `crc32c <hex>` lines.
pub const SEAL_FILE: &str = "state/store.redb.seal";

/// The store file is read this much at a time.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// What the seal says of the store file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealCheck {
    /// No seal: the node did not stop cleanly, or never stopped since it started.
    Absent,
    /// The file is as the node left it.
    Matches,
    /// The file changed since the node stopped.
    Differs { reason: String },
}

/// Size and CRC32C of the store file, read a chunk at a time.
fn digest(disk: &dyn Disk) -> Result<(u64, u32), DiskError> {
    let path = Path::new(STORE_FILE);
    let (mut offset, mut crc) = (0u64, 0u32);
    loop {
        let chunk = disk.read_at(path, offset, READ_CHUNK_BYTES)?;
        crc = crc32c::crc32c_append(crc, &chunk);
        offset += chunk.len() as u64;
        if chunk.len() < READ_CHUNK_BYTES {
            return Ok((offset, crc));
        }
    }
}

/// Seals the store file as it is now. Only once nothing has it open for writing.
pub fn seal(disk: &dyn Disk) -> Result<(), DiskError> {
    let (size, crc) = digest(disk)?;
    write_file_atomic(disk, Path::new(SEAL_FILE), format!("size {size}\ncrc32c {crc:08x}\n").as_bytes())
}

/// Removes the seal (durably), before the store is opened for writing.
pub fn unseal(disk: &dyn Disk) -> Result<(), DiskError> {
    match disk.remove_file(Path::new(SEAL_FILE)) {
        Ok(()) => disk.sync_dir(Path::new(super::STORE_DIR)),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Compares the store file with its seal.
pub fn check(disk: &dyn Disk) -> Result<SealCheck, DiskError> {
    let text = match disk.read(Path::new(SEAL_FILE)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.is_not_found() => return Ok(SealCheck::Absent),
        Err(e) => return Err(e),
    };
    let field = |name: &str| text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')).map(str::trim);
    let sealed = field("size")
        .and_then(|s| s.parse::<u64>().ok())
        .zip(field("crc32c").and_then(|c| u32::from_str_radix(c, 16).ok()));
    let Some((size, crc)) = sealed else {
        return Ok(SealCheck::Differs { reason: format!("the seal {SEAL_FILE} is unreadable: {text:?}") });
    };
    let (actual_size, actual_crc) = digest(disk)?;
    Ok(if actual_size != size {
        SealCheck::Differs { reason: format!("{actual_size} bytes, sealed at {size}") }
    } else if actual_crc != crc {
        SealCheck::Differs { reason: format!("CRC32C {actual_crc:08x}, sealed as {crc:08x}") }
    } else {
        SealCheck::Matches
    })
}
