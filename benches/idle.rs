//! What idle partitions cost, with real `cohort` processes on loopback: 3 nodes, 3 replicas per
//! partition, production Raft timing (100 ms ticks, 1 s election timeout, quiesce after 2 s).
//! Measures, in one run:
//!
//! - partitions created per second (one repository each, 16 creations in flight);
//! - idle with no partition, then once every replica has quiesced: the nodes' CPU over an idle window (as a share of one
//!   core) and the peer messages per second (only node liveness should remain: independent of
//!   the number of partitions), and RSS per quiesced partition per node;
//! - wake latency: the first write to each of a sample of quiesced partitions, p50 and p99,
//!   next to the latency of writes to a partition already awake, and the elections started
//!   while waking them (goal: none);
//! - failover: the node leading the most partitions is killed once they have quiesced again;
//!   the time until every partition it led has a leader on another node; then it restarts:
//!   time to serving and to every replica quiesced again, and elections meanwhile (goal: none);
//! - (full run only) the write throughput of 48 busy partitions among all the idle ones, next
//!   to 48 busy partitions in a fresh cluster of only 48.
//!
//! `cargo bench --bench idle` uses 2,000 partitions (`COHORT_BENCH_IDLE_PARTITIONS`
//! overrides); without `--bench` (as `cargo test --all-targets` runs it) it makes a 1,000
//! partition smoke run that asserts the mechanisms worked. The store's page cache is 4 MiB, so
//! that RSS per replica measures the replicas, not a cache filling up.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
mod common;

use cluster::{repo, TestCluster};
use common::{client, cpu_seconds, metric, rss_bytes, wait_for, write_blob};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const IN_FLIGHT: u64 = 16;
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Busy partitions among the idle ones, and how long they are driven.
const ACTIVE: u64 = 48;
const ACTIVE_WINDOW: Duration = Duration::from_secs(10);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn name(i: u64) -> String {
    format!("idle/{i:06}.git")
}

/// A metric summed over the running nodes. Labelled families (elections by cause) export no
/// sample until their first event, so a missing one counts as 0 here.
fn sum_metric(cluster: &TestCluster, name: &str) -> f64 {
    (1..=NODES).filter(|id| cluster.children.contains_key(id)).map(|id| cluster.metric(id, name)).sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Creates `count` repositories from `IN_FLIGHT` clients; returns the wall time.
fn create_all(rt: &tokio::runtime::Runtime, cluster: &TestCluster, count: u64) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (client, next) = (client(cluster, rand::random()), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        break;
                    }
                    client.create_repository(&repo(&name(n)), None).await.expect("create");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    started.elapsed()
}

