//! Log records and their framing: `[len u32 LE][crc32c u32 LE of payload][payload]`, the
//! payload being `codec::encode` of a [`Record`]; and the decoder of a segment's bytes, which
//! tells a torn tail from corruption and never panics on any input.

use crate::limits::{RECORD_HEADER_BYTES, RECORD_SIZE_BYTES_MAX, TORN_TAIL_CHECKSUM_BYTES_MAX};
use cohort_core::codec;
use cohort_core::ids::PartitionId;
use cohort_core::persist::{ConfState, HardState, LogPosition, LogWrite};
use serde::{Deserialize, Serialize};

/// Version of the segment format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One record of the log.
///
/// A segment is: one `SegmentHeader`, then one or more `Checkpoint` records (the last with
/// `last_chunk`), then any number of `Writes`. Variant order is part of the format: append new
/// variants at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    SegmentHeader(SegmentHeader),
    Checkpoint(Checkpoint),
    Writes(Vec<LogWrite>),
}

/// Number of [`Record`] variants: a payload's first four bytes (its variant index) are below it.
const RECORD_VARIANTS: u32 = 3;

/// Names the segment a record belongs to, so that a renamed or misplaced file is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub format_version: u32,
    pub seq: u64,
}

/// Every partition's metadata when a segment was started, so that no older record is needed
/// for it: older segments can go once no live entry is in them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub partitions: Vec<CheckpointPartition>,
    /// The checkpoint's last record; a checkpoint of many partitions spans several.
    pub last_chunk: bool,
}

/// One partition's metadata in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPartition {
    pub partition: PartitionId,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub compacted: LogPosition,
    pub snapshot: Option<LogPosition>,
    /// Index of the last entry (or `compacted.index` if none): entries up to it exist, in this
    /// segment's predecessors.
    pub last_index: u64,
}

/// Borrowing twin of [`Record`] for encoding without copying writes. Its variants must match
/// `Record`'s one for one (a test checks the bytes agree).
#[derive(Serialize)]
pub(crate) enum RecordRef<'a> {
    SegmentHeader(&'a SegmentHeader),
    Checkpoint(&'a Checkpoint),
    Writes(&'a [LogWrite]),
}

/// Bytes that are not a valid record where one must be: corruption, not a torn tail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record at offset {offset}: {reason}")]
pub struct RecordError {
    pub offset: u64,
    pub reason: String,
}

/// The end of a segment that a crash tore: from `offset` on, the bytes hold no valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub reason: String,
}

/// Everything decoded from a segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedSegment {
    /// Each record with the offset of its frame.
    pub records: Vec<(u64, Record)>,
    /// Set if the bytes end in a torn record. Only the last segment may have one.
    pub torn_tail: Option<TornTail>,
    /// Where the zeros that end the bytes start, if they do (see [`RecordReader`]).
    pub zeros_from: Option<u64>,
}

/// Appends the frame of `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    assert!(!payload.is_empty(), "a record payload is never empty");
    assert!(payload.len() <= RECORD_SIZE_BYTES_MAX, "a record payload is within RECORD_SIZE_BYTES_MAX");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends the frame of `record` to `out`.
pub(crate) fn encode_record(record: &RecordRef<'_>, out: &mut Vec<u8>) {
    let payload = codec::encode(record);
    encode_frame(&payload, out);
}

/// Decodes every record of a segment's bytes (see [`RecordReader`]).
pub fn decode_segment(bytes: &[u8]) -> Result<DecodedSegment, RecordError> {
    let mut reader = RecordReader::new(bytes);
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok(DecodedSegment { records, torn_tail: reader.torn_tail().cloned(), zeros_from: reader.zeros_from() })
}

/// Why the bytes at an offset are not a valid frame.
enum BadFrame {
    /// Fewer than a header's bytes remain.
    ShortHeader,
    ZeroLength,
    TooLong(u32),
    /// The payload would run past the end of the bytes.
    PastEnd(u32),
    /// The payload is all there but its checksum does not match.
    Checksum {
        next: usize,
    },
}

impl BadFrame {
    fn describe(&self, remaining: usize) -> String {
        match self {
            BadFrame::ShortHeader => format!("incomplete header ({remaining} bytes left)"),
            BadFrame::ZeroLength => "zero-length record".to_owned(),
            BadFrame::TooLong(len) => {
                format!("record length {len} is over the {RECORD_SIZE_BYTES_MAX}-byte limit")
            }
            BadFrame::PastEnd(len) => {
                format!("record of {len} bytes runs past the end ({remaining} bytes left)")
            }
            BadFrame::Checksum { .. } => "checksum mismatch".to_owned(),
        }
    }
}

