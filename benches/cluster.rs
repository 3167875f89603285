//! Cluster benchmark on loopback with real `cohort` processes. Prints, in one run:
//! write throughput and p50/p99 latency of 1 KiB writes at 1 and 64 concurrent clients, for a
//! single-node cluster and a 3-node cluster (and their ratio), and failover time (leader
//! killed with SIGKILL to the first successful write).
//!
//! `cargo bench --bench cluster` runs each load for 10 s (`COHORT_BENCH_SECONDS` overrides);
//! without `--bench` (as `cargo test --all-targets` runs it) it makes a short smoke run.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
mod common;

use cluster::{repo, TestCluster};
use common::{client, run_load, write_kib};
use std::time::{Duration, Instant};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let seconds: u64 =
        std::env::var("COHORT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(if full { 10 } else { 1 });
    let duration = Duration::from_secs(seconds);
    let concurrency: &[u64] = if full { &[1, 64] } else { &[1, 8] };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut rows = Vec::new();
    for nodes in [1, 3] {
        let cluster = TestCluster::start(nodes);
        rt.block_on(client(&cluster, 1).create_repository(&repo("bench.git"), None)).unwrap();
        for &clients in concurrency {
            // Warm up connections and the leader cache.
            rt.block_on(run_load(&cluster, &repo("bench.git"), clients, Duration::from_millis(300)));
            let load = rt.block_on(run_load(&cluster, &repo("bench.git"), clients, duration));
            println!(
                "{nodes}-node, {clients:>2} clients: {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} writes)",
                load.throughput(),
                load.percentile(0.50).as_secs_f64() * 1e3,
                load.percentile(0.99).as_secs_f64() * 1e3,
                load.writes
            );
            rows.push((nodes, clients, load));
        }
    }
    for &clients in concurrency {
        let single = rows.iter().find(|r| r.0 == 1 && r.1 == clients).unwrap();
        let triple = rows.iter().find(|r| r.0 == 3 && r.1 == clients).unwrap();
        println!(
            "ratio 3-node / 1-node at {clients:>2} clients: throughput {:.2}x, p99 latency {:.2}x",
            triple.2.throughput() / single.2.throughput(),
            triple.2.percentile(0.99).as_secs_f64() / single.2.percentile(0.99).as_secs_f64()
        );
    }

    // Failover: kill the partition's leader, time the first write that succeeds after it.
    let reps = if full { 3 } else { 1 };
    let mut failovers = Vec::new();
    for _ in 0..reps {
        let mut cluster = TestCluster::start(3);
        let c = client(&cluster, 7);
        rt.block_on(c.create_repository(&repo("bench.git"), None)).unwrap();
        rt.block_on(write_kib(&c, &repo("bench.git"), 0, 0));
        let leader = cluster.leader_of(1);
        cluster.kill9(leader);
        let killed = Instant::now();
        rt.block_on(write_kib(&c, &repo("bench.git"), 0, 1));
        failovers.push(killed.elapsed());
    }
    failovers.sort();
    println!(
        "failover (tick {} ms, election timeout {}-{} ms): median {:.0} ms over {} tries {:?}",
        cluster::TICK_MS,
        cluster::TICK_MS * cluster::ELECTION_TICKS as u64,
        cluster::ELECTION_TIMEOUT_MAX.as_millis(),
        failovers[failovers.len() / 2].as_secs_f64() * 1e3,
        failovers.len(),
        failovers.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
}
