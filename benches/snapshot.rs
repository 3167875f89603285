//! Snapshot benchmark on loopback with real `cohort` processes. Fills one partition of a
//! 5-node cluster (3 replicas per partition, logs compacted as the store makes state durable)
//! with random 1 MiB blobs, then
//! adds a learner on a node outside the partition. Because the log's start was compacted away,
//! the learner can only catch up through a snapshot streamed by the leader. Prints, in one run:
//! the partition's size, the snapshot's size, the transfer's throughput (from the leader's
//! snapshot metrics), the time from issuing the add to the learner having applied everything
//! the leader committed, the fill's write throughput, and the ratio of transfer to fill
//! throughput.
//!
//! `cargo bench --bench snapshot` fills 100 MiB (`COHORT_BENCH_SNAPSHOT_MIB` overrides);
//! without `--bench` (as `cargo test --all-targets` runs it) it makes a 4 MiB smoke run that
//! still asserts that a snapshot was sent and installed and that the learner caught up.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
mod common;

use cluster::{repo, TestCluster};
use cohort::config::RawRaft;
use common::{client, progress, wait_for, write_blob, SnapshotMetrics};
use rand::RngCore as _;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
const NODES: u64 = 5;
const REPLICAS: usize = 3;
/// Each fill write carries one blob of this size (and a reference to it).
const BLOB_BYTES: usize = 1024 * 1024;
/// Fill writes in flight at once, each from its own client (a client's writes are sequenced).
const IN_FLIGHT: u64 = 8;
/// Low, so that a burst of small writes after the fill makes every replica compact its log
/// past its start: then the learner cannot be caught up from the log alone.
const RETAINED_ENTRIES: u64 = 200;
const REPO: &str = "snapshot-bench.git";