/// The payload of the frame at `offset`, and where the next frame starts.
fn read_frame(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), BadFrame> {
    let rest = &bytes[offset..];
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(BadFrame::ShortHeader);
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 {
        return Err(BadFrame::ZeroLength);
    }
    if len as usize > RECORD_SIZE_BYTES_MAX {
        return Err(BadFrame::TooLong(len));
    }
    let body = &rest[RECORD_HEADER_BYTES..];
    if len as usize > body.len() {
        return Err(BadFrame::PastEnd(len));
    }
    let payload = &body[..len as usize];
    let next = offset + RECORD_HEADER_BYTES + len as usize;
    if crc32c::crc32c(payload) != crc {
        return Err(BadFrame::Checksum { next });
    }
    Ok((payload, next))
}

/// Where, at or after `from`, a valid frame starts, if one does. `Err` if finding out would
/// checksum more than `checksum_bytes_max` (no verdict).
fn find_valid_frame(bytes: &[u8], from: usize, checksum_bytes_max: usize) -> Result<Option<usize>, ()> {
    let mut checksummed_bytes = 0usize;
    let mut at = from;
    // A frame needs its header and the payload's 4-byte variant index.
    while at + RECORD_HEADER_BYTES + 4 <= bytes.len() {
        let rest = &bytes[at..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        // Cheap filters first: a plausible length, a payload inside the bytes, and a payload
        // that starts with a Record variant index. Only then the checksum.
        let plausible = (4..=RECORD_SIZE_BYTES_MAX).contains(&len)
            && len <= rest.len() - RECORD_HEADER_BYTES
            && u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) < RECORD_VARIANTS;
        if plausible {
            checksummed_bytes += RECORD_HEADER_BYTES + len;
            if checksummed_bytes > checksum_bytes_max {
                return Err(());
            }
            if read_frame(bytes, at).is_ok() {
                return Ok(Some(at));
            }
        }
        at += 1;
    }
    Ok(None)
}

/// Reads the records of one segment's bytes in order, iteratively.
///
/// Zeros from where a frame should start to the end of the bytes end the records quietly
/// ([`RecordReader::zeros_from`]): the log writes them ahead of its records, and only the last
/// segment may hold them (a record a crash left wholly unwritten reads the same).
///
/// Any other frame that is bad (short header, zero or oversized length, payload past the end,
/// checksum mismatch) ends the segment as a **torn tail** only if no valid frame follows it
/// anywhere: a crash tears the end of what was being written, never the middle of what was
/// synced before (the writer keeps at most one record unsynced). A bad frame followed by a
/// valid one, and a frame whose checksum matches but whose payload does not decode, are
/// **corruption** ([`RecordError`]).
///
/// Known limit: the search for a following valid frame also looks inside a torn record's own
/// payload, so client data that embeds a valid frame of this format can make a torn tail look
/// like corruption. That errs on the side of stopping, never of dropping data.
pub struct RecordReader<'a> {
    bytes: &'a [u8],
    offset: usize,
    torn_tail: Option<TornTail>,
    zeros_from: Option<u64>,
    finished: bool,
}

