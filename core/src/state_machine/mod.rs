//! The replicated state machine: repositories, objects, references, idempotent writes.