/// Writes `count` blobs from `IN_FLIGHT` concurrent clients; `blob(n)` makes the n-th one.
/// Returns the wall time taken.
async fn write_many(cluster: &TestCluster, count: u64, prefix: &'static str, blob: fn(u64) -> Vec<u8>) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT.min(count) {
        let client = client(cluster, rand::random());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                write_blob(&client, &repo(REPO), &format!("{prefix}{n}"), blob(n)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

/// Random bytes, so that no two blobs share content (objects are content-addressed).
fn random_blob(_: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOB_BYTES];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

fn small_blob(n: u64) -> Vec<u8> {
    format!("compaction filler {n}").into_bytes()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mib: u64 = std::env::var("COHORT_BENCH_SNAPSHOT_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(if full {
        100
    } else {
        4
    });
    let blobs = (mib * 1024 * 1024).div_ceil(BLOB_BYTES as u64);
    let raft = RawRaft { log_retain_entries: RETAINED_ENTRIES, ..cluster::test_raft() };
    let cluster = TestCluster::start_with(NODES, Some(REPLICAS), raft);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let admin = client(&cluster, 1);
    rt.block_on(admin.create_repository(&repo(REPO), None)).unwrap();

    // Fill the partition.
    let fill_elapsed = rt.block_on(write_many(&cluster, blobs, "blob", random_blob));
    let fill_bytes = blobs as f64 * BLOB_BYTES as f64;

    // 1 MiB writes are few entries: small writes take every voter's log past what a leader
    // keeps for followers, which forces the learner onto a snapshot.
    rt.block_on(write_many(&cluster, RETAINED_ENTRIES + 10, "small", small_blob));
    let info = rt.block_on(admin.repo_info(&repo(REPO))).unwrap();
    let partition = info.id;
    let voters: BTreeSet<u64> = info.voters.iter().copied().collect();
    assert_eq!(voters.len(), REPLICAS, "{info:?}");
    assert!(info.learners.is_empty(), "{info:?}");
    wait_for("every voter to compact its log", Duration::from_secs(60), || {
        voters.iter().all(|&v| cluster.compacted_index(v, partition) >= RETAINED_ENTRIES)
    });
    let leader = cluster.leader_of(partition);
    let learner = (1..=NODES).find(|n| !voters.contains(n)).unwrap();
    let before: Vec<SnapshotMetrics> = (1..=NODES).map(|id| SnapshotMetrics::read(&cluster, id)).collect();

    // Add the learner; it has caught up when it has applied everything the leader committed.
    let started = Instant::now();
    let added = rt.block_on(admin.change_members(partition, learner, "add-learner")).unwrap();
    let member_elapsed = started.elapsed();
    assert!(added.learners.contains(&learner), "{added:?}");
    let limit = Duration::from_secs(if full { 600 } else { 60 });
    let (commit, applied) = loop {
        let (commit, applied) = rt.block_on(progress(&admin, &cluster, partition, &voters, learner));
        if commit > 0 && applied >= commit {
            break (commit, applied);
        }
        assert!(
            started.elapsed() < limit,
            "learner {learner} did not catch up within {limit:?}: applied {applied} of commit {commit}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let add_elapsed = started.elapsed();
    assert_eq!(cluster.leader_of(partition), leader, "leadership moved during the benchmark");

    // Snapshot transfers during the add, by node.
    let deltas: Vec<SnapshotMetrics> =
        (1..=NODES).map(|id| SnapshotMetrics::read(&cluster, id).since(&before[id as usize - 1])).collect();
    for (i, d) in deltas.iter().enumerate() {
        let id = i as u64 + 1;
        if id != leader {
            assert_eq!(d.sent, 0.0, "only the leader sends a snapshot, but node {id} sent: {d:?}");
        }
        if id != learner {
            assert_eq!(d.received, 0.0, "only the learner receives a snapshot, but node {id} did: {d:?}");
        }
    }
    let sent = deltas[leader as usize - 1];
    let received = deltas[learner as usize - 1];
    // The learner's log began after a compaction: had it caught up from the log, nothing
    // would have been sent.
    assert!(sent.sent >= 1.0, "the leader sent no snapshot (did the learner catch up from the log?): {sent:?}");
    assert!(received.received >= 1.0, "the learner installed no snapshot: {received:?}");
    let snapshot_bytes = sent.sent_bytes / sent.sent;
    let send_seconds = sent.send_seconds_sum / sent.send_seconds_count;
    let transfer_throughput = sent.sent_bytes / MIB / sent.send_seconds_sum;
    let fill_throughput = fill_bytes / MIB / fill_elapsed.as_secs_f64();

    println!(
        "cluster: {NODES} nodes, {REPLICAS} replicas, log kept for followers {RETAINED_ENTRIES} entries behind; \
         partition {partition}, leader node {leader}, learner node {learner}"
    );
    println!(
        "fill: {:.1} MiB in {blobs} writes of {} KiB, {IN_FLIGHT} in flight: {:.2} s, {:.1} MiB/s",
        fill_bytes / MIB,
        BLOB_BYTES / 1024,
        fill_elapsed.as_secs_f64(),
        fill_throughput
    );
    println!("partition size: {:.1} MiB of blobs", fill_bytes / MIB);
    println!(
        "snapshot: {:.1} MiB, {} sent, {} received ({:.1} MiB received)",
        snapshot_bytes / MIB,
        sent.sent,
        received.received,
        received.received_bytes / MIB
    );
    println!("snapshot transfer: {:.2} s first chunk to last ack, {:.1} MiB/s", send_seconds, transfer_throughput);
    println!(
        "add learner: {:.2} s from issuing the add to applied index {applied} >= commit index {commit} \
         (membership change itself {:.2} s)",
        add_elapsed.as_secs_f64(),
        member_elapsed.as_secs_f64()
    );
    println!(
        "ratio snapshot transfer / fill throughput: {:.2}x ({:.1} / {:.1} MiB/s)",
        transfer_throughput / fill_throughput,
        transfer_throughput,
        fill_throughput
    );
}
