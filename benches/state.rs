//! State-on-disk benchmark, with real `cohort` processes on loopback: 4 nodes, 3 replicas per
//! partition. Measures, in one run and on one disk:
//!
//! - the disk's sequential write rate (a file written and fsynced next to the nodes' data);
//! - creating many repositories (each its own partition), then writing objects across them
//!   (one large repository among them), as MiB/s and as a ratio to the disk's rate;
//! - each node's RSS before and after, and its growth as a share of the data written and of the
//!   data the node holds a replica of (the goal: at most 10%: a node's memory does not grow with
//!   the data it stores);
//! - the restart time of a node holding that data, then again once one partition has applied
//!   many more log entries (the goal: at most 2 s, and independent of the log's length);
//! - the time to send the large repository's partition to a new learner as a snapshot.
//!
//! `cargo bench --bench state` writes 1 GiB across 1,000 repositories, 256 MiB of it in one,
//! and 100,000 extra log entries (`COHORT_BENCH_STATE_MIB`, `COHORT_BENCH_STATE_REPOS`,
//! `COHORT_BENCH_STATE_BIG_MIB`, `COHORT_BENCH_STATE_ENTRIES` override); without `--bench` (as
//! `cargo test --all-targets` runs it) it makes a small smoke run that asserts what it can.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
mod common;

use cluster::{repo, TestCluster};
use common::{client, disk_write_rate, progress, rss_bytes, wait_for, write_blob, SnapshotMetrics};
use rand::RngCore as _;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
const NODES: u64 = 4;
const REPLICAS: usize = 3;
/// Each data write carries one object of this size.
const OBJECT_BYTES: usize = 256 * 1024;
/// Writes in flight at once, each from its own client.
const IN_FLIGHT: u64 = 16;
const BIG: &str = "big.git";

