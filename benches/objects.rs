//! Large-object benchmark, with real `cohort` processes on loopback: 3 nodes, every partition
//! on all three. Measures, in one run and on one disk:
//!
//! - the disk's sequential write rate (a file written and fsynced next to the nodes' data);
//! - uploading one object in pieces through the client (`Client::upload_object`, as
//!   `cohort object put` does), as MiB/s and as a ratio to the disk's rate;
//! - downloading it by range from the leader (`Client::read_object_to`, as `cohort object get`
//!   does), checking its id as it arrives;
//! - each node's RSS at idle before each transfer and its peak while the transfer runs (the
//!   kernel's high-water mark, reset before each; the goal: at most 64 MiB above idle: no node
//!   holds a whole object).
//!
//! `cargo bench --bench objects` moves 1 GiB (`COHORT_BENCH_OBJECT_MIB` overrides); without
//! `--bench` (as `cargo test --all-targets` runs it) it makes a small smoke run that asserts
//! the object comes back intact.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
mod common;

use cluster::{repo, TestCluster};
use cohort_core::state_machine::{ObjectHasher, ObjectKind, Oid};
use common::{disk_write_rate, peak_rss_bytes, rss_bytes};
use rand::RngCore as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
const NODES: u64 = 3;

/// Resets the kernel's record of a process's peak RSS (Linux 4.0+); false if not allowed.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Each node's peak RSS during a transfer: the kernel's own high-water mark where it can be
/// reset (it sees every spike), else the highest of samples taken every 20 ms.
struct PeakRss {
    pids: Vec<u32>,
    kernel: bool,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<Vec<u64>>,
}

impl PeakRss {
    fn start(pids: Vec<u32>) -> PeakRss {
        let kernel = pids.iter().all(|&pid| reset_peak_rss(pid));
        let sampled = pids.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peaks = vec![0u64; sampled.len()];
            while !stopped.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&sampled) {
                    *peak = (*peak).max(rss_bytes(*pid));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peaks
        });
        PeakRss { pids, kernel, stop, sampler }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.sampler.join().unwrap();
        if !self.kernel {
            println!("  (peak RSS sampled every 20 ms: the kernel's high-water mark cannot be reset here)");
            return sampled;
        }
        self.pids.iter().map(|&pid| peak_rss_bytes(pid)).collect()
    }
}

/// A file of `mib` MiB of random bytes; returns it with the blob's id.
fn random_file(dir: &std::path::Path, mib: u64) -> (std::fs::File, Oid) {
    let path = dir.join("object.bin");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hasher = ObjectHasher::new(ObjectKind::Blob, mib * 1024 * 1024);
    let mut chunk = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        rand::thread_rng().fill_bytes(&mut chunk);
        hasher.update(&chunk);
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
    (std::fs::File::open(&path).unwrap(), hasher.finish())
}

/// Hashes what is written to it, keeping none of it.
struct HashingSink(Option<ObjectHasher>);

impl std::io::Write for HashingSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.as_mut().unwrap().update(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn print_rss(what: &str, idle: &[u64], peaks: &[u64]) -> u64 {
    let mut worst = 0;
    for (i, (idle, peak)) in idle.iter().zip(peaks).enumerate() {
        let above = peak.saturating_sub(*idle);
        worst = worst.max(above);
        println!(
            "  node {}: RSS idle {:.1} MiB, peak during {what} {:.1} MiB: {:+.1} MiB",
            i + 1,
            *idle as f64 / MIB,
            *peak as f64 / MIB,
            above as f64 / MIB
        );
    }
    worst
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mib: u64 = std::env::var("COHORT_BENCH_OBJECT_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(if full {
        1024
    } else {
        6
    });
    let cluster = TestCluster::start_with(NODES, Some(NODES as usize), cluster::test_raft());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let disk_rate = disk_write_rate(cluster.dir.path(), if full { 512 } else { 16 });
    let work = tempfile::tempdir().unwrap();
    let (mut file, oid) = random_file(work.path(), mib);
    let client = common::client(&cluster, 1);
    let big = repo("big.git");
    rt.block_on(client.create_repository(&big, None)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pids: Vec<u32> = (1..=NODES).map(|id| cluster.children[&id].id()).collect();
    let idle: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();

    let sampler = PeakRss::start(pids.clone());
    let started = Instant::now();
    let size_bytes = mib * 1024 * 1024;
    rt.block_on(client.upload_object(&big, ObjectKind::Blob, size_bytes, oid, vec![], &mut file)).unwrap();
    let upload_elapsed = started.elapsed();
    let upload_peaks = sampler.finish();

    // Idle again (the node hands freed memory back every second) before the next transfer.
    std::thread::sleep(Duration::from_secs(3));
    let idle_after_upload: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();
    let sampler = PeakRss::start(pids);
    let started = Instant::now();
    let mut sink = HashingSink(Some(ObjectHasher::new(ObjectKind::Blob, size_bytes)));
    let shape = rt.block_on(client.read_object_to(&big, oid, false, &mut sink)).unwrap();
    let download_elapsed = started.elapsed();
    let download_peaks = sampler.finish();
    assert_eq!(shape, Some((ObjectKind::Blob, size_bytes)));
    assert_eq!(sink.0.take().unwrap().finish(), oid, "the object comes back intact");

    let upload_rate = mib as f64 / upload_elapsed.as_secs_f64();
    let download_rate = mib as f64 / download_elapsed.as_secs_f64();
    println!("large objects: {NODES} nodes on loopback, one {mib} MiB blob in 1 MiB pieces");
    println!("  disk sequential write (1 MiB appends, fsync): {disk_rate:.0} MiB/s");
    println!(
        "  upload: {:.1} s, {upload_rate:.1} MiB/s = {:.3}x the disk",
        upload_elapsed.as_secs_f64(),
        upload_rate / disk_rate
    );
    println!(
        "  download (linearizable, from the leader): {:.1} s, {download_rate:.1} MiB/s = {:.3}x the disk",
        download_elapsed.as_secs_f64(),
        download_rate / disk_rate
    );
    let upload_worst = print_rss("upload", &idle, &upload_peaks);
    let download_worst = print_rss("download", &idle_after_upload, &download_peaks);
    println!(
        "  worst peak above idle: upload {:.1} MiB, download {:.1} MiB (goal: at most 64 MiB)",
        upload_worst as f64 / MIB,
        download_worst as f64 / MIB
    );
}
