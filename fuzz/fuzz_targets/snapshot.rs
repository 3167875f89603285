//! Arbitrary bytes as a state-machine snapshot: restoring returns a consistent state or an
//! error, never panics, and a restored state snapshots back to bytes that restore equally.
#![no_main]

use cohort_core::state_machine::StateMachine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(state) = StateMachine::from_snapshot_bytes(bytes) {
        let again = StateMachine::from_snapshot_bytes(&state.to_snapshot_bytes()).expect("own snapshot restores");
        assert_eq!(again.digest(), state.digest());
    }
});
