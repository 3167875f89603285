//! A partition's rows as a stream, for snapshots: written from one read transaction while
//! writes go on (no copy of the state is held), read back into one write transaction that
//! replaces the receiver's rows.
//!
//! The stream is a sequence of rows, each `table (u8) | key length (u32 LE) | key | value
//! length (u32 LE) | value`, where the key is the row's key without the partition's prefix
//! (the receiver adds its own, so a stream can only ever write its own partition's range),
//! then one byte 0. Rows come table by table, keys strictly increasing: a reader refuses any
//! other order, so a stream has one meaning. The snapshot file around it carries the position
//! and membership and checks the bytes (`crate::snapshot`).

use super::check::check_partition;
use super::keys;
use super::tables::{Counts, Rows, TableId, WriteRows};
use super::{DedupLimits, StoreError};
use crate::ids::PartitionId;
use crate::state_machine::OBJECT_SIZE_BYTES_MAX;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;

/// Longest key suffix in a stream: a storage name, a path and a reference name, and slack.
pub const ROW_KEY_BYTES_MAX: usize = 4 * 1024;
/// Longest value: a loose object (compressed, so at most a little over its content).
pub const ROW_VALUE_BYTES_MAX: usize = OBJECT_SIZE_BYTES_MAX + 64 * 1024;

const END: u8 = 0;

/// Writes every row of `partition` to `out`.
pub fn export(rows: &dyn Rows, partition: PartitionId, out: &mut dyn Write) -> io::Result<()> {
    let prefix = keys::partition_prefix(partition);
    let mut failure = None;
    for table in TableId::ALL {
        let result = rows.scan(table, &prefix, &mut |key, value| {
            let suffix = &key[prefix.len()..];
            assert!(suffix.len() <= ROW_KEY_BYTES_MAX, "a stored key fits a snapshot row");
            assert!(value.len() <= ROW_VALUE_BYTES_MAX, "a stored value fits a snapshot row");
            let written = out
                .write_all(&[table as u8])
                .and_then(|()| out.write_all(&(suffix.len() as u32).to_le_bytes()))
                .and_then(|()| out.write_all(suffix))
                .and_then(|()| out.write_all(&(value.len() as u32).to_le_bytes()))
                .and_then(|()| out.write_all(value));
            match written {
                Ok(()) => Ok(ControlFlow::Continue(())),
                Err(e) => {
                    failure = Some(e);
                    Ok(ControlFlow::Break(()))
                }
            }
        });
        if let Some(e) = failure.take() {
            return Err(e);
        }
        result.map_err(io::Error::other)?;
    }
    out.write_all(&[END])
}

/// Why a stream could not be imported. Nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the snapshot: {0}")]
    Read(#[from] io::Error),
    #[error("bad snapshot rows: {0}")]
    Bad(String),
}

/// Replaces every row of `partition` with the rows read from `input`, a state applied through
/// index `applied`, then checks them whole (see `check::check_partition`). Returns the counts
/// the partition's record must hold. On an error the caller aborts the transaction.
pub fn import(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    applied: u64,
    input: &mut dyn Read,
    limits: &DedupLimits,
) -> Result<Counts, ImportError> {
    let prefix = keys::partition_prefix(partition);
    for table in TableId::ALL {
        rows.remove_prefix(table, &prefix)?;
    }
    let mut last: Option<(TableId, Vec<u8>)> = None;
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        let mut tag = [0u8; 1];
        input.read_exact(&mut tag)?;
        if tag[0] == END {
            break;
        }
        let table = TableId::from_u8(tag[0]).ok_or_else(|| ImportError::Bad(format!("unknown table {}", tag[0])))?;
        read_field(input, &mut key, ROW_KEY_BYTES_MAX, "key")?;
        read_field(input, &mut value, ROW_VALUE_BYTES_MAX, "value")?;
        let in_order = match &last {
            None => true,
            Some((last_table, last_key)) => (*last_table, last_key.as_slice()) < (table, key.as_slice()),
        };
        if !in_order {
            return Err(ImportError::Bad(format!("rows out of order at table {}", table.name())));
        }
        let mut full_key = prefix.to_vec();
        full_key.extend_from_slice(&key);
        rows.insert(table, &full_key, &value)?;
        last = Some((table, std::mem::take(&mut key)));
    }
    check_partition(rows, partition, applied, limits).map_err(ImportError::Bad)
}

/// Reads a u32-length-prefixed field into `buffer`, refusing one longer than `max`.
fn read_field(input: &mut dyn Read, buffer: &mut Vec<u8>, max: usize, what: &str) -> Result<(), ImportError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(ImportError::Bad(format!("a {what} of {len} bytes, more than {max}")));
    }
    buffer.clear();
    buffer.resize(len, 0);
    input.read_exact(buffer)?;
    Ok(())
}