impl<'a> RecordReader<'a> {
    pub fn new(bytes: &'a [u8]) -> RecordReader<'a> {
        RecordReader { bytes, offset: 0, torn_tail: None, zeros_from: None, finished: false }
    }

    /// The next record and its offset; `None` at the end (see [`RecordReader::torn_tail`]).
    pub fn next_record(&mut self) -> Result<Option<(u64, Record)>, RecordError> {
        if self.finished || self.offset == self.bytes.len() {
            self.finished = true;
            return Ok(None);
        }
        let offset = self.offset;
        match read_frame(self.bytes, offset) {
            Ok((payload, next)) => {
                let record = codec::decode::<Record>("log record", payload).map_err(|e| {
                    self.finished = true;
                    RecordError { offset: offset as u64, reason: e.to_string() }
                })?;
                self.offset = next;
                Ok(Some((offset as u64, record)))
            }
            Err(_) if self.bytes[offset..].iter().all(|&byte| byte == 0) => {
                self.finished = true;
                self.zeros_from = Some(offset as u64);
                Ok(None)
            }
            Err(bad) => {
                self.finished = true;
                let remaining = self.bytes.len() - offset;
                let problem = bad.describe(remaining);
                // Where a following record could start: after this one if its length is
                // believable, else anywhere after its first byte.
                let search_from = match bad {
                    BadFrame::Checksum { next } => next,
                    _ => offset + 1,
                };
                match find_valid_frame(self.bytes, search_from, TORN_TAIL_CHECKSUM_BYTES_MAX) {
                    Ok(None) => {
                        self.torn_tail = Some(TornTail { offset: offset as u64, reason: problem });
                        Ok(None)
                    }
                    Ok(Some(valid)) => Err(RecordError {
                        offset: offset as u64,
                        reason: format!("{problem}, followed by a valid record at offset {valid}"),
                    }),
                    Err(()) => Err(RecordError {
                        offset: offset as u64,
                        reason: format!(
                            "{problem}, and the {} bytes after it cannot be shown to be a torn tail",
                            self.bytes.len() - search_from.min(self.bytes.len())
                        ),
                    }),
                }
            }
        }
    }

    /// The torn tail that ended the records, once `next_record` has returned `None`.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// Where the zeros that ended the records start, once `next_record` has returned `None`.
    pub fn zeros_from(&self) -> Option<u64> {
        self.zeros_from
    }

    /// Bytes of valid records read so far: where a torn tail or the zeros would be cut.
    pub fn valid_len(&self) -> u64 {
        self.offset as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_core::persist::{EntryKind, LogEntry};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn writes() -> Vec<LogWrite> {
        let mut w = LogWrite::new(PartitionId(7));
        w.entries =
            vec![LogEntry { index: 1, term: 1, kind: EntryKind::Normal, data: b"hello".to_vec(), context: vec![] }];
        w.hard_state = Some(HardState { term: 1, vote: 1, commit: 1 });
        vec![w]
    }

    fn segment_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&RecordRef::SegmentHeader(&SegmentHeader { format_version: FORMAT_VERSION, seq: 1 }), &mut out);
        encode_record(&RecordRef::Writes(&writes()), &mut out);
        encode_record(&RecordRef::Writes(&writes()), &mut out);
        out
    }

