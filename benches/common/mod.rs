//! What the cluster benchmarks share: clients that wait long enough, blob writes, waiting, and
//! reading nodes' metrics and replication progress.

use crate::cluster::{self, TestCluster};
use cohort_core::state_machine::{Expected, NewObject, ObjectKind, RefName, RefValue, RepoId};
use cohort_net::client::{Client, ClientConfig, RefChange};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub fn client(cluster: &TestCluster, id: u64) -> Client {
    let mut config = ClientConfig::new(cluster.endpoints(), id);
    // 1 MiB writes on a loaded 2-core machine can be slow; a retry reuses the write id.
    config.deadline = Duration::from_secs(120);
    Client::new(config).unwrap()
}

/// One write: a blob of `data` and the reference `refs/heads/<name>` to it.
pub async fn write_blob(client: &Client, repo: &RepoId, name: &str, data: Vec<u8>) {
    let object = NewObject::new(ObjectKind::Blob, data);
    let change = RefChange {
        name: RefName::new(format!("refs/heads/{name}")).unwrap(),
        expected: Expected::Any,
        new: Some(RefValue::Direct(object.oid)),
    };
    client.write(repo, vec![object], vec![change]).await.expect("write");
}

pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A metric's value on node `id`, asserting that it is exported: `TestCluster::metric` reads
/// a missing (say, renamed) metric as 0, which would make the benchmark silently wrong.
pub fn metric(cluster: &TestCluster, id: u64, name: &str) -> f64 {
    let text = cluster::http_get(&cluster.node(id).http_address, "/metrics");
    assert!(text.lines().any(|line| line.split([' ', '{']).next() == Some(name)), "node {id} exports no metric {name}");
    cluster.metric(id, name)
}

/// A node's snapshot transfer counters (names as prometheus-client exports them: counters get
/// `_total`, and the unit is appended before it).
#[derive(Clone, Copy, Debug)]
pub struct SnapshotMetrics {
    pub sent: f64,
    pub sent_bytes: f64,
    pub send_seconds_sum: f64,
    pub send_seconds_count: f64,
    pub received: f64,
    pub received_bytes: f64,
}

impl SnapshotMetrics {
    pub fn read(cluster: &TestCluster, id: u64) -> SnapshotMetrics {
        SnapshotMetrics {
            sent: metric(cluster, id, "cohort_snapshots_sent_total"),
            sent_bytes: metric(cluster, id, "cohort_snapshot_sent_bytes_total"),
            send_seconds_sum: metric(cluster, id, "cohort_snapshot_send_seconds_sum"),
            send_seconds_count: metric(cluster, id, "cohort_snapshot_send_seconds_count"),
            received: metric(cluster, id, "cohort_snapshots_received_total"),
            received_bytes: metric(cluster, id, "cohort_snapshot_received_bytes_total"),
        }
    }

    pub fn since(&self, before: &SnapshotMetrics) -> SnapshotMetrics {
        SnapshotMetrics {
            sent: self.sent - before.sent,
            sent_bytes: self.sent_bytes - before.sent_bytes,
            send_seconds_sum: self.send_seconds_sum - before.send_seconds_sum,
            send_seconds_count: self.send_seconds_count - before.send_seconds_count,
            received: self.received - before.received,
            received_bytes: self.received_bytes - before.received_bytes,
        }
    }
}

/// `partition`'s commit index on its voters and the learner's applied index, each from its own
/// node's status (a node reports applied indexes only for its own replicas).
pub async fn progress(
    client: &Client,
    cluster: &TestCluster,
    partition: u64,
    voters: &BTreeSet<u64>,
    learner: u64,
) -> (u64, u64) {
    // The highest commit any voter reports: whichever leads now (the status's named leader can
    // be one that lost an election since) knows the highest.
    let mut commit = 0;
    for &voter in voters {
        let status = client.status_of(&cluster.endpoint(voter)).await.expect("voter status");
        let known = status.partitions.iter().find(|p| p.id == partition).map_or(0, |p| p.commit_index);
        commit = commit.max(known);
    }
    let learner_status = client.status_of(&cluster.endpoint(learner)).await.expect("learner status");
    let applied = learner_status
        .partitions
        .iter()
        .find(|p| p.id == partition)
        .and_then(|p| p.replicas.iter().find(|r| r.node == learner))
        .map_or(0, |r| r.applied_index);
    (commit, applied)
}

/// A field of a process's /proc status in bytes (`VmRSS`, `VmHWM`, ...), 0 if unreadable.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// A process's resident set, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS")
}

/// The anonymous part of a process's resident set (its heaps, stacks and mappings of its own;
/// not the pages of its binary and libraries, which grow with the code it has run), in bytes.
pub fn anon_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "RssAnon")
}

/// A process's peak resident set since it started or since its peak was reset, in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM")
}

/// Writes `mib` MiB to a file in `dir` in 1 MiB appends and fsyncs it; returns MiB/s.
pub fn disk_write_rate(dir: &std::path::Path, mib: u64) -> f64 {
    use rand::RngCore as _;
    use std::io::Write as _;
    let path = dir.join("disk-rate.bin");
    let mut chunk = vec![0u8; 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut chunk);
    let started = Instant::now();
    let mut file = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    let rate = mib as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    rate
}

/// CPU time (user + system) a process has used, in seconds; 0 if unreadable.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // space-separated, utime and stime being the 12th and 13th of them.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// Context switches (voluntary and not) of every live thread of process `pid` so far: each
/// is a thread going to sleep or being put off the CPU, so their count per write says how many
/// hand-offs between threads a write costs. Threads that exited are not counted.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(("voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches", count)) = line.split_once(':') {
                total += count.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// What a closed-loop load did: every write's latency, over `elapsed`.
pub struct Load {
    pub writes: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Load {
    pub fn throughput(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * p) as usize]
    }

    /// Two loads of the same workload taken in turns, as one.
    pub fn merge(&mut self, other: Load) {
        self.writes += other.writes;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }
}

/// One 1 KiB write to `repo`: a blob and the reference `refs/heads/c<key>` to it, in one
/// transaction; `n` makes each blob new.
pub async fn write_kib(client: &Client, repo: &RepoId, key: u64, n: u64) -> Duration {
    let mut data = vec![0u8; 1024];
    data[..16].copy_from_slice(&[key.to_le_bytes(), n.to_le_bytes()].concat());
    let object = NewObject::new(ObjectKind::Blob, data);
    let change = RefChange {
        name: RefName::new(format!("refs/heads/c{key}")).unwrap(),
        expected: Expected::Any,
        new: Some(RefValue::Direct(object.oid)),
    };
    let started = Instant::now();
    client.write(repo, vec![object], vec![change]).await.expect("write");
    started.elapsed()
}

/// `clients` closed loops of 1 KiB writes to `repo`, each with its own client, for `duration`.
pub async fn run_load(cluster: &TestCluster, repo: &RepoId, clients: u64, duration: Duration) -> Load {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for key in 0..clients {
        let client = std::sync::Arc::new(client(cluster, rand::random()));
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                latencies.push(write_kib(&client, &repo, key, n).await);
                n += 1;
            }
            latencies
        }));
    }
    gather(started, tasks).await
}

/// The load of closed loops started at `started`, each task returning its writes' latencies.
pub async fn gather(started: Instant, tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Load {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Load { writes: latencies.len(), elapsed: started.elapsed(), latencies }
}
