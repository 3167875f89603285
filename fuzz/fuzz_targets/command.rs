//! Arbitrary bytes as a replicated command (what a committed log entry holds): decoding
//! returns a command or an error, never panics; a command that decodes re-encodes to the
//! same bytes, and validating or applying it to a store never panics either, and leaves rows
//! that check out whole.
#![no_main]

use cohort_core::ids::PartitionId;
use cohort_core::persist::LogPosition;
use cohort_core::state_machine::{validate, Command};
use cohort_core::store::check::check_partition;
use cohort_core::store::{Commit, DedupLimits, PartitionWriter, Rows as _, Store};
use libfuzzer_sys::fuzz_target;

const P: PartitionId = PartitionId(1);

fuzz_target!(|bytes: &[u8]| {
    if let Ok(command) = Command::decode(bytes) {
        assert_eq!(command.encode(), bytes, "decoding is exact");
        let _ = validate(&command);
        let store = Store::in_memory();
        store
            .write(Commit::Lazy, |rows| {
                let mut writer = PartitionWriter::open(rows, P)?;
                let _ = writer.apply(LogPosition { index: 1, term: 1 }, &command)?;
                writer.finish().map(|_| ())
            })
            .expect("an in-memory store applies");
        let rows = store.read().expect("reads");
        let record = rows.partition(P).expect("reads").expect("a record");
        assert_eq!(check_partition(&rows, P, record.applied.index, &DedupLimits::DEFAULT), Ok(record.counts));
    }
});
