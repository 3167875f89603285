//! What idle partitions cost, with real `cohort` processes on loopback: 3 nodes, 3 replicas per
//! partition, production Raft timing (100 ms ticks, 1 s election timeout, quiesce after 2 s),
//! followers unloaded after 60 s (20 s in the smoke run). Measures, in one run:
//!
//! - partitions created per second (one repository each, 16 creations in flight);
//! - idle with no partition; then once every replica has quiesced (before any unloads); then
//!   once every follower has unloaded: the nodes' CPU over an idle window (as a share of one
//!   core) and the peer messages per second (only node liveness should remain: independent of
//!   the number of partitions), and RSS and heap per quiesced replica (per unloaded replica:
//!   from the restarted node below, whose replicas are all unloaded). The partitions are
//!   created in two halves; what each replica of the second half added is the cost of one
//!   more, apart from the node's costs that do not grow with its replicas;
//! - wake latency: the first write to each of a sample of quiesced partitions, and of another
//!   sample whose followers are unloaded, p50 and p99, next to the latency of writes to a
//!   partition already awake, and the elections started while waking them (goal: none);
//! - failover: the node leading the most partitions is killed once they have quiesced again;
//!   the time until every partition it led has a leader on another node; then it restarts:
//!   time to serving and to every replica quiesced again, and elections meanwhile (goal: none);
//!   once its replicas unloaded, its RSS and heap per unloaded replica;
//! - (full run only, before the failover) the write throughput of 48 busy partitions among
//!   all the idle ones, next to 48 busy partitions in a fresh cluster of only 48.
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
use common::{anon_rss_bytes, client, cpu_seconds, metric, rss_bytes, wait_for, write_blob};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const IN_FLIGHT: u64 = 16;
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Busy partitions among the idle ones, and how long they are driven.
const ACTIVE: u64 = 48;
const ACTIVE_WINDOW: Duration = Duration::from_secs(10);
/// Metrics per node that count replicas loaded but asleep, and unloaded.
const QUIESCED: &str = "cohort_partitions_quiesced";
const UNLOADED: &str = "cohort_partitions_unloaded";
/// The heap a node holds (allocated, not freed): unlike RSS, it shrinks when replicas unload.
const HEAP: &str = "cohort_heap_in_use_bytes";

/// The store's page cache, part of the heap: shared by every partition, and bounded by
/// `[store] cache_bytes` however many there are.
const STORE_CACHE: &str = "cohort_store_cache_bytes";
/// Election timeouts a follower let pass, its leader's node being alive.
const HELD: &str = "cohort_elections_held_total";

fn heaps(cluster: &TestCluster) -> Vec<f64> {
    (1..=NODES).map(|id| metric(cluster, id, HEAP)).collect()
}

fn store_caches(cluster: &TestCluster) -> Vec<f64> {
    (1..=NODES).map(|id| metric(cluster, id, STORE_CACHE)).collect()
}

/// A figure as soon as it is measured (on stderr), so that a long run that fails later still
/// reports what it measured; the summary follows at the end.
fn progress(line: String) {
    eprintln!("[idle bench] {line}");
}

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

/// Elections started so far, by node and cause, from every running node's metrics.
fn elections_by_cause(cluster: &TestCluster) -> BTreeMap<(u64, String), f64> {
    let mut counts = BTreeMap::new();
    for id in (1..=NODES).filter(|id| cluster.children.contains_key(id)) {
        for line in cluster::http_get(&cluster.node(id).http_address, "/metrics").lines() {
            let Some(rest) = line.strip_prefix("cohort_elections_total{cause=\"") else { continue };
            let Some((cause, value)) = rest.split_once("\"} ") else { continue };
            counts.insert((id, cause.to_string()), value.trim().parse().unwrap_or(0.0));
        }
    }
    counts
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Creates the repositories named `names` from `IN_FLIGHT` clients; returns the wall time and
/// when each creation completed, in the order of `names`.
fn create_all(rt: &tokio::runtime::Runtime, cluster: &TestCluster, names: Range<u64>) -> (Duration, Vec<Instant>) {
    let (first, end) = (names.start, names.end);
    let next = Arc::new(AtomicU64::new(first));
    let started = Instant::now();
    let mut completed = vec![started; (end - first) as usize];
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (client, next) = (client(cluster, rand::random()), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        break done;
                    }
                    client.create_repository(&repo(&name(n)), None).await.expect("create");
                    done.push((n, Instant::now()));
                }
            }));
        }
        for task in tasks {
            for (n, at) in task.await.unwrap() {
                completed[(n - first) as usize] = at;
            }
        }
    });
    (started.elapsed(), completed)
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

