//! Arbitrary bytes as a replicated command (what a committed log entry holds): decoding
//! returns a command or an error, never panics; a command that decodes re-encodes to the
//! same bytes, and validating or applying it never panics either.
#![no_main]

use cohort_core::state_machine::{validate, Command, StateMachine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(command) = Command::decode(bytes) {
        assert_eq!(command.encode(), bytes, "decoding is exact");
        let _ = validate(&command);
        let mut state = StateMachine::new();
        let _ = state.apply(1, &command);
    }
});
