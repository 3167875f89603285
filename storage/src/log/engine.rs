//! [`LogEngine`]: appends every partition's writes to one shared log, syncs them with one
//! fsync, rotates segments, and deletes (after rewriting, if needed) the segments no partition
//! still needs.
//!
//! Life of a segment: created by a rotation (or at open) with its header and a checkpoint of
//! every partition's metadata, synced at once; filled by records written in place over zeros
//! prepared ahead of them (see [`Head`]); cut to its last record and synced before the next
//! segment is created (so that only the last segment can ever have a torn tail); deleted once
//! no partition has a live entry in it and every older segment is gone (segments are deleted
//! oldest first, one directory sync each, so the log on disk is always a suffix of the segments
//! written).

use super::group_commit::write_size_bytes_estimate;
use super::record::{
    encode_frame, encode_record, Checkpoint, CheckpointPartition, Record, RecordRef, SegmentHeader, FORMAT_VERSION,
};
use super::recovery::{recover, Recovered};
use super::segment::{read_record, segment_path};
use super::state::{PartitionLogState, PartitionStates, Pins, RecordLocation, Shape};
use super::{LogError, LogOptions};
use crate::limits::{
    CHECKPOINT_RECORD_BYTES_TARGET, LOG_PREALLOCATE_BYTES, RECORD_SIZE_BYTES_MAX, REWRITE_BATCH_BYTES_TARGET,
};
use cohort_core::codec;
use cohort_core::env::{Disk, PositionalFile};
use cohort_core::ids::{sorted_entries, PartitionId};
use cohort_core::persist::{ConfStatePool, LogEntry, LogWrite, RecoveredPartition};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The node's shared write-ahead log. Synchronous: run it where blocking is fine (group
/// commit runs it inside `Spawn::run_blocking`).
pub struct LogEngine {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    options: LogOptions,
    partitions: PartitionStates,
    pins: Pins,
    /// The memberships `partitions` share.
    conf_states: ConfStatePool,
    /// Every segment file of the log and its length in bytes, including the head.
    segments: BTreeMap<u64, u64>,
    head: Head,
    /// The head segment was created and the directory not synced since.
    dir_sync_pending: bool,
    /// A record was written to the head and not synced since.
    unsynced: bool,
    /// Why the engine stopped, after a failed append or sync.
    poisoned: Option<String>,
    /// Encoding buffer, reused by every append.
    buf: Vec<u8>,
}

/// The segment being appended to.
///
/// Its file runs past its records: the zeros ahead of them are written beforehand,
/// [`LOG_PREALLOCATE_BYTES`] at a time, so that a record overwrites blocks the file system has
/// allocated and written, and the fsync after it flushes data alone. Appending past the end
/// made every fsync also commit the file system's journal for the new length (space from
/// `fallocate` is no better: its extents are unwritten until written). `cargo bench --bench
/// log`, five runs: a batch of one 1 KiB entry p50 0.63-0.65x and mean 0.65-0.71x of appending
/// it; of 64, p50 0.51-0.64x, but the batch that writes the next zeros pays for them (about
/// half a millisecond for 256 KiB), so their mean is 0.84-1.01x and their p99 1.3-2.7x. More
/// at a time costs the tail more for little: 1 MiB p99 2.9-3.6x (mean 0.76-0.92x), 4 MiB 11x.
/// Reusing deleted segments' files, whose blocks are written already, would need no zeros;
/// their stale records would need a checksum seeded by segment.
///
/// The price is in recovery's rule, which takes a bad record followed by a valid one for
/// corruption: that holds for appends (a crash keeps a prefix of what was not synced), but
/// writes in place that are not synced may reach the disk in any order. So at most one record
/// is ever unsynced: writing a second syncs the first ([`LogEngine::write_record`]), which
/// costs nothing where each batch is one record and synced (group commit), and the header and
/// checkpoint of a new segment are appended and synced before anything is written in place.
struct Head {
    seq: u64,
    file: Box<dyn PositionalFile>,
    /// The end of its records: where the next one goes.
    len: u64,
    /// The file's length; `len..prepared_len` holds zeros.
    prepared_len: u64,
    /// Holds writes, not only its header and checkpoint: rotating it would gain nothing.
    has_writes: bool,
}