struct Sizes {
    data_mib: u64,
    repos: u64,
    big_mib: u64,
    entries: u64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn sizes(full: bool) -> Sizes {
    let (data, repos, big, entries) = if full { (1024, 1000, 256, 100_000) } else { (12, 6, 4, 500) };
    Sizes {
        data_mib: env_or("COHORT_BENCH_STATE_MIB", data),
        repos: env_or("COHORT_BENCH_STATE_REPOS", repos).max(2),
        big_mib: env_or("COHORT_BENCH_STATE_BIG_MIB", big),
        entries: env_or("COHORT_BENCH_STATE_ENTRIES", entries),
    }
}

fn small_repo(i: u64) -> String {
    format!("r/{i:05}.git")
}

fn rss_all(cluster: &TestCluster) -> Vec<u64> {
    (1..=NODES).map(|id| rss_bytes(cluster.children[&id].id())).collect()
}

/// Runs `count` jobs `job(n)` from `IN_FLIGHT` tasks; returns the wall time.
async fn run_many<F, Fut>(cluster: &TestCluster, count: u64, job: F) -> Duration
where
    F: Fn(Arc<cohort_net::client::Client>, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let job = Arc::new(job);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT.min(count) {
        let (client, next, job) = (Arc::new(client(cluster, rand::random())), next.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                job(client.clone(), n).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

fn random_object() -> Vec<u8> {
    let mut data = vec![0u8; OBJECT_BYTES];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

/// Kills node `id` and starts it again; returns the time from its start to serving requests.
fn restart_time(cluster: &mut TestCluster, id: u64) -> Duration {
    cluster.kill9(id);
    let started = Instant::now();
    cluster.start_node(id);
    cluster.wait_serving(id);
    started.elapsed()
}

/// The object bytes each node holds a replica of, from each repository's voters.
fn held_bytes_by_node(
    rt: &tokio::runtime::Runtime,
    admin: &cohort_net::client::Client,
    sizes: &Sizes,
    big_objects: u64,
    rest_objects: u64,
) -> Vec<u64> {
    let small = sizes.repos - 1;
    let mut held = vec![0u64; NODES as usize];
    let repos = std::iter::once((BIG.to_string(), big_objects))
        .chain((0..small).map(|n| (small_repo(n), rest_objects / small + u64::from(n < rest_objects % small))));
    for (name, objects) in repos {
        let info = rt.block_on(admin.repo_info(&repo(&name))).unwrap();
        for voter in info.voters {
            held[voter as usize - 1] += objects * OBJECT_BYTES as u64;
        }
    }
    held
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = sizes(full);
    let big_objects = (sizes.big_mib * 1024 * 1024).div_ceil(OBJECT_BYTES as u64);
    let rest_objects = ((sizes.data_mib.saturating_sub(sizes.big_mib)) * 1024 * 1024).div_ceil(OBJECT_BYTES as u64);
    let mut cluster = TestCluster::start_with(NODES, Some(REPLICAS), cluster::test_raft());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let disk_rate = disk_write_rate(cluster.dir.path(), if full { 256 } else { 16 });
    let rss_before = rss_all(&cluster);

    // Repositories, each in its own partition.
    let admin = client(&cluster, 1);
    rt.block_on(admin.create_repository(&repo(BIG), None)).unwrap();
    let small = sizes.repos - 1;
    let create_elapsed = rt.block_on(run_many(&cluster, small, |client, n| async move {
        client.create_repository(&repo(&small_repo(n)), None).await.expect("create");
    }));

    // The data: the big repository's share, and the rest round-robin.
    let started = Instant::now();
    rt.block_on(run_many(&cluster, big_objects, |client, n| async move {
        write_blob(&client, &repo(BIG), &format!("o{n}"), random_object()).await;
    }));
    rt.block_on(run_many(&cluster, rest_objects, move |client, n| async move {
        write_blob(&client, &repo(&small_repo(n % small)), &format!("o{n}"), random_object()).await;
    }));
    let write_elapsed = started.elapsed();
    let written_bytes = (big_objects + rest_objects) * OBJECT_BYTES as u64;
    // Let the stores make it all durable and the logs compact.
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_all(&cluster);
    let held_bytes = held_bytes_by_node(&rt, &admin, &sizes, big_objects, rest_objects);
    let restart_short_log = restart_time(&mut cluster, 1);

    // Many more entries, in one small repository's partition.
    let entries_elapsed = rt.block_on(run_many(&cluster, sizes.entries, |client, n| async move {
        write_blob(&client, &repo(&small_repo(0)), "counter", n.to_le_bytes().to_vec()).await;
    }));
    std::thread::sleep(Duration::from_secs(2));
    let restart_long_log = restart_time(&mut cluster, 1);

    // The big partition goes to a learner on the one node outside it, as a snapshot.
    let info = rt.block_on(admin.repo_info(&repo(BIG))).unwrap();
    let partition = info.id;
    let voters: BTreeSet<u64> = info.voters.iter().copied().collect();
    assert_eq!(voters.len(), REPLICAS, "{info:?}");
    wait_for("every voter to compact the big partition's log", Duration::from_secs(120), || {
        voters.iter().all(|&v| cluster.compacted_index(v, partition) >= 1)
    });
    let learner = (1..=NODES).find(|n| !voters.contains(n)).unwrap();
    // Every voter's counters, not only the leader's: node 1, restarted above, may still be
    // named leader of a partition it led, which elects on the add, and another voter sends.
    let read_voters = || voters.iter().map(|&v| SnapshotMetrics::read(&cluster, v)).collect::<Vec<_>>();
    let before = read_voters();
    let started = Instant::now();
    rt.block_on(admin.change_members(partition, learner, "add-learner")).unwrap();
    let limit = Duration::from_secs(if full { 900 } else { 60 });
    loop {
        let (commit, applied) = rt.block_on(progress(&admin, &cluster, partition, &voters, learner));
        if commit > 0 && applied >= commit {
            break;
        }
        assert!(started.elapsed() < limit, "the learner did not catch up within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let catch_up = started.elapsed();
    let deltas: Vec<SnapshotMetrics> =
        read_voters().iter().zip(&before).map(|(after, before)| after.since(before)).collect();
    let sent = deltas.iter().find(|delta| delta.sent >= 1.0).copied();
    let sent = sent.unwrap_or_else(|| panic!("the learner caught up by snapshot: {deltas:?}"));

    let data_mib = written_bytes as f64 / MIB;
    let write_rate = data_mib / write_elapsed.as_secs_f64();
    println!(
        "cluster: {NODES} nodes, {REPLICAS} replicas per partition; {} repositories ({} partitions), objects of {} KiB, {IN_FLIGHT} writes in flight",
        sizes.repos,
        sizes.repos,
        OBJECT_BYTES / 1024
    );
    println!("disk: sequential write {disk_rate:.0} MiB/s (1 MiB appends, one fsync)");
    println!(
        "create: {} repositories in {:.1} s ({:.0}/s)",
        small,
        create_elapsed.as_secs_f64(),
        small as f64 / create_elapsed.as_secs_f64()
    );
    println!(
        "write: {data_mib:.0} MiB ({} MiB in {BIG}) in {:.1} s: {write_rate:.1} MiB/s, {:.3}x the disk's rate (each byte is written by 3 replicas)",
        sizes.big_mib,
        write_elapsed.as_secs_f64(),
        write_rate / disk_rate
    );
    for id in 1..=NODES {
        let (b, a) = (rss_before[id as usize - 1], rss_after[id as usize - 1]);
        let growth = a.saturating_sub(b);
        let held = held_bytes[id as usize - 1];
        println!(
            "node {id}: RSS {:.0} MiB before, {:.0} MiB after; growth {:.1}% of the data written, {:.1}% of the {:.0} MiB it holds (goal: at most 10%)",
            b as f64 / MIB,
            a as f64 / MIB,
            100.0 * growth as f64 / written_bytes as f64,
            100.0 * growth as f64 / held.max(1) as f64,
            held as f64 / MIB
        );
    }
    println!(
        "restart: node 1 serves {:.2} s after its start; after {} more log entries (written in {:.1} s) {:.2} s: {:.2}x",
        restart_short_log.as_secs_f64(),
        sizes.entries,
        entries_elapsed.as_secs_f64(),
        restart_long_log.as_secs_f64(),
        restart_long_log.as_secs_f64() / restart_short_log.as_secs_f64()
    );
    println!(
        "snapshot: {:.0} MiB partition to a learner: sent {:.1} MiB in {:.2} s ({:.1} MiB/s); learner caught up {:.2} s after the add",
        sizes.big_mib,
        sent.sent_bytes / MIB,
        sent.send_seconds_sum,
        sent.sent_bytes / MIB / sent.send_seconds_sum.max(1e-9),
        catch_up.as_secs_f64()
    );
    if !full {
        // The smoke run: small numbers, loose bounds, but the mechanisms all ran.
        assert!(restart_long_log < Duration::from_secs(20), "restart took {restart_long_log:?}");
    }
}