/// Whether node `id` has all of its `hosted` replicas quiesced or unloaded.
fn at_rest(cluster: &TestCluster, id: u64, hosted: u64) -> bool {
    (metric(cluster, id, QUIESCED) + metric(cluster, id, UNLOADED)) as u64 >= hosted
}

/// Waits until every node has its `hosted` replicas quiesced or unloaded; returns how long
/// that took.
fn wait_all_at_rest(cluster: &TestCluster, hosted: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    wait_for("every replica to quiesce", limit, || (1..=NODES).all(|id| at_rest(cluster, id, hosted)));
    started.elapsed()
}

/// Waits until every node has unloaded every replica it does not lead (but the directory's,
/// which never unloads); returns the unloaded replicas per node.
fn wait_followers_unloaded(cluster: &TestCluster, hosted: u64, limit: Duration) -> Vec<u64> {
    wait_for("every follower to unload", limit, || {
        (1..=NODES).all(|id| {
            let loaded_followers =
                ["cohort_partitions_follower", "cohort_partitions_candidate", "cohort_partitions_learner"]
                    .iter()
                    .map(|m| metric(cluster, id, m))
                    .sum::<f64>();
            at_rest(cluster, id, hosted) && loaded_followers <= 1.0
        })
    });
    (1..=NODES).map(|id| metric(cluster, id, UNLOADED) as u64).collect()
}

/// The first write to each of `partitions` (asleep), one at a time.
fn first_writes(
    rt: &tokio::runtime::Runtime,
    writer: &cohort_net::client::Client,
    partitions: &[u64],
) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = partitions
        .iter()
        .map(|&i| {
            let started = Instant::now();
            rt.block_on(write_blob(writer, &repo(&name(i)), "wake", b"wake".to_vec()));
            started.elapsed()
        })
        .collect();
    latencies.sort();
    latencies
}