/// What one [`LogEngine::compact`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub segments_deleted: usize,
    pub partitions_rewritten: usize,
    pub entries_rewritten: u64,
    pub bytes_rewritten: u64,
    /// Partitions whose live entries pin old segments but are too large to rewrite in one record.
    pub partitions_skipped: usize,
    pub segments_remaining: usize,
}

/// Encoded size of a `LogWrite` carrying only `entries`: its fixed fields, then per entry
/// index, term, kind, and the two length-prefixed byte strings.
fn entries_write_size_bytes(entries: &[LogEntry]) -> usize {
    const WRITE_FIXED_BYTES: usize = 8 + 1 + 1 + 8 + 1 + 1 + 1;
    const ENTRY_FIXED_BYTES: usize = 8 + 8 + 4 + 8 + 8;
    WRITE_FIXED_BYTES + entries.iter().map(|e| ENTRY_FIXED_BYTES + e.data.len() + e.context.len()).sum::<usize>()
}

/// Bytes of `Record::Writes` around its writes: the variant index and the sequence length.
const WRITES_RECORD_OVERHEAD_BYTES: usize = 4 + 8;

/// Record payloads, each with the range of the batch's writes it holds.
pub(crate) type EncodedRecords = Vec<(Range<usize>, Vec<u8>)>;

/// Encodes `writes` as `Writes` record payloads of at most `size_bytes_max` bytes each: one
/// record for the whole batch unless it is too large. Each write stays whole in one record.
/// Capacity the append buffer keeps between appends; a larger one is given back.
const APPEND_BUFFER_RETAINED_BYTES_MAX: usize = 1024 * 1024;

pub(crate) fn encode_writes(writes: &[LogWrite], size_bytes_max: usize) -> Result<EncodedRecords, LogError> {
    let estimate_bytes = WRITES_RECORD_OVERHEAD_BYTES + writes.iter().map(write_size_bytes_estimate).sum::<usize>();
    let whole = codec::encode_with_capacity(&RecordRef::Writes(writes), estimate_bytes);
    if whole.len() <= size_bytes_max {
        return Ok(vec![(0..writes.len(), whole)]);
    }
    let sizes: Vec<usize> = writes.iter().map(|w| codec::encode(w).len()).collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = WRITES_RECORD_OVERHEAD_BYTES;
    for (i, (write, &write_size)) in writes.iter().zip(&sizes).enumerate() {
        if WRITES_RECORD_OVERHEAD_BYTES + write_size > size_bytes_max {
            return Err(LogError::WriteTooLarge {
                partition: write.partition,
                size_bytes: WRITES_RECORD_OVERHEAD_BYTES + write_size,
                size_bytes_max,
            });
        }
        if size + write_size > size_bytes_max {
            out.push((start..i, codec::encode(&RecordRef::Writes(&writes[start..i]))));
            start = i;
            size = WRITES_RECORD_OVERHEAD_BYTES;
        }
        size += write_size;
    }
    out.push((start..writes.len(), codec::encode(&RecordRef::Writes(&writes[start..]))));
    for (range, payload) in &out {
        let expected = WRITES_RECORD_OVERHEAD_BYTES + sizes[range.clone()].iter().sum::<usize>();
        assert_eq!(payload.len(), expected, "a Writes record encodes to its writes plus its overhead");
        assert!(payload.len() <= size_bytes_max, "every split record is within the limit");
    }
    Ok(out)
}

/// Upper bound of a checkpoint entry's encoded size, for splitting a checkpoint into records.
fn checkpoint_entry_size_bytes(entry: &CheckpointPartition) -> usize {
    let cs = &entry.conf_state;
    let ids = cs.voters.len() + cs.learners.len() + cs.voters_outgoing.len() + cs.learners_next.len();
    128 + 8 * ids
}

