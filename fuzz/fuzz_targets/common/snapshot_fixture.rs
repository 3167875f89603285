//! A real snapshot file, made once per fuzz process, shared by the snapshot fuzz targets.

use cohort_core::ids::PartitionId;
use cohort_core::persist::SnapshotMeta;
use cohort_core::snapshot::SnapshotStore;
use cohort_core::store::{self, Rows as _};
use cohort_core::testing::partition_state;
use cohort_storage::SimDisk;
use std::path::PathBuf;
use std::sync::Arc;

/// A snapshot file's bytes, what it holds, and where a replica of its partition keeps it.
pub struct Fixture {
    pub file: Vec<u8>,
    pub meta: SnapshotMeta,
    pub path: PathBuf,
}

/// The snapshot of `partition` holding `blobs` random blobs of `blob_bytes` each.
pub fn snapshot_file(partition: PartitionId, blobs: u64, blob_bytes: usize, seed: u64) -> Fixture {
    let state = partition_state(partition, blobs, blob_bytes, seed);
    let record = state.read().unwrap().partition(partition).unwrap().unwrap();
    let meta = SnapshotMeta { position: record.applied, conf_state: record.conf_state };
    let files = SnapshotStore::new(Arc::new(SimDisk::new(1)), "default", partition);
    files.create_dir().unwrap();
    let rows = state.read().unwrap();
    files.save(&meta, |out| store::snapshot::export(&rows, partition, out)).unwrap();
    let size = files.size(meta.position).unwrap();
    let file = files.read_chunk(meta.position, 0, size as usize).unwrap();
    Fixture { file, path: files.path(meta.position), meta }
}
