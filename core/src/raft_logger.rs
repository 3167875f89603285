//! Bridges raft-rs's `slog` logging into `tracing`, so one subscriber sees everything.

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};
use std::fmt::{self, Write as _};

/// An slog drain that re-emits each record as a `tracing` event with the same level.
pub struct TracingDrain;

struct KvFormatter<'a>(&'a mut String);

impl Serializer for KvFormatter<'_> {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Formatting costs; skip it when nobody listens at this level.
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::enabled!(tracing::Level::ERROR),
            slog::Level::Warning => tracing::enabled!(tracing::Level::WARN),
            slog::Level::Info => tracing::enabled!(tracing::Level::INFO),
            slog::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            slog::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut line = record.msg().to_string();
        let _ = record.kv().serialize(record, &mut KvFormatter(&mut line));
        let _ = values.serialize(record, &mut KvFormatter(&mut line));
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{line}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{line}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{line}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{line}"),
        }
        Ok(())
    }
}

/// A logger for one replica, tagged with its node and partition.
pub fn raft_logger(node: u64, partition: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("node" => node, "partition" => partition))
}