/// Each partition's leader, from the merged status.
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
    let samples = partitions.min(if full { 500 } else { 100 }) / 2;
    let unload_after_ms = if full { 60_000 } else { 20_000 };
    let configure = |config: &mut cohort::config::RawConfig| {
        config.replicas = Some(3);
        config.raft = cohort::config::RawRaft { unload_after_ms, ..cohort::config::RawRaft::default() };
        // A small page cache, so that RSS per replica is the replicas' and not a cache filling.
        config.store.cache_bytes = 4 << 20;
    };
    let mut cluster = TestCluster::start_configured(NODES, configure);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pids: Vec<u32> = (1..=NODES).map(|id| cluster.children[&id].id()).collect();
    let hosted = partitions + 1; // every partition has a replica on every node, and the directory
    wait_all_at_rest(&cluster, 1, Duration::from_secs(60));
    let rss_before: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let anon_before: Vec<u64> = pids.iter().map(|&p| anon_rss_bytes(p)).collect();
    let heap_before = heaps(&cluster);
    let cache_before = store_caches(&cluster);
    let (empty_cpu, empty_messages) = idle_window(&cluster, &pids);

    // Every replica quiesced, none unloaded yet (if creating took less than unload_after_ms),
    // in two halves: what the second half adds is what one more replica costs, without the
    // node's costs that do not grow with its replicas (the store's page cache filling up to
    // its bound, the blocking threads' heaps, the log's buffers), which the average over all
    // of them includes.
    let half = partitions / 2;
    let (first_elapsed, mut created_at) = create_all(&rt, &cluster, 0..half);
    wait_all_at_rest(&cluster, 1 + half, Duration::from_secs(600));
    // The heap trimmer trims once more a second after a burst; the full measurement below
    // comes after an idle window, so this one must not catch pages it is about to give back.
    std::thread::sleep(Duration::from_secs(3));
    let rss_half: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let heap_half = heaps(&cluster);
    let cache_half = store_caches(&cluster);
    let unloaded_half: Vec<u64> = (1..=NODES).map(|id| metric(&cluster, id, UNLOADED) as u64).collect();
    let (second_elapsed, created_second) = create_all(&rt, &cluster, half..partitions);
    created_at.extend(created_second);
    let create_elapsed = first_elapsed + second_elapsed;
    progress(format!("created {partitions} in {:.1} s", create_elapsed.as_secs_f64()));
    let quiesce_elapsed = wait_all_at_rest(&cluster, hosted, Duration::from_secs(600));
    let (quiesced_cpu, quiesced_messages) = idle_window(&cluster, &pids);
    progress(format!("idle quiesced: {:.2}% of a core, {quiesced_messages:.1} messages/s", 100.0 * quiesced_cpu));
    let rss_quiesced: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let heap_quiesced = heaps(&cluster);
    let cache_quiesced = store_caches(&cluster);
    let unloaded_early: Vec<u64> = (1..=NODES).map(|id| metric(&cluster, id, UNLOADED) as u64).collect();
    let still_quiesced = (1..=NODES).all(|id| at_rest(&cluster, id, hosted));

    // Wake latency: the first write to quiesced partitions, then writes to an awake one. The
    // sample is spread over the partitions created recently enough that their followers are
    // still loaded (all of them unless creating took longer than `unload_after`).
    let writer = client(&cluster, 7);
    let loaded_since = Instant::now().checked_sub(Duration::from_millis(unload_after_ms) / 2).unwrap_or(created_at[0]);
    // (If none is that recent, the last created are the likeliest still loaded.)
    let recent = created_at.iter().position(|&at| at >= loaded_since).map_or(partitions - samples, |i| i as u64);
    let recent_step = ((partitions - recent) / samples).max(1);
    let quiesced_sample: Vec<u64> =
        (0..samples).map(|i| recent + i * recent_step).filter(|&i| i < partitions).collect();
    progress(format!(
        "waking {} quiesced partitions among the {} created last",
        quiesced_sample.len(),
        partitions - recent
    ));
    let elections_before = sum_metric(&cluster, "cohort_elections_total");
    let wake = first_writes(&rt, &writer, &quiesced_sample);
    progress(format!("woke {}: p99 {:.2} ms", wake.len(), percentile(&wake, 0.99).as_secs_f64() * 1e3));
    let mut awake: Vec<Duration> = (0..samples)
        .map(|i| {
            let started = Instant::now();
            rt.block_on(write_blob(&writer, &repo(&name(0)), "awake", i.to_le_bytes().to_vec()));
            started.elapsed()
        })
        .collect();
    awake.sort();

    // Every follower unloaded: idle again, then the first writes to unloaded partitions.
    let unloaded = wait_followers_unloaded(&cluster, hosted, Duration::from_secs(600));
    let (unloaded_cpu, unloaded_messages) = idle_window(&cluster, &pids);
    progress(format!(
        "idle, followers unloaded ({unloaded:?}): {:.2}% of a core, {unloaded_messages:.1} messages/s; heap {:?} MiB",
        100.0 * unloaded_cpu,
        heaps(&cluster).iter().map(|h| (h / 1048576.0).round()).collect::<Vec<_>>()
    ));
    // The heap trimmer runs every second; give it one to hand freed pages back.
    std::thread::sleep(Duration::from_secs(2));
    let rss_unloaded: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let heap_unloaded = heaps(&cluster);
    let cache_unloaded = store_caches(&cluster);
    // The first write to partitions untouched since they were created, spread over them all.
    let step = (partitions / samples).max(1);
    let untouched: Vec<u64> =
        (0..samples).map(|i| i * step + step / 2).filter(|i| *i < partitions && !quiesced_sample.contains(i)).collect();
    let load = first_writes(&rt, &writer, &untouched);
    progress(format!("loaded {}: p99 {:.2} ms", load.len(), percentile(&load, 0.99).as_secs_f64() * 1e3));
    let wake_elections = sum_metric(&cluster, "cohort_elections_total") - elections_before;
    let loads = sum_metric(&cluster, "cohort_partition_loads_total");

    // The operator's view at this size: `cohort status` (counts per node; every replica with
    // `--all`) and `cohort repo info` of one repository.
    let timed_cli = |args: &[&str]| {
        let started = Instant::now();
        let out = cluster.cli(args);
        assert!(out.status.success(), "cohort {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (started.elapsed(), out.stdout.len())
    };
    let (status_time, _) = timed_cli(&["status"]);
    let (status_all_time, status_all_bytes) = timed_cli(&["status", "--all"]);
    let (info_time, _) = timed_cli(&["repo", "info", &name(partitions / 2)]);
    progress(format!(
        "cohort status {:.0} ms, status --all {:.0} ms ({status_all_bytes} bytes), repo info {:.0} ms",
        status_time.as_secs_f64() * 1e3,
        status_all_time.as_secs_f64() * 1e3,
        info_time.as_secs_f64() * 1e3
    ));

    // 48 busy partitions among all the others (full run only), while the leaders are spread
    // over the nodes as creating left them: after the failover and restart below, the
    // restarted node leads nothing and the other two lead every partition, which took 10-20%
    // off this figure in three runs (0.77-0.89 of the cluster of 48).
    let among_all = full.then(|| {
        progress(format!("{ACTIVE} busy among {partitions}: starting"));
        active_throughput(&rt, &cluster)
    });
    if let Some(writes) = among_all {
        progress(format!("{ACTIVE} busy among {partitions}: {writes:.0} writes/s"));
    }

    // Failover of quiesced partitions whose followers are unloaded.
    wait_followers_unloaded(&cluster, hosted, Duration::from_secs(600));
    // The node leading the most partitions is killed; by the metrics, not `cohort status`,
    // which lists every partition and does not scale to this many.
    let led: Vec<u64> = (1..=NODES).map(|id| metric(&cluster, id, "cohort_partitions_leader") as u64).collect();
    let victim = (1..=NODES).max_by_key(|&id| led[id as usize - 1]).unwrap();
    let victims = led[victim as usize - 1];
    cluster.kill9(victim);
    let started = Instant::now();
    wait_for("every partition of the killed node to elect a leader elsewhere", Duration::from_secs(300), || {
        let survivors = (1..=NODES).filter(|&id| id != victim);
        survivors.map(|id| metric(&cluster, id, "cohort_partitions_leader") as u64).sum::<u64>() >= hosted
    });
    let failover = started.elapsed();
    progress(format!("failover of {victims} partitions led by node {victim}: {:.2} s", failover.as_secs_f64()));

    // The killed node comes back: its replicas open unloaded or resting, the leaders that
    // excused it catch it up, and nothing should be elected.
    let elections_before = sum_metric(&cluster, "cohort_elections_total");
    let held_before = sum_metric(&cluster, HELD);
    let causes_before = elections_by_cause(&cluster);
    let log_lengths_before: Vec<usize> = (1..=NODES).map(|id| cluster.log(id).len()).collect();
    let started = Instant::now();
    cluster.start_node(victim);
    cluster.wait_serving_within(victim, Duration::from_secs(600));
    let restart_serving = started.elapsed();
    let restart_unloaded = metric(&cluster, victim, UNLOADED) as u64;
    progress(format!(
        "restart: serving after {:.2} s, {restart_unloaded} opened unloaded",
        restart_serving.as_secs_f64()
    ));
    let requiesced = wait_all_at_rest(&cluster, hosted, Duration::from_secs(300)) + restart_serving;
    let restart_elections = sum_metric(&cluster, "cohort_elections_total") - elections_before;
    let restart_held = sum_metric(&cluster, HELD) - held_before;
    progress(format!(
        "restart: every replica at rest after {:.2} s; elections meanwhile: {restart_elections}; node {victim} leads {}",
        requiesced.as_secs_f64(),
        metric(&cluster, victim, "cohort_partitions_leader")
    ));
    let election_causes: Vec<String> = elections_by_cause(&cluster)
        .into_iter()
        .map(|(key, count)| (key.clone(), count - causes_before.get(&key).copied().unwrap_or(0.0)))
        .filter(|(_, count)| *count > 0.0)
        .map(|((node, cause), count)| format!("node {node} {cause}: {count}"))
        .collect();
    // Every node logs each election it starts, with why: kept to explain a failed bound.
    let restart_election_lines: Vec<String> = (1..=NODES)
        .flat_map(|id| {
            let log = cluster.log(id);
            let since_restart = log.get(log_lengths_before[id as usize - 1]..).unwrap_or_default();
            since_restart
                .lines()
                .filter(|line| line.contains("starting an election"))
                .map(|line| format!("node {id}: {line}"))
                .collect::<Vec<_>>()
        })
        .collect();
    // The restarted node leads nothing now: once its followers unload, its memory holds only
    // unloaded replicas, with no history of having loaded them (unlike the nodes above, whose
    // heaps keep the pages that loaded replicas freed).
    let victim_index = victim as usize - 1;
    // (Leaders never unload: should the restart have cost elections that it won, its
    // leaders stay loaded.)
    wait_for("the restarted node to unload every replica it does not lead", Duration::from_secs(600), || {
        (metric(&cluster, victim, UNLOADED) + metric(&cluster, victim, "cohort_partitions_leader")) as u64 + 1 >= hosted
    });
    std::thread::sleep(Duration::from_secs(2));
    let victim_pid = cluster.children[&victim].id();
    let restarted_rss = rss_bytes(victim_pid);
    let restarted_anon = anon_rss_bytes(victim_pid);
    let restarted_heap = metric(&cluster, victim, HEAP);
    let restarted_cache = metric(&cluster, victim, STORE_CACHE);
    let restart_dropped: Vec<f64> =
        (1..=NODES).map(|id| metric(&cluster, id, "cohort_router_messages_dropped_total")).collect();

    // ... then in a cluster of only 48, whose leaders creating spreads over the three nodes
    // the same way.
    let throughput = among_all.map(|among_all| {
        drop(cluster);
        let alone = TestCluster::start_configured(NODES, configure);
        let _ = create_all(&rt, &alone, 0..ACTIVE);
        progress(format!("{ACTIVE} busy in a cluster of {ACTIVE}: starting"));
        (among_all, active_throughput(&rt, &alone))
    });

    println!(
        "cluster: {NODES} nodes, 3 replicas per partition, {partitions} partitions (+ the directory), 100 ms ticks, quiesce after 2 s, unload followers after {} s",
        unload_after_ms / 1000
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
    for (state, cpu, messages) in [
        ("quiesced", quiesced_cpu, quiesced_messages),
        ("quiesced, followers unloaded", unloaded_cpu, unloaded_messages),
    ] {
        println!(
            "idle, {partitions} partitions {state}: {:.2}% of one core, {:.1} peer messages/s ({:.4} per partition), over {} s",
            100.0 * cpu,
            messages,
            messages / partitions as f64,
            IDLE_WINDOW.as_secs()
        );
    }
    println!("all still at rest after the first idle window: {still_quiesced}");
    // What one unloaded replica costs comes from the restarted node (every replica but the
    // directory's unloaded, and none ever loaded but those its restart loaded): the live
    // nodes' second measurement mixes loaded leaders, which cost more than followers, with
    // unloaded followers, and cannot tell them apart.
    let restarted_replicas = (hosted - 1) as f64;
    let unloaded_rss = restarted_rss.saturating_sub(rss_before[victim_index]) as f64 / restarted_replicas;
    let unloaded_heap = (restarted_heap - heap_before[victim_index]) / restarted_replicas;
    let unloaded_heap_nc = (restarted_heap - restarted_cache - heap_before[victim_index] + cache_before[victim_index])
        / restarted_replicas;
    for i in 0..NODES as usize {
        // Per quiesced replica: the growth with every replica quiesced, less the replicas that
        // unloaded early (creating outlasted unload_after_ms), at the restarted node's cost each.
        let early = unloaded_early[i] as f64;
        let per_loaded = |growth: f64, per_unloaded: f64| (growth - early * per_unloaded) / (hosted as f64 - early);
        let rss_loaded = per_loaded(rss_quiesced[i] as f64 - rss_before[i] as f64, unloaded_rss);
        let heap_loaded = per_loaded(heap_quiesced[i] - heap_before[i], unloaded_heap);
        let heap_loaded_nc =
            per_loaded(heap_quiesced[i] - cache_quiesced[i] - heap_before[i] + cache_before[i], unloaded_heap_nc);
        println!(
            "node {}: {hosted} replicas, {} unloaded during the first window; RSS {:.1} -> {:.1} -> {:.1} MiB, heap in use {:.1} -> {:.1} -> {:.1} MiB \
             (before creating -> all quiesced -> {} followers unloaded)",
            i + 1,
            unloaded_early[i],
            rss_before[i] as f64 / 1048576.0,
            rss_quiesced[i] as f64 / 1048576.0,
            rss_unloaded[i] as f64 / 1048576.0,
            heap_before[i] / 1048576.0,
            heap_quiesced[i] / 1048576.0,
            heap_unloaded[i] / 1048576.0,
            unloaded[i],
        );
        // The second half's replicas, less those of either half that unloaded meanwhile (at
        // the restarted node's cost each); only if most of them are still loaded.
        // (A gauge: a replica that reloads takes one off.)
        let unloaded_since_half = unloaded_early[i].saturating_sub(unloaded_half[i]);
        let loaded_since_half = (partitions - half).saturating_sub(unloaded_since_half);
        let marginal = (loaded_since_half * 2 >= partitions - half).then(|| {
            let per = |growth: f64, per_unloaded: f64| {
                (growth - unloaded_since_half as f64 * per_unloaded) / loaded_since_half as f64
            };
            let rss = per(rss_quiesced[i] as f64 - rss_half[i] as f64, unloaded_rss);
            let heap = per(heap_quiesced[i] - heap_half[i], unloaded_heap);
            let heap_nc = per(heap_quiesced[i] - cache_quiesced[i] - heap_half[i] + cache_half[i], unloaded_heap_nc);
            (rss, heap, heap_nc)
        });
        if let Some((rss, heap, heap_nc)) = marginal {
            println!(
                "node {}: each quiesced replica of the second half added {:.1} KiB RSS, {:.1} KiB heap, {:.1} KiB heap less the store's page cache (goal: at most 8)",
                i + 1,
                rss / 1024.0,
                heap / 1024.0,
                heap_nc / 1024.0
            );
        }
        let freed_per_unload =
            (heap_quiesced[i] - heap_unloaded[i]) / unloaded[i].saturating_sub(unloaded_early[i]).max(1) as f64;
        println!(
            "node {}: per quiesced replica, averaged over all with the node's fixed costs, {:.1} KiB RSS, {:.1} KiB heap, {:.1} KiB heap less the store's page cache; heap freed per unload {:.1} KiB; store page cache {:.1} MiB (per unloaded replica: see the restarted node below)",
            i + 1,
            rss_loaded / 1024.0,
            heap_loaded / 1024.0,
            heap_loaded_nc / 1024.0,
            freed_per_unload / 1024.0,
            cache_unloaded[i] / 1048576.0
        );
    }
    let ms = |sorted: &[Duration], p: f64| percentile(sorted, p).as_secs_f64() * 1e3;
    println!(
        "wake: first write to {} quiesced partitions p50 {:.2} ms p99 {:.2} ms; to {} whose followers are unloaded p50 {:.2} ms p99 {:.2} ms ({loads} loads); writes to an awake partition p50 {:.2} ms p99 {:.2} ms: p99 ratios {:.2} and {:.2} (goal: at most 2); elections while waking: {wake_elections} (goal: 0)",
        wake.len(),
        ms(&wake, 0.5),
        ms(&wake, 0.99),
        load.len(),
        ms(&load, 0.5),
        ms(&load, 0.99),
        ms(&awake, 0.5),
        ms(&awake, 0.99),
        ms(&wake, 0.99) / ms(&awake, 0.99),
        ms(&load, 0.99) / ms(&awake, 0.99)
    );
    println!(
        "operator: `cohort status` {:.0} ms, `cohort status --all` {:.0} ms ({status_all_bytes} bytes of output), `cohort repo info` {:.0} ms (CLI processes, each end to end)",
        status_time.as_secs_f64() * 1e3,
        status_all_time.as_secs_f64() * 1e3,
        info_time.as_secs_f64() * 1e3
    );
    println!(
        "failover: node {victim} killed leading {victims} quiesced partitions (followers unloaded); every one had a new leader {:.2} s later",
        failover.as_secs_f64()
    );
    println!(
        "restart: node {victim} back with {hosted} replicas ({restart_unloaded} opened unloaded): serving after {:.2} s, every replica at rest again after {:.2} s; elections: {restart_elections} {election_causes:?} (goal: 0 but the directory replica, which stays awake and may pre-vote once); election timeouts held for a live leader: {restart_held}",
        restart_serving.as_secs_f64(),
        requiesced.as_secs_f64()
    );
    if !restart_election_lines.is_empty() {
        // What woke the replicas that then campaigned (each line's `woken=Some(("cause",
        // ticks since))`), to tell a slow catch-up from a wake that should not elect.
        let mut woken: BTreeMap<String, u64> = BTreeMap::new();
        for line in &restart_election_lines {
            let cause = line.split("woken=Some((\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("none");
            *woken.entry(cause.to_owned()).or_default() += 1;
        }
        println!("restart: the elections' replicas were woken by {woken:?}; the first few:");
        for line in restart_election_lines.iter().take(5) {
            println!("  {line}");
        }
        println!(
            "restart: Raft messages dropped at full mailboxes or for unknown partitions, per node, since start: {restart_dropped:?}"
        );
    }
    println!(
        "restarted node {victim}, every replica but the directory's unloaded: RSS {:.1} MiB, heap in use {:.1} MiB (store page cache {:.1} MiB): per unloaded replica over the node before creating {:.0} B RSS ({:.0} B of it anonymous, the rest pages of the binary), {:.0} B heap, {:.0} B heap less the store's page cache (goal: at most 512; includes its share of the log's index)",
        restarted_rss as f64 / 1048576.0,
        restarted_heap / 1048576.0,
        restarted_cache / 1048576.0,
        restarted_rss.saturating_sub(rss_before[victim_index]) as f64 / (hosted - 1) as f64,
        restarted_anon.saturating_sub(anon_before[victim_index]) as f64 / (hosted - 1) as f64,
        (restarted_heap - heap_before[victim_index]) / (hosted - 1) as f64,
        (restarted_heap - restarted_cache - heap_before[victim_index] + cache_before[victim_index]) / (hosted - 1) as f64
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
        for messages in [quiesced_messages, unloaded_messages] {
            assert!(messages < 100.0, "idle peer messages {messages:.1}/s: only node liveness should talk");
            assert!(messages > 0.0, "node liveness heartbeats are counted as peer messages");
        }
        assert!(unloaded.iter().all(|&n| n > 0), "every node unloaded followers: {unloaded:?}");
        assert!(loads > 0.0, "the first writes loaded unloaded replicas");
        assert_eq!(wake_elections, 0.0, "waking quiesced and unloaded partitions started elections");
        // The restarted node's directory replica stays awake (it is never put to rest) and may
        // pre-vote once before its leader's heartbeat reaches it; no other replica should. A
        // debug build on a loaded 2-core CI machine can stall a node past an election timeout
        // (seen once: 11 replicas woken by their catching up pre-voted), so the smoke run
        // allows a few; without the held entries (`held_for_down_members`) every partition
        // the node led needs a snapshot, which a unit test covers. Elections beyond the
        // directory's are printed with why each started.
        if restart_elections > 1.0 {
            for line in &restart_election_lines {
                println!("{line}");
            }
        }
        let tolerated = 1.0 + (hosted / 50) as f64;
        assert!(restart_elections <= tolerated, "a node's restart started elections: {election_causes:?}");
    }
}