/// Writes per second of `ACTIVE` clients, each writing to its own repository (`name(0)` to
/// `name(ACTIVE - 1)`) for `ACTIVE_WINDOW`, after one warm-up write each.
fn active_throughput(rt: &tokio::runtime::Runtime, cluster: &TestCluster) -> f64 {
    let writes = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..ACTIVE {
            let (client, writes) = (client(cluster, 100 + i), writes.clone());
            tasks.push(tokio::spawn(async move {
                let repo = repo(&name(i));
                write_blob(&client, &repo, "active", b"warm-up".to_vec()).await;
                let deadline = Instant::now() + ACTIVE_WINDOW;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    write_blob(&client, &repo, "active", n.to_le_bytes().to_vec()).await;
                    n += 1;
                }
                writes.fetch_add(n, Ordering::Relaxed);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    writes.load(Ordering::Relaxed) as f64 / ACTIVE_WINDOW.as_secs_f64()
}

/// Waits until every node reports `hosted` quiesced replicas; returns how long that took.
fn wait_all_quiesced(cluster: &TestCluster, hosted: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    wait_for("every replica to quiesce", limit, || {
        (1..=NODES).all(|id| metric(cluster, id, "cohort_partitions_quiesced") as u64 >= hosted)
    });
    started.elapsed()
}

/// Each partition's leader, from the merged status.
fn leaders(cluster: &TestCluster) -> BTreeMap<u64, u64> {
    let status = cluster.status();
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_u64().unwrap(), p["leader"].as_u64().unwrap()))
        .collect()
}

/// The nodes' CPU (share of one core, all nodes together) and peer messages per second over
/// `IDLE_WINDOW`.
fn idle_window(cluster: &TestCluster, pids: &[u32]) -> (f64, f64) {
    // The scrapes stay outside the CPU window: they are the benchmark's work, not idling.
    let sent_before = sum_metric(cluster, "cohort_transport_messages_sent_total");
    let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let cpu = (pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu_before) / started.elapsed().as_secs_f64();
    let messages =
        (sum_metric(cluster, "cohort_transport_messages_sent_total") - sent_before) / started.elapsed().as_secs_f64();
    (cpu, messages)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let partitions = env_or("COHORT_BENCH_IDLE_PARTITIONS", if full { 2_000 } else { 1_000 });
    let samples = partitions.min(if full { 500 } else { 100 });
    let mut cluster = TestCluster::start_configured(NODES, |config| {
        config.replicas = Some(3);
        config.raft = cohort::config::RawRaft::default();
        // A small page cache, so that RSS per replica is the replicas' and not a cache filling.
        config.store.cache_bytes = 4 << 20;
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pids: Vec<u32> = (1..=NODES).map(|id| cluster.children[&id].id()).collect();
    let hosted = partitions + 1; // every partition has a replica on every node, and the directory
    wait_all_quiesced(&cluster, 1, Duration::from_secs(60));
    let rss_before: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let (empty_cpu, empty_messages) = idle_window(&cluster, &pids);

    let create_elapsed = create_all(&rt, &cluster, partitions);
    let quiesce_elapsed = wait_all_quiesced(&cluster, hosted, Duration::from_secs(600));

    let (idle_cpu, idle_messages) = idle_window(&cluster, &pids);
    let rss_after: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let still_quiesced = (1..=NODES).all(|id| metric(&cluster, id, "cohort_partitions_quiesced") as u64 >= hosted);

    // Wake latency: the first write to quiesced partitions, then writes to an awake one.
    let writer = client(&cluster, 7);
    let elections_before = sum_metric(&cluster, "cohort_elections_total");
    let step = partitions / samples;
    let mut wake: Vec<Duration> = (0..samples)
        .map(|i| {
            let started = Instant::now();
            rt.block_on(write_blob(&writer, &repo(&name(i * step)), "wake", b"wake".to_vec()));
            started.elapsed()
        })
        .collect();
    let wake_elections = sum_metric(&cluster, "cohort_elections_total") - elections_before;
    let mut awake: Vec<Duration> = (0..samples)
        .map(|i| {
            let started = Instant::now();
            rt.block_on(write_blob(&writer, &repo(&name(0)), "awake", i.to_le_bytes().to_vec()));
            started.elapsed()
        })
        .collect();
    wake.sort();
    awake.sort();

    // Failover of quiesced partitions.
    wait_all_quiesced(&cluster, hosted, Duration::from_secs(120));
    let before = leaders(&cluster);
    let mut led: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (&partition, &leader) in &before {
        led.entry(leader).or_default().push(partition);
    }
    let (victim, victims) = led.into_iter().max_by_key(|(_, p)| p.len()).unwrap();
    cluster.kill9(victim);
    let started = Instant::now();
    wait_for("every partition of the killed node to elect a leader elsewhere", Duration::from_secs(120), || {
        let now = leaders(&cluster);
        victims.iter().all(|p| now.get(p).is_some_and(|&l| l != 0 && l != victim))
    });
    let failover = started.elapsed();

    // The killed node comes back: its replicas rest, the leaders that excused it catch it up,
    // and nothing should be elected.
    let elections_before = sum_metric(&cluster, "cohort_elections_total");
    let started = Instant::now();
    cluster.start_node(victim);
    cluster.wait_serving(victim);
    let restart_serving = started.elapsed();
    let requiesced = wait_all_quiesced(&cluster, hosted, Duration::from_secs(300)) + restart_serving;
    let restart_elections = sum_metric(&cluster, "cohort_elections_total") - elections_before;
    let election_causes: Vec<String> = (1..=NODES)
        .flat_map(|id| {
            cluster::http_get(&cluster.node(id).http_address, "/metrics")
                .lines()
                .filter(|l| l.starts_with("cohort_elections_total{"))
                .map(|l| format!("node {id} {l}"))
                .collect::<Vec<_>>()
        })
        .collect();

    // 48 busy partitions among all the others, then in a cluster of only 48 (full run only).
    let throughput = full.then(|| {
        let among_all = active_throughput(&rt, &cluster);
        drop(cluster);
        let alone = TestCluster::start_configured(NODES, |config| {
            config.replicas = Some(3);
            config.raft = cohort::config::RawRaft::default();
            config.store.cache_bytes = 4 << 20;
        });
        create_all(&rt, &alone, ACTIVE);
        (among_all, active_throughput(&rt, &alone))
    });

    println!(
        "cluster: {NODES} nodes, 3 replicas per partition, {partitions} partitions (+ the directory), 100 ms ticks, quiesce after 2 s"
    );
    println!(
        "create: {partitions} partitions in {:.1} s ({:.0}/s, {IN_FLIGHT} in flight); all quiesced {:.1} s later",
        create_elapsed.as_secs_f64(),
        partitions as f64 / create_elapsed.as_secs_f64(),
        quiesce_elapsed.as_secs_f64()
    );
    println!(
        "idle, no partition but the directory: {:.2}% of one core for the {NODES} nodes together, {:.1} peer messages/s",
        100.0 * empty_cpu,
        empty_messages
    );
    println!(
        "idle, {partitions} quiesced partitions: {:.2}% of one core, {:.1} peer messages/s ({:.4} per partition), over {} s; all still quiesced: {still_quiesced}",
        100.0 * idle_cpu,
        idle_messages,
        idle_messages / partitions as f64,
        IDLE_WINDOW.as_secs()
    );
    for (i, (b, a)) in rss_before.iter().zip(&rss_after).enumerate() {
        println!(
            "node {}: RSS {:.1} MiB before creating, {:.1} MiB with {hosted} quiesced replicas: {:.1} KiB per replica (goal: at most 8)",
            i + 1,
            *b as f64 / 1048576.0,
            *a as f64 / 1048576.0,
            a.saturating_sub(*b) as f64 / 1024.0 / hosted as f64
        );
    }
    println!(
        "wake: first write to {samples} quiesced partitions p50 {:.2} ms p99 {:.2} ms; writes to an awake partition p50 {:.2} ms p99 {:.2} ms: p99 ratio {:.2} (goal: at most 2); elections while waking: {wake_elections} (goal: 0)",
        percentile(&wake, 0.5).as_secs_f64() * 1e3,
        percentile(&wake, 0.99).as_secs_f64() * 1e3,
        percentile(&awake, 0.5).as_secs_f64() * 1e3,
        percentile(&awake, 0.99).as_secs_f64() * 1e3,
        percentile(&wake, 0.99).as_secs_f64() / percentile(&awake, 0.99).as_secs_f64()
    );
    println!(
        "failover: node {victim} killed leading {} quiesced partitions; every one had a new leader {:.2} s later",
        victims.len(),
        failover.as_secs_f64()
    );
    println!(
        "restart: node {victim} back with {hosted} replicas: serving after {:.2} s, every replica quiesced again after {:.2} s; elections: {restart_elections} (goal: 0 but the directory replica, which stays awake and may pre-vote once)",
        restart_serving.as_secs_f64(),
        requiesced.as_secs_f64()
    );
    if let Some((among_all, alone)) = throughput {
        println!(
            "active: {ACTIVE} busy partitions among {partitions}: {among_all:.0} writes/s; {ACTIVE} in a cluster of {ACTIVE}: {alone:.0} writes/s: {:.2} (goal: at least 0.90)",
            among_all / alone
        );
    }
    if !full {
        // The smoke run: the mechanisms worked, with loose bounds for a loaded CI machine.
        assert!(still_quiesced, "replicas woke while idle");
        assert!(idle_messages < 100.0, "idle peer messages {idle_messages:.1}/s: only node liveness should talk");
        assert!(idle_messages > 0.0, "node liveness heartbeats are counted as peer messages");
        assert_eq!(wake_elections, 0.0, "waking quiesced partitions started elections");
        // The restarted node's directory replica stays awake (it is never put to rest) and may
        // pre-vote once before its leader's heartbeat reaches it; no other replica may.
        assert!(restart_elections <= 1.0, "a node's restart started elections: {election_causes:?}");
    }
}
