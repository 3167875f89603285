//! Arbitrary bytes as a log segment: the decoder must return records, a torn tail or an error,
//! and never panic, loop or allocate without bound.
#![no_main]

use cohort_storage::log::record::{decode_segment, RecordReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let decoded = decode_segment(bytes);
    // The iterative reader agrees with the one-shot decoder, and offsets only move forward.
    let mut reader = RecordReader::new(bytes);
    let mut last_offset = None;
    let mut count = 0;
    let iterated = loop {
        match reader.next_record() {
            Ok(Some((offset, _))) => {
                assert!(last_offset.map_or(true, |last| offset > last), "offsets increase");
                assert!(offset < bytes.len() as u64, "records start inside the bytes");
                last_offset = Some(offset);
                count += 1;
            }
            Ok(None) => break Ok(count),
            Err(e) => break Err(e),
        }
    };
    match (&decoded, &iterated) {
        (Ok(segment), Ok(count)) => {
            assert_eq!(segment.records.len(), *count);
            assert!(reader.valid_len() <= bytes.len() as u64);
            match (&segment.torn_tail, segment.zeros_from) {
                (Some(torn), None) => assert_eq!(
                    torn.offset,
                    reader.valid_len(),
                    "a torn tail starts where valid records end"
                ),
                (None, Some(zeros_from)) => {
                    assert_eq!(zeros_from, reader.valid_len(), "the zeros start where valid records end");
                    assert!(bytes[zeros_from as usize..].iter().all(|&b| b == 0), "zeros to the end");
                }
                (None, None) => assert_eq!(
                    reader.valid_len(),
                    bytes.len() as u64,
                    "without a torn tail or zeros every byte is a record"
                ),
                (Some(_), Some(_)) => panic!("a tail is torn or zeros, not both"),
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("decode_segment and RecordReader disagree"),
    }
});
