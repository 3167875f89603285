//! Segment files: their names (`<20-digit seq>.log`), listing them, and reading one record
//! back from a segment by its offset.

use super::record::Record;
use super::LogError;
use crate::limits::{RECORD_HEADER_BYTES, RECORD_SIZE_BYTES_MAX, SEGMENT_SEQ_MAX};
use cohort_core::codec;
use cohort_core::env::Disk;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".log";
const DIGITS: usize = 20;

/// File name of segment `seq`: zero-padded so that names sort like numbers.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:0DIGITS$}{SUFFIX}")
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

/// The sequence number a segment file name stands for, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence numbers of the segments in `dir`, ascending. Other files are reported and
/// left alone: the log never deletes what it did not write.
pub fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut seqs = Vec::new();
    for name in disk.list(dir)? {
        match parse_segment_file_name(&name) {
            Some(seq) if seq <= SEGMENT_SEQ_MAX => seqs.push(seq),
            Some(seq) => {
                return Err(LogError::Corrupt {
                    path: segment_path(dir, seq),
                    offset: 0,
                    reason: format!("segment number {seq} is over SEGMENT_SEQ_MAX ({SEGMENT_SEQ_MAX})"),
                })
            }
            None => {
                tracing::warn!(dir = %dir.display(), file = %name, "ignoring a file that is not a log segment")
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads and decodes the record whose frame starts at `offset` in segment `seq`.
pub fn read_record(disk: &dyn Disk, dir: &Path, seq: u64, offset: u64) -> Result<Record, LogError> {
    let path = segment_path(dir, seq);
    let corrupt = |reason: String| LogError::Corrupt { path: path.clone(), offset, reason };
    let header = disk.read_at(&path, offset, RECORD_HEADER_BYTES)?;
    if header.len() != RECORD_HEADER_BYTES {
        return Err(corrupt(format!("record header cut short ({} bytes)", header.len())));
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > RECORD_SIZE_BYTES_MAX {
        return Err(corrupt(format!("record length {len} is out of bounds")));
    }
    let payload = disk.read_at(&path, offset + RECORD_HEADER_BYTES as u64, len)?;
    if payload.len() != len {
        return Err(corrupt(format!("record of {len} bytes cut short at {}", payload.len())));
    }
    if crc32c::crc32c(&payload) != crc {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    codec::decode::<Record>("log record", &payload).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("42.log"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.log.tmp"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_segment_file_name("99999999999999999999.log"), None);
    }
}
