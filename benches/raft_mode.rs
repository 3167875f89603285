//! What single-node Raft costs against no Raft, on the same partition, node and disk, and how
//! long turning Raft on and off takes. Prints, in one run, on a single-node cluster:
//! - 1 KiB write throughput and p50/p99 latency with Raft off and with single-node Raft, at 1
//!   and 64 concurrent clients, taken in turns (on, off, on, off: the machine's noise falls on
//!   both), and Raft's overhead (goal: at most 15% on throughput and on p50);
//! - the time to turn Raft off (until the switch is answered) and on (until the next write is
//!   acknowledged: the switch, then the election) on a partition holding 100 MiB and on a
//!   near-empty one (goal: independent of the data: nothing is copied).
//!
//! `cargo bench --bench raft_mode` runs each load for 5 s per turn (`COHORT_BENCH_SECONDS`
//! overrides); without `--bench` (as `cargo test --all-targets` runs it) it makes a short
//! smoke run with 4 MiB of data.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
mod common;

use cluster::{repo, TestCluster};
use cohort_core::state_machine::RepoId;
use cohort_net::client::Client;
use common::{client, run_load, write_blob, write_kib, Load};
use std::time::{Duration, Instant};

/// Turns of each mode per concurrency (A B A B).
const TURNS: usize = 2;

fn set_raft(rt: &tokio::runtime::Runtime, client: &Client, partition: u64, enabled: bool) -> Duration {
    let started = Instant::now();
    let now = rt.block_on(client.set_partition_raft(partition, enabled)).expect("switch");
    assert_eq!(now, enabled);
    started.elapsed()
}

/// Turns Raft off, then on, `times` times; the median time of each (on: until a write after it
/// is acknowledged).
fn switch_times(rt: &tokio::runtime::Runtime, client: &Client, repo: &RepoId, times: usize) -> (Duration, Duration) {
    let partition = rt.block_on(client.repo_info(repo)).expect("repo info").id;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for n in 0..times as u64 {
        off.push(set_raft(rt, client, partition, false));
        let started = Instant::now();
        set_raft(rt, client, partition, true);
        rt.block_on(write_kib(client, repo, 0, n));
        on.push(started.elapsed());
    }
    off.sort();
    on.sort();
    (off[off.len() / 2], on[on.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let seconds: u64 =
        std::env::var("COHORT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(if full { 5 } else { 1 });
    let turn = Duration::from_secs(seconds);
    let concurrency: &[u64] = if full { &[1, 64] } else { &[1, 8] };
    let data_mib: usize = if full { 100 } else { 4 };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cluster = TestCluster::start(1);
    let client = client(&cluster, 1);
    let bench = repo("bench.git");
    rt.block_on(client.create_repository(&bench, None)).unwrap();
    let partition = rt.block_on(client.repo_info(&bench)).unwrap().id;

    println!("single node, one partition, 1 KiB writes, {TURNS} turns of {seconds} s per mode, taken in turns");
    let mut overheads = Vec::new();
    for &clients in concurrency {
        let (mut on, mut off): (Option<Load>, Option<Load>) = (None, None);
        for _ in 0..TURNS {
            for enabled in [true, false] {
                set_raft(&rt, &client, partition, enabled);
                // Warm up connections and the leader cache.
                rt.block_on(run_load(&cluster, &bench, clients, Duration::from_millis(300)));
                let load = rt.block_on(run_load(&cluster, &bench, clients, turn));
                let total = if enabled { &mut on } else { &mut off };
                match total {
                    Some(total) => total.merge(load),
                    None => *total = Some(load),
                }
            }
        }
        let (on, off) = (on.unwrap(), off.unwrap());
        for (name, load) in [("Raft off        ", &off), ("single-node Raft", &on)] {
            println!(
                "{name} {clients:>2} clients: {:>8.0} writes/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} writes)",
                load.throughput(),
                ms(load.percentile(0.50)),
                ms(load.percentile(0.99)),
                load.writes
            );
        }
        let throughput = 1.0 - on.throughput() / off.throughput();
        let p50 = on.percentile(0.50).as_secs_f64() / off.percentile(0.50).as_secs_f64() - 1.0;
        println!(
            "Raft's overhead at {clients:>2} clients: {:.1}% less throughput, p50 {:+.1}%, p99 ratio {:.2}x (goal: at most 15% on both)",
            throughput * 100.0,
            p50 * 100.0,
            on.percentile(0.99).as_secs_f64() / off.percentile(0.99).as_secs_f64()
        );
        overheads.push((clients, throughput, p50));
    }

    // Switching on a partition with data against one with almost none.
    let big = repo("big.git");
    rt.block_on(client.create_repository(&big, None)).unwrap();
    let piece_bytes = 512 * 1024;
    for n in 0..data_mib * 2 {
        let mut data = vec![0u8; piece_bytes];
        data[..8].copy_from_slice(&(n as u64).to_le_bytes());
        rt.block_on(write_blob(&client, &big, &format!("piece{n}"), data));
    }
    let small = repo("small.git");
    rt.block_on(client.create_repository(&small, None)).unwrap();
    rt.block_on(write_kib(&client, &small, 0, 0));
    let times = if full { 5 } else { 2 };
    let (big_off, big_on) = switch_times(&rt, &client, &big, times);
    let (small_off, small_on) = switch_times(&rt, &client, &small, times);
    println!(
        "turning Raft off: {:.1} ms with {data_mib} MiB, {:.1} ms with 1 KiB ({:.2}x); \
         on, until a write is acknowledged: {:.1} ms with {data_mib} MiB, {:.1} ms with 1 KiB ({:.2}x); medians of {times}",
        ms(big_off),
        ms(small_off),
        big_off.as_secs_f64() / small_off.as_secs_f64(),
        ms(big_on),
        ms(small_on),
        big_on.as_secs_f64() / small_on.as_secs_f64()
    );
    let (refs, _) = rt.block_on(client.read_refs(&big, false)).unwrap();
    assert_eq!(refs.len(), data_mib * 2 + 1, "every write to the switched partition is there");
}
