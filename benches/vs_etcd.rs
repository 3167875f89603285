//! cohort beside etcd, driven by the same closed-loop load generator in one run. Prints, per
//! system and per concurrency (1 and 64 clients): writes/s, p50/p99/p999 latency, server CPU
//! seconds per 1,000 writes and context switches per write (from /proc, every server process
//! and thread: how many hand-offs between threads a write costs), the generator's own CPU, and
//! cohort/etcd ratios next to the goals; and the latency floor measured in the same run: a
//! loopback TCP round trip and a 4 KiB append + fdatasync, with cohort's 1-client p50 as a
//! multiple of their sum; and, beside the fsync, what one 1 KiB entry costs through cohort's
//! own log (`LogEngine` append + sync on the same disk), which writes over zeros it prepared.
//!
//! Both are 3 nodes on loopback with requests to the leader: etcd 3 members (the `etcd` binary
//! on PATH, Debian's `etcd-server`; nothing is installed at run time), each write a 1 KiB put
//! through the `etcd-client` crate; cohort 3 nodes, each write one `Write` (cohort's own
//! client) storing a 1 KiB blob and pointing a reference at it. Every client has its own connection. The systems take turns
//! (etcd, cohort, etcd, cohort) so that the machine's noise falls on both.
//!
//! `cargo bench --bench vs_etcd` measures 10 s per turn, 2 turns each (`COHORT_BENCH_SECONDS`
//! overrides the turn, `COHORT_BENCH_CLIENTS=1,64` the concurrencies, `COHORT_NODE_BINARY` the
//! build the nodes run, to compare two builds under one generator); without `--bench` (as
//! `cargo test --all-targets` runs it) it makes a short smoke run at 1 and 8 clients.

#[path = "../tests/e2e/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
mod common;
#[path = "common/log_probe.rs"]
#[allow(dead_code)]
mod log_probe;

use cluster::{repo, TestCluster};
use common::{client, context_switches, cpu_seconds, gather, run_load, Load};
use log_probe::LogProbe;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The generator may use this share of the machine before it says it may be the bottleneck.
const GENERATOR_SHARE_MAX: f64 = 0.2;