    #[test]
    fn record_ref_encodes_like_record() {
        let w = writes();
        assert_eq!(codec::encode(&RecordRef::Writes(&w)), codec::encode(&Record::Writes(w.clone())));
        let h = SegmentHeader { format_version: FORMAT_VERSION, seq: 9 };
        assert_eq!(codec::encode(&RecordRef::SegmentHeader(&h)), codec::encode(&Record::SegmentHeader(h)));
        let c = Checkpoint { partitions: vec![], last_chunk: true };
        let bytes = codec::encode(&RecordRef::Checkpoint(&c));
        assert_eq!(bytes, codec::encode(&Record::Checkpoint(c)));
        // The torn-tail search relies on the variant index leading the payload as a u32.
        assert_eq!(&bytes[..4], &1u32.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let bytes = segment_bytes();
        let decoded = decode_segment(&bytes).unwrap();
        assert_eq!(decoded.records.len(), 3);
        assert_eq!(decoded.records[1].1, Record::Writes(writes()));
        assert_eq!(decoded.torn_tail, None);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let bytes = segment_bytes();
        let full = decode_segment(&bytes).unwrap();
        let last_offset = full.records[2].0 as usize;
        for cut in last_offset + 1..bytes.len() {
            let decoded = decode_segment(&bytes[..cut]).unwrap();
            assert_eq!(decoded.records.len(), 2, "cut at {cut}");
            assert_eq!(decoded.torn_tail.as_ref().unwrap().offset, last_offset as u64);
        }
    }

    #[test]
    fn zeroed_or_garbled_tail_is_torn() {
        let bytes = segment_bytes();
        let last_offset = decode_segment(&bytes).unwrap().records[2].0 as usize;
        let mut zeroed = bytes.clone();
        zeroed[last_offset + 3..].fill(0);
        zeroed.extend_from_slice(&[0; 100]);
        let decoded = decode_segment(&zeroed).unwrap();
        assert_eq!(decoded.torn_tail.unwrap().offset, last_offset as u64);
        assert_eq!(decoded.zeros_from, None);

        let mut garbled = bytes.clone();
        let n = garbled.len();
        garbled[n - 2] ^= 0xff;
        let decoded = decode_segment(&garbled).unwrap();
        assert_eq!(decoded.records.len(), 2);
        assert_eq!(decoded.torn_tail.unwrap().offset, last_offset as u64);
    }

    #[test]
    fn zeros_after_the_records_end_them_without_a_torn_tail() {
        let bytes = segment_bytes();
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 4096]);
        let decoded = decode_segment(&padded).unwrap();
        assert_eq!(decoded.records, decode_segment(&bytes).unwrap().records);
        assert_eq!((decoded.torn_tail, decoded.zeros_from), (None, Some(bytes.len() as u64)));
        // A record a crash left wholly unwritten reads as zeros too; one byte of it written
        // makes it torn.
        let last_offset = decoded.records[2].0 as usize;
        let mut unwritten = padded.clone();
        unwritten[last_offset..].fill(0);
        let decoded = decode_segment(&unwritten).unwrap();
        assert_eq!((decoded.records.len(), decoded.zeros_from), (2, Some(last_offset as u64)));
        unwritten[last_offset + 100] = 1;
        let decoded = decode_segment(&unwritten).unwrap();
        assert_eq!((decoded.torn_tail.unwrap().offset, decoded.zeros_from), (last_offset as u64, None));
    }

    #[test]
    fn bad_checksum_followed_by_valid_record_is_corruption() {
        let mut bytes = segment_bytes();
        let middle = decode_segment(&bytes).unwrap().records[1].0 as usize;
        bytes[middle + RECORD_HEADER_BYTES + 2] ^= 0x01;
        let err = decode_segment(&bytes).unwrap_err();
        assert_eq!(err.offset, middle as u64);
        assert!(err.reason.contains("checksum"), "{err}");
    }

    #[test]
    fn bad_length_followed_by_valid_record_is_corruption() {
        let mut bytes = segment_bytes();
        let middle = decode_segment(&bytes).unwrap().records[1].0 as usize;
        bytes[middle..middle + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_segment(&bytes).unwrap_err();
        assert_eq!(err.offset, middle as u64);
    }

    #[test]
    fn good_checksum_bad_payload_is_corruption() {
        let mut bytes = Vec::new();
        encode_frame(&[9, 0, 0, 0, 1, 2, 3], &mut bytes);
        let err = decode_segment(&bytes).unwrap_err();
        assert_eq!(err.offset, 0);
    }

    #[test]
    fn torn_tail_search_is_bounded() {
        // Many plausible headers (length 64, variant 0) with wrong checksums.
        let mut bytes = Vec::new();
        for _ in 0..100 {
            bytes.extend_from_slice(&64u32.to_le_bytes());
            bytes.extend_from_slice(&[0xee; 4]);
            bytes.extend_from_slice(&[0; 4]);
        }
        bytes.extend_from_slice(&[0; 64]);
        assert_eq!(find_valid_frame(&bytes, 0, usize::MAX), Ok(None));
        assert_eq!(find_valid_frame(&bytes, 0, 1000), Err(()), "no verdict past the budget");
        let mut valid = Vec::new();
        encode_record(&RecordRef::SegmentHeader(&SegmentHeader { format_version: 1, seq: 2 }), &mut valid);
        bytes.extend_from_slice(&valid);
        let at = bytes.len() - valid.len();
        assert_eq!(find_valid_frame(&bytes, 0, usize::MAX), Ok(Some(at)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let valid = segment_bytes();
        for round in 0..4000 {
            let len = rng.gen_range(0..600);
            let mut bytes: Vec<u8> = match round % 4 {
                // Pure noise.
                0 => (0..len).map(|_| rng.gen()).collect(),
                // A valid segment with a few bytes flipped.
                1 => {
                    let mut b = valid.clone();
                    for _ in 0..rng.gen_range(1..4) {
                        let i = rng.gen_range(0..b.len());
                        b[i] = rng.gen();
                    }
                    b
                }
                // A valid segment cut short.
                2 => valid[..rng.gen_range(0..valid.len())].to_vec(),
                // A valid frame around a random payload: exercises the payload decoder.
                _ => {
                    let mut payload: Vec<u8> = (0..len.max(1)).map(|_| rng.gen()).collect();
                    let tag_bytes = payload.len().min(4);
                    payload[..tag_bytes].fill(0);
                    payload[0] = rng.gen_range(0..3);
                    let mut b = Vec::new();
                    encode_frame(&payload, &mut b);
                    b
                }
            };
            if round % 7 == 0 {
                bytes.extend_from_slice(&valid);
            }
            // The invariants the fuzz target checks, too.
            if let Ok(decoded) = decode_segment(&bytes) {
                let mut reader = RecordReader::new(&bytes);
                let mut offsets = Vec::new();
                while let Some((offset, _)) = reader.next_record().unwrap() {
                    offsets.push(offset);
                }
                assert_eq!(offsets, decoded.records.iter().map(|(o, _)| *o).collect::<Vec<_>>());
                assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase");
                match (&decoded.torn_tail, decoded.zeros_from) {
                    (Some(torn), None) => assert_eq!(torn.offset, reader.valid_len()),
                    (None, Some(zeros_from)) => {
                        assert_eq!(zeros_from, reader.valid_len());
                        assert!(bytes[zeros_from as usize..].iter().all(|&b| b == 0));
                    }
                    (None, None) => assert_eq!(reader.valid_len(), bytes.len() as u64),
                    (Some(_), Some(_)) => panic!("a tail is torn or zeros, not both"),
                }
            }
        }
    }
}
