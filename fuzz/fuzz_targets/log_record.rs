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
            if let Some(torn) = &segment.torn_tail {
                assert_eq!(
                    torn.offset,
                    reader.valid_len(),
                    "a torn tail starts where valid records end"
                );
            } else {
                assert_eq!(
                    reader.valid_len(),
                    bytes.len() as u64,
                    "without a torn tail every byte is a record"
                );
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("decode_segment and RecordReader disagree"),
    }
});