/// A 3-member etcd on loopback, stopped when dropped.
struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(binary: &Path) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let endpoint = format!("http://127.0.0.1:{client}");
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            let child = Command::new(binary)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}.etcd")))
                .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &cluster.join(",")])
                .args(["--initial-cluster-token", "cohort-bench", "--initial-cluster-state", "new"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            children.push(child);
            endpoints.push(endpoint);
        }
        Etcd { children, endpoints, _dir: dir }
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The leader's client endpoint, once the cluster has one and takes writes.
    async fn leader(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "etcd elected no leader within 60 s");
            for endpoint in &self.endpoints {
                let Ok(mut client) = etcd_client::Client::connect([endpoint], None).await else { continue };
                let Ok(status) = client.status().await else { continue };
                let me = status.header().map_or(0, |h| h.member_id());
                if status.leader() != 0 && status.leader() == me && client.put("probe", value(0, 0), None).await.is_ok()
                {
                    return endpoint.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `etcd` on PATH, or a clear failure saying how to get it.
fn etcd_binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .expect("no `etcd` on PATH: install Debian's etcd-server (apt-get install etcd-server)")
}

fn value(key: u64, n: u64) -> Vec<u8> {
    let mut data = vec![0u8; 1024];
    data[..16].copy_from_slice(&[key.to_le_bytes(), n.to_le_bytes()].concat());
    data
}

/// `clients` closed loops of 1 KiB puts to etcd at `endpoint`, each on its own connection
/// (a client of the `etcd-client` crate each).
async fn etcd_load(endpoint: &str, clients: u64, duration: Duration) -> Load {
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(etcd_client::Client::connect([endpoint], None).await.expect("etcd connects"));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (key, mut kv) in connections.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                let (name, data) = (format!("k{key}"), value(key as u64, n));
                let sent = Instant::now();
                kv.put(name, data, None).await.expect("etcd put");
                latencies.push(sent.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    gather(started, tasks).await
}

/// One measured turn of a system: its load, and the CPU its servers and this generator used.
struct Turn {
    load: Load,
    server_cpu_seconds: f64,
    /// Context switches of every server thread.
    server_switches: u64,
    client_cpu_seconds: f64,
}

impl Turn {
    fn merge(&mut self, other: Turn) {
        self.load.merge(other.load);
        self.server_cpu_seconds += other.server_cpu_seconds;
        self.server_switches += other.server_switches;
        self.client_cpu_seconds += other.client_cpu_seconds;
    }

    fn server_cpu_per_1000(&self) -> f64 {
        self.server_cpu_seconds * 1000.0 / self.load.writes as f64
    }

    fn server_switches_per_write(&self) -> f64 {
        self.server_switches as f64 / self.load.writes as f64
    }

    fn client_share(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.client_cpu_seconds / (self.load.elapsed.as_secs_f64() * cores)
    }
}

async fn measured(pids: &[u32], load: impl std::future::Future<Output = Load>) -> Turn {
    let server = |pids: &[u32]| pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
    let switches = |pids: &[u32]| pids.iter().map(|&pid| context_switches(pid)).sum::<u64>();
    let (server_before, switches_before) = (server(pids), switches(pids));
    let client_before = cpu_seconds(std::process::id());
    let load = load.await;
    Turn {
        load,
        server_cpu_seconds: server(pids) - server_before,
        server_switches: switches(pids).saturating_sub(switches_before),
        client_cpu_seconds: cpu_seconds(std::process::id()) - client_before,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_turn(system: &str, clients: u64, turn: &Turn) {
    let load = &turn.load;
    println!(
        "{system:<6} {clients:>2} clients: {:>7.0} writes/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p999 {:>6.2} ms  \
         server CPU {:.3} s per 1,000 writes  {:.1} context switches per write  generator {:.0}% of the machine",
        load.throughput(),
        ms(load.percentile(0.50)),
        ms(load.percentile(0.99)),
        ms(load.percentile(0.999)),
        turn.server_cpu_per_1000(),
        turn.server_switches_per_write(),
        turn.client_share() * 100.0
    );
    if turn.client_share() > GENERATOR_SHARE_MAX {
        println!(
            "       the generator used more than {:.0}% of the machine: it may have been the bottleneck",
            GENERATOR_SHARE_MAX * 100.0
        );
    }
}

/// Median of `rounds` 64-byte ping-pongs over loopback TCP.
fn loopback_round_trip(rounds: usize) -> Duration {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        let mut buffer = [0u8; 64];
        while stream.read_exact(&mut buffer).is_ok() {
            stream.write_all(&buffer).unwrap();
        }
    });
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buffer = [7u8; 64];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let sent = Instant::now();
        stream.write_all(&buffer).unwrap();
        stream.read_exact(&mut buffer).unwrap();
        times.push(sent.elapsed());
    }
    drop(stream);
    echo.join().unwrap();
    times.sort();
    times[times.len() / 2]
}

/// Median of `rounds` 4 KiB appends, each followed by fdatasync, in a file under `dir`.
fn append_fsync(dir: &Path, rounds: usize) -> Duration {
    use std::os::unix::io::AsRawFd as _;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        file.write_all(&block).unwrap();
        // SAFETY: the descriptor is open for the whole call.
        assert_eq!(unsafe { libc::fdatasync(file.as_raw_fd()) }, 0, "fdatasync");
        times.push(started.elapsed());
    }
    std::fs::remove_file(&path).unwrap();
    times.sort();
    times[times.len() / 2]
}

/// Median of `rounds` appends of one 1 KiB entry to cohort's log (a `LogEngine` in a fresh
/// directory under `dir`), each followed by its sync, as group commit does for a lone write.
fn log_append_sync(dir: &Path, rounds: u64) -> Duration {
    let root = dir.join("log-probe");
    let mut probe = LogProbe::open(&root);
    let mut times: Vec<Duration> = (0..rounds).map(|_| probe.append_sync(1)).collect();
    drop(probe);
    std::fs::remove_dir_all(&root).unwrap();
    times.sort();
    times[times.len() / 2]
}

/// Where a cohort write's time goes, from the nodes' own metrics: sums and counts of the
/// latency histograms, and the applier's batching.
#[derive(Default)]
struct Stages {
    /// Per node: commit (sum, count), apply (sum, count), log fsync (sum, count), apply
    /// transactions, applied entries, store fsync (sum, count).
    nodes: Vec<[f64; 10]>,
}

impl Stages {
    const METRICS: [&'static str; 10] = [
        "cohort_commit_latency_seconds_sum",
        "cohort_commit_latency_seconds_count",
        "cohort_apply_latency_seconds_sum",
        "cohort_apply_latency_seconds_count",
        "cohort_fsync_latency_seconds_sum",
        "cohort_fsync_latency_seconds_count",
        "cohort_apply_transactions_total",
        "cohort_applied_entries_total",
        "cohort_store_fsync_latency_seconds_sum",
        "cohort_store_fsync_latency_seconds_count",
    ];

    fn read(cohort: &TestCluster) -> Stages {
        let nodes = (1..=3).map(|id| Stages::METRICS.map(|name| cohort.metric(id, name))).collect();
        Stages { nodes }
    }

    fn since(&self, before: &Stages) -> Stages {
        let nodes = self.nodes.iter().zip(&before.nodes).map(|(now, then)| std::array::from_fn(|i| now[i] - then[i]));
        Stages { nodes: nodes.collect() }
    }

    /// The leader's stages (the node that answered writes), and every node's log fsyncs.
    fn print(&self) {
        let Some(leader) = self.nodes.iter().max_by(|a, b| a[1].total_cmp(&b[1])) else { return };
        let mean_ms = |sum: f64, count: f64| if count > 0.0 { sum / count * 1e3 } else { 0.0 };
        let writes = leader[1];
        let fsyncs: f64 = self.nodes.iter().map(|n| n[5]).sum();
        println!(
            "cohort stages on the leader: at its partition until answered {:.2} ms mean, of which applying {:.2} ms \
             ({:.1} entries per apply transaction); log fsync {:.2} ms mean; {:.2} log fsyncs per write on all \
             nodes; the store's fsync (no write waits for it) {:.1} ms mean, {:.0} of them",
            mean_ms(leader[0], leader[1]),
            mean_ms(leader[2], leader[3]),
            if leader[6] > 0.0 { leader[7] / leader[6] } else { 0.0 },
            mean_ms(leader[4], leader[5]),
            if writes > 0.0 { fsyncs / writes } else { 0.0 },
            mean_ms(leader[8], leader[9]),
            leader[9],
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let seconds: u64 =
        std::env::var("COHORT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(if full { 10 } else { 1 });
    let turn = Duration::from_secs(seconds);
    let warm_up = Duration::from_millis(if full { 1000 } else { 300 });
    let concurrency: Vec<u64> = match std::env::var("COHORT_BENCH_CLIENTS") {
        Ok(list) => {
            list.split(',').map(|n| n.trim().parse().expect("COHORT_BENCH_CLIENTS: numbers, comma-separated")).collect()
        }
        Err(_) if full => vec![1, 64],
        Err(_) => vec![1, 8],
    };
    let turns = if full { 2 } else { 1 };
    let binary = etcd_binary();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let etcd = Etcd::start(&binary);
    let etcd_leader = rt.block_on(etcd.leader());
    let cohort = TestCluster::start(3);
    let cohort_pids: Vec<u32> = cohort.children.values().map(Child::id).collect();
    let bench = repo("bench.git");
    rt.block_on(client(&cohort, 1).create_repository(&bench, None)).unwrap();
    println!(
        "3 nodes each on loopback, 1 KiB writes to the leader, {turns} turns of {seconds} s per system, taken in turns; {}",
        String::from_utf8_lossy(&Command::new(&binary).arg("--version").output().unwrap().stdout)
            .lines()
            .next()
            .unwrap_or("etcd")
    );

    let mut cohort_one_client_p50 = None;
    for &clients in &concurrency {
        rt.block_on(etcd_load(&etcd_leader, clients, warm_up));
        rt.block_on(run_load(&cohort, &bench, clients, warm_up));
        let (mut etcd_total, mut cohort_total): (Option<Turn>, Option<Turn>) = (None, None);
        let stages_before = Stages::read(&cohort);
        for _ in 0..turns {
            let turn_etcd = rt.block_on(measured(&etcd.pids(), etcd_load(&etcd_leader, clients, turn)));
            let turn_cohort = rt.block_on(measured(&cohort_pids, run_load(&cohort, &bench, clients, turn)));
            for (total, turn) in [(&mut etcd_total, turn_etcd), (&mut cohort_total, turn_cohort)] {
                match total {
                    Some(total) => total.merge(turn),
                    None => *total = Some(turn),
                }
            }
        }
        let (etcd_total, cohort_total) = (etcd_total.unwrap(), cohort_total.unwrap());
        print_turn("etcd", clients, &etcd_total);
        print_turn("cohort", clients, &cohort_total);
        Stages::read(&cohort).since(&stages_before).print();
        let (e, c) = (&etcd_total.load, &cohort_total.load);
        let ratio = |cohort: Duration, etcd: Duration| cohort.as_secs_f64() / etcd.as_secs_f64();
        println!(
            "cohort/etcd at {clients:>2} clients: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, server CPU per write {:.2}x \
             (goals at 64 clients: throughput >= 2, p99 <= 0.5, CPU <= 0.5; at 1 client: p50 <= 0.5)",
            c.throughput() / e.throughput(),
            ratio(c.percentile(0.50), e.percentile(0.50)),
            ratio(c.percentile(0.99), e.percentile(0.99)),
            cohort_total.server_cpu_per_1000() / etcd_total.server_cpu_per_1000()
        );
        if clients == 1 {
            cohort_one_client_p50 = Some(c.percentile(0.50));
        }
    }

    let round_trip = loopback_round_trip(if full { 10_000 } else { 1_000 });
    let fsync = append_fsync(&cohort.data_dir(1), if full { 2_000 } else { 200 });
    let log_sync = log_append_sync(&cohort.data_dir(1), if full { 2_000 } else { 200 });
    let floor = round_trip + fsync;
    let Some(p50) = cohort_one_client_p50 else { return };
    println!(
        "latency floor: loopback round trip p50 {:.1} us, 4 KiB append + fdatasync p50 {:.1} us; \
         cohort's 1-client p50 is {:.1}x their sum (goal: <= 3); cohort's log: a 1 KiB entry \
         appended and synced p50 {:.1} us ({:.2}x the fdatasync)",
        round_trip.as_secs_f64() * 1e6,
        fsync.as_secs_f64() * 1e6,
        p50.as_secs_f64() / floor.as_secs_f64(),
        log_sync.as_secs_f64() * 1e6,
        log_sync.as_secs_f64() / fsync.as_secs_f64()
    );
}