/// Creates each missing directory of `dir` and syncs its parent, so the log's directory
/// itself survives a crash.
fn create_dir_durably(disk: &dyn Disk, dir: &Path) -> Result<(), LogError> {
    let mut path = PathBuf::new();
    for component in dir.components() {
        let parent = path.clone();
        path.push(component);
        if !disk.exists(&path)? {
            disk.create_dir_all(&path)?;
        }
        disk.sync_dir(&parent)?;
    }
    Ok(())
}

/// Creates segment `seq` with its header and a checkpoint of `partitions`, synced (its
/// directory entry is not).
fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    seq: u64,
    partitions: &PartitionStates,
    buf: &mut Vec<u8>,
) -> Result<Head, LogError> {
    let path = segment_path(dir, seq);
    if disk.exists(&path)? {
        return Err(LogError::Corrupt {
            path,
            offset: 0,
            reason: "a segment with the next sequence number exists already".to_owned(),
        });
    }
    buf.clear();
    encode_record(&RecordRef::SegmentHeader(&SegmentHeader { format_version: FORMAT_VERSION, seq }), buf);
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    // In partition order: a segment's bytes depend on what the log holds, not on its history.
    for (id, state) in sorted_entries(partitions) {
        let entry = state.checkpoint(id);
        chunk_bytes += checkpoint_entry_size_bytes(&entry);
        chunk.push(entry);
        if chunk_bytes >= CHECKPOINT_RECORD_BYTES_TARGET {
            encode_record(
                &RecordRef::Checkpoint(&Checkpoint { partitions: std::mem::take(&mut chunk), last_chunk: false }),
                buf,
            );
            chunk_bytes = 0;
        }
    }
    // Always a last chunk, possibly empty: it marks the checkpoint complete.
    encode_record(&RecordRef::Checkpoint(&Checkpoint { partitions: chunk, last_chunk: true }), buf);
    // Appended, so that a crash keeps a prefix of it, and synced before records are written
    // in place after it (see `Head`).
    let mut file = disk.open_append(&path)?;
    file.append(buf)?;
    file.sync()?;
    drop(file);
    let len = buf.len() as u64;
    Ok(Head { seq, file: disk.open_positional(&path)?, len, prepared_len: len, has_writes: false })
}

