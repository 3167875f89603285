//! One peer link's parts: authentication, reconnect pacing, and the bounded outbox.

pub mod backoff;
pub mod handshake;
pub mod outbox;