impl LogEngine {
    /// Opens (or creates) the log in `dir` on `disk` and recovers every partition's state.
    ///
    /// Cuts a torn tail off the last segment; any other damage is [`LogError::Corrupt`]. Then
    /// starts a new segment, so the engine never appends after bytes it did not write itself.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        options: LogOptions,
    ) -> Result<(LogEngine, BTreeMap<PartitionId, RecoveredPartition>), LogError> {
        options.validate()?;
        create_dir_durably(&*disk, dir)?;
        let Recovered { partitions, pins, conf_states, mut segments, recovered } = recover(&*disk, dir)?;
        if let Some((&seq, &len)) = segments.last_key_value() {
            let path = segment_path(dir, seq);
            if len == 0 {
                // Nothing survived in it, not even its header: drop it rather than leave a
                // headless segment behind the new head.
                disk.remove_file(&path)?;
                disk.sync_dir(dir)?;
                segments.remove(&seq);
            } else {
                // A restart without a machine crash leaves the last segment's unsynced bytes
                // readable; they must be durable before a newer segment exists, or a later
                // crash could tear a segment that is no longer the last.
                disk.open_append(&path)?.sync()?;
            }
        }
        let seq = segments.last_key_value().map_or(1, |(&seq, _)| seq + 1);
        let mut buf = Vec::new();
        let head = create_segment(&*disk, dir, seq, &partitions, &mut buf)?;
        segments.insert(seq, head.len);
        let mut engine = LogEngine {
            disk,
            dir: dir.to_owned(),
            options,
            partitions,
            pins,
            conf_states,
            segments,
            head,
            dir_sync_pending: true,
            unsynced: false,
            poisoned: None,
            buf,
        };
        engine.sync()?;
        tracing::info!(
            dir = %engine.dir.display(),
            partitions = engine.partitions.len(),
            segments = engine.segments.len(),
            "log opened"
        );
        Ok((engine, recovered))
    }

    /// Appends `writes`, in order, with one disk append; durable after the next [`sync`].
    ///
    /// Each write must fit its partition's log (entries start after the compacted index and at
    /// most one past the last index); a write that does not is a bug in the caller and panics.
    ///
    /// [`sync`]: LogEngine::sync
    pub fn append(&mut self, writes: &[LogWrite]) -> Result<(), LogError> {
        self.check_usable()?;
        if writes.is_empty() {
            return Ok(());
        }
        self.assert_writes_fit(writes);
        // Encoding fails only on an oversized write, before anything is written.
        let records = encode_writes(writes, RECORD_SIZE_BYTES_MAX)?;
        let result = self.append_records(writes, &records);
        self.poison_on_error(result)
    }

    /// Makes everything appended so far durable with one fsync (and a directory sync if a
    /// segment was created since the last one).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        if !self.unsynced && !self.dir_sync_pending {
            return Ok(());
        }
        let result = self.sync_head();
        self.poison_on_error(result)
    }

    /// Syncs, then deletes the segments no partition needs. If more than
    /// `options.segments_max` remain, rewrites the live entries of the partitions that pin the
    /// oldest ones into the head segment first.
    pub fn compact(&mut self) -> Result<CompactStats, LogError> {
        self.check_usable()?;
        let result = self.compact_inner();
        self.poison_on_error(result)
    }

    /// One partition's state, if the log knows it.
    pub fn partition(&self, id: PartitionId) -> Option<&PartitionLogState> {
        self.partitions.get(&id)
    }

    /// Every partition's state, in partition order.
    pub fn partitions(&self) -> impl Iterator<Item = (PartitionId, &PartitionLogState)> {
        sorted_entries(&self.partitions).into_iter()
    }

    /// Sequence numbers of the segment files, oldest first; the last is the head.
    pub fn segments(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    /// Bytes in all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the engine refuses work, if it does.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Reads a partition's live entries back from the segments (for rewrites, debugging and
    /// tests).
    pub fn read_entries(&self, id: PartitionId) -> Result<Vec<LogEntry>, LogError> {
        let Some(state) = self.partitions.get(&id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(state.live_entries() as usize);
        // Consecutive runs often come from one record: keep the last one decoded.
        let mut cached: Option<((u64, u64), Vec<LogWrite>)> = None;
        for run in state.runs() {
            let key = (run.location.seq, run.location.offset);
            let corrupt =
                |reason: String| LogError::Corrupt { path: segment_path(&self.dir, key.0), offset: key.1, reason };
            if cached.as_ref().map(|(k, _)| *k) != Some(key) {
                match read_record(&*self.disk, &self.dir, key.0, key.1)? {
                    Record::Writes(writes) => cached = Some((key, writes)),
                    _ => return Err(corrupt("expected a Writes record".to_owned())),
                }
            }
            let writes = &cached.as_ref().expect("just filled").1;
            let write = writes
                .get(run.location.write as usize)
                .filter(|w| w.partition == id)
                .ok_or_else(|| corrupt(format!("write {} of partition {id} is not there", run.location.write)))?;
            let before = out.len();
            out.extend(write.entries.iter().filter(|e| (run.first..=run.last).contains(&e.index)).cloned());
            if (out.len() - before) as u64 != run.last - run.first + 1 {
                return Err(corrupt(format!(
                    "write {} lacks entries {}..={} of partition {id}",
                    run.location.write, run.first, run.last
                )));
            }
        }
        Ok(out)
    }

    fn check_usable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// A failed append or sync leaves the disk in an unknown state (a partial record, pages
    /// the kernel may have dropped): stop, and let recovery sort it out at the next open.
    fn poison_on_error<T>(&mut self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e) = &result {
            if self.poisoned.is_none() {
                tracing::error!(dir = %self.dir.display(), error = %e, "log failed; refusing further writes");
                self.poisoned = Some(e.to_string());
            }
        }
        result
    }

    fn assert_writes_fit(&self, writes: &[LogWrite]) {
        let mut shapes: BTreeMap<PartitionId, Shape> = BTreeMap::new();
        for write in writes {
            write.assert_well_formed();
            let shape = shapes
                .entry(write.partition)
                .or_insert_with(|| self.partitions.get(&write.partition).map_or_else(Shape::default, |s| s.shape()));
            match shape.after(write) {
                Ok(next) => *shape = next,
                Err(reason) => panic!("log write for partition {} does not fit its log: {reason}", write.partition),
            }
        }
    }

    fn append_records(&mut self, writes: &[LogWrite], records: &[(Range<usize>, Vec<u8>)]) -> Result<(), LogError> {
        if self.head.len >= self.options.segment_size_bytes && self.head.has_writes {
            self.rotate()?;
        }
        let seq = self.head.seq;
        let mut locations = Vec::with_capacity(writes.len());
        for (range, payload) in records {
            let offset = self.write_record(payload)?;
            for write in 0..range.len() {
                let write = u32::try_from(write).expect("a record holds fewer than 2^32 writes");
                locations.push(RecordLocation { seq, offset, write });
            }
        }
        assert_eq!(locations.len(), writes.len(), "every write has a location");
        if self.buf.capacity() > APPEND_BUFFER_RETAINED_BYTES_MAX {
            // A batch of large entries (an upload's pieces) would otherwise leave its whole
            // size allocated for as long as the node runs.
            self.buf = Vec::new();
        }
        self.head.has_writes = true;
        self.segments.insert(seq, self.head.len);
        for (write, location) in writes.iter().zip(locations) {
            let id = write.partition;
            let state = self.partitions.entry(id).or_default();
            state.apply(id, write, location, &mut self.pins, &mut self.conf_states, None);
            if write.remove {
                state.unpin_all(id, &mut self.pins);
                self.partitions.remove(&id);
            }
        }
        Ok(())
    }

    /// Writes the frame of `payload` at the end of the head's records, syncing the record
    /// before it first if that one is not synced (see `Head`); answers its offset.
    fn write_record(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        if self.unsynced {
            self.head.file.sync()?;
            self.unsynced = false;
        }
        let offset = self.head.len;
        self.buf.clear();
        encode_frame(payload, &mut self.buf);
        let frame_bytes = self.buf.len() as u64;
        let end = offset + frame_bytes;
        if end > self.head.prepared_len {
            // Past the zeros: lengthen the file, and write the next zeros with the record.
            let prepared_len = end + LOG_PREALLOCATE_BYTES.min(self.options.segment_size_bytes);
            self.head.file.set_len(prepared_len)?;
            self.buf.resize((prepared_len - offset) as usize, 0);
            self.head.prepared_len = prepared_len;
        }
        self.head.file.write_at(offset, &self.buf)?;
        self.head.len = end;
        self.unsynced = true;
        Ok(offset)
    }

    fn sync_head(&mut self) -> Result<(), LogError> {
        self.head.file.sync()?;
        if self.dir_sync_pending {
            self.disk.sync_dir(&self.dir)?;
            self.dir_sync_pending = false;
        }
        self.unsynced = false;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        // Recovery takes only the last segment's tail as torn: the old head must be whole on
        // disk, end at its last record (not in zeros prepared ahead), and its directory entry
        // be durable, before a newer segment can exist.
        self.sync_head()?;
        if self.head.prepared_len > self.head.len {
            // `truncate` makes the new length durable.
            self.disk.truncate(&segment_path(&self.dir, self.head.seq), self.head.len)?;
        }
        let seq = self.head.seq + 1;
        let head = create_segment(&*self.disk, &self.dir, seq, &self.partitions, &mut self.buf)?;
        self.segments.insert(seq, head.len);
        self.head = head;
        self.dir_sync_pending = true;
        tracing::debug!(dir = %self.dir.display(), seq, "log segment started");
        Ok(())
    }

    fn compact_inner(&mut self) -> Result<CompactStats, LogError> {
        // A segment may go only once the records that made it unneeded are durable.
        self.sync_head()?;
        let mut stats = CompactStats::default();
        self.delete_unneeded(&mut stats)?;
        if self.segments.len() > self.options.segments_max {
            let keep_from = *self
                .segments
                .keys()
                .nth(self.segments.len() - self.options.segments_max)
                .expect("more segments than segments_max");
            let pinning = self.pins.pinning_before(keep_from);
            self.rewrite(&pinning, &mut stats)?;
            self.sync_head()?;
            self.delete_unneeded(&mut stats)?;
        }
        stats.segments_remaining = self.segments.len();
        Ok(stats)
    }

    /// Deletes the oldest segments while no partition needs them.
    fn delete_unneeded(&mut self, stats: &mut CompactStats) -> Result<(), LogError> {
        let needed_from = self.pins.oldest_pinned().map_or(self.head.seq, |seq| seq.min(self.head.seq));
        while let Some((&seq, _)) = self.segments.first_key_value() {
            if seq >= needed_from {
                break;
            }
            assert!(seq < self.head.seq, "the head segment is never deleted");
            self.disk.remove_file(&segment_path(&self.dir, seq))?;
            // One directory sync per segment: a crash leaves the deleted ones a prefix.
            self.disk.sync_dir(&self.dir)?;
            self.segments.remove(&seq);
            stats.segments_deleted += 1;
        }
        Ok(())
    }

    /// Rewrites all live entries of each of `partitions` into the head, one write each: a
    /// write replaces every entry from its first index on, so it must carry all of them.
    fn rewrite(&mut self, partitions: &BTreeSet<PartitionId>, stats: &mut CompactStats) -> Result<(), LogError> {
        let mut batch: Vec<LogWrite> = Vec::new();
        let mut batch_bytes = 0;
        for &id in partitions {
            let entries = self.read_entries(id)?;
            let size_bytes = WRITES_RECORD_OVERHEAD_BYTES + entries_write_size_bytes(&entries);
            if size_bytes > RECORD_SIZE_BYTES_MAX {
                tracing::warn!(
                    partition = %id,
                    size_bytes,
                    "live entries too large to rewrite in one record; they keep pinning old segments"
                );
                stats.partitions_skipped += 1;
                continue;
            }
            stats.partitions_rewritten += 1;
            stats.entries_rewritten += entries.len() as u64;
            stats.bytes_rewritten += size_bytes as u64;
            let mut write = LogWrite::new(id);
            write.entries = entries;
            batch.push(write);
            batch_bytes += size_bytes;
            if batch_bytes >= REWRITE_BATCH_BYTES_TARGET {
                self.append(&batch)?;
                batch.clear();
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.append(&batch)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for LogEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEngine")
            .field("dir", &self.dir)
            .field("partitions", &self.partitions.len())
            .field("segments", &self.segments.len())
            .field("head", &self.head.seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_core::persist::EntryKind;

    fn write(partition: u64, index: u64, data_len: usize) -> LogWrite {
        let mut w = LogWrite::new(PartitionId(partition));
        w.entries =
            vec![LogEntry { index, term: 1, kind: EntryKind::Normal, data: vec![7; data_len], context: vec![] }];
        w
    }

    #[test]
    fn entries_size_estimate_is_exact() {
        let w = write(3, 9, 100);
        assert_eq!(entries_write_size_bytes(&w.entries), codec::encode(&w).len());
        assert_eq!(
            WRITES_RECORD_OVERHEAD_BYTES + entries_write_size_bytes(&w.entries),
            codec::encode(&RecordRef::Writes(&[w])).len()
        );
    }

    #[test]
    fn batches_split_into_records_within_the_limit() {
        let writes: Vec<LogWrite> = (0..10).map(|i| write(i, 1, 100)).collect();
        let one = encode_writes(&writes, RECORD_SIZE_BYTES_MAX).unwrap();
        assert_eq!(one.len(), 1);
        let split = encode_writes(&writes, 400).unwrap();
        assert!(split.len() > 1);
        let mut next = 0;
        for (range, payload) in &split {
            assert_eq!(range.start, next);
            next = range.end;
            assert!(payload.len() <= 400);
            let decoded: Record = codec::decode("record", payload).unwrap();
            assert_eq!(decoded, Record::Writes(writes[range.clone()].to_vec()));
        }
        assert_eq!(next, writes.len());
        match encode_writes(&[write(5, 1, 1000)], 400) {
            Err(LogError::WriteTooLarge { partition, .. }) => assert_eq!(partition, PartitionId(5)),
            other => panic!("expected WriteTooLarge, got {other:?}"),
        }
    }
}
