//! N simulated nodes on madsim, each running the production node assembly
//! (`cohort_net::node::start`) over its own crash-faithful `SimDisk`, the real TCP transport on
//! madsim's network (behind the fault layer), a seeded clock rate and the safety observer.

use crate::faults::{FaultyTransport, SharedFaults};
use crate::observer::SafetyObserver;
use crate::sim_env::{SimSpawn, SkewedClock};
use crate::trace::{now_ns, Trace};
use cohort_core::env::Env;
use cohort_core::ids::NodeId;
use cohort_core::metrics::NodeMetrics;
use cohort_core::node::NodeService;
use cohort_core::partition::ReplicaOptions;
use cohort_core::store::Format;
use cohort_net::node::NodeSpec;
use cohort_storage::SimDisk;
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PEER_PORT: u16 = 7000;
pub const TICK_MS: u64 = 100;
pub const ELECTION_TICKS: usize = 10;

/// What the harness keeps of one node across its crashes and restarts.
struct SimNode {
    handle: NodeHandle,
    disk: Arc<SimDisk>,
    /// The running node's service, while it runs (a crash empties it).
    service: Arc<Mutex<Option<Arc<NodeService>>>>,
    up: bool,
    paused: bool,
    restarts: Arc<Mutex<u64>>,
    /// Its next start makes a new data directory join the cluster (`NodeSpec::join`).
    join: Arc<Mutex<bool>>,
}

/// The nodes' request services as clients see them.
#[derive(Clone)]
pub struct Services {
    slots: BTreeMap<NodeId, Arc<Mutex<Option<Arc<NodeService>>>>>,
}

impl Services {
    pub fn get(&self, id: NodeId) -> Option<Arc<NodeService>> {
        self.slots.get(&id)?.lock().expect("not poisoned").clone()
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.keys().copied().collect()
    }
}

pub struct SimCluster {
    nodes: BTreeMap<NodeId, SimNode>,
    pub faults: SharedFaults,
    pub observer: Arc<SafetyObserver>,
    pub trace: Trace,
}

fn address(node: NodeId) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, node.0 as u8)), PEER_PORT)
}

/// Entries a leader keeps for a follower just behind: low, so that compaction and snapshot
/// transfers happen in every run, at a rate the seed picks.
fn log_retain_entries(seed: u64) -> u64 {
    [8, 25, 80][(seed % 3) as usize]
}

/// The store format new partitions start in: the latest, as this build creates them, or (one
/// seed in four) an earlier build's, whose first leader proposes the switch to the latest
/// under whatever faults the seed brings.
fn bootstrap_format(seed: u64) -> Format {
    match seed / 5 % 8 {
        0 => Format::Original,
        1 => Format::PlacedByIndex,
        _ => Format::LATEST,
    }
}

/// How long a leader idles before its partition quiesces, in ticks: from eagerly (so that
/// quiescing and waking race with every fault) to never, as the seed picks; never "never" when
/// the scenario checks quiescence.
fn quiesce_after_ticks(seed: u64, must_quiesce: bool) -> u64 {
    let choices: &[u64] = if must_quiesce { &[3, 12, 30] } else { &[3, 3, 12, 30, 0] };
    choices[(seed / 27 % choices.len() as u64) as usize]
}

/// How long a quiesced follower stays loaded, in ticks: from at once (so that unloading and
/// loading race with every fault) to never, as the seed picks.
fn unload_after_ticks(seed: u64) -> u64 {
    [1, 10, 40, 0][(seed / 81 % 4) as usize]
}

/// Partition workers per node: one steps every replica in turn, more interleave them.
fn workers(seed: u64) -> usize {
    1 + (seed / 324 % 3) as usize
}

/// When the applier makes the store durable: often, at a pace the seed picks, so that crashes
/// find both lazy commits to lose and durable ones to keep, and logs are compacted.
fn applier_options(seed: u64) -> cohort_core::node::ApplierOptions {
    cohort_core::node::ApplierOptions {
        durable_interval: Duration::from_millis([50, 300, 1500][(seed / 3 % 3) as usize]),
        durable_bytes: [16 * 1024, 256 * 1024, 4 * 1024 * 1024][(seed / 9 % 3) as usize],
        ..cohort_core::node::ApplierOptions::default()
    }
}

impl SimCluster {
    /// Starts `count` nodes; `clock_rates_ppm` gives each node's clock rate (default: exact).
    pub fn start(
        count: u64,
        seed: u64,
        faults: SharedFaults,
        trace: Trace,
        clock_rates_ppm: &BTreeMap<NodeId, i64>,
        disk_latency_max: Duration,
        must_quiesce: bool,
        replicas: Option<usize>,
    ) -> SimCluster {
        let observer = Arc::new(SafetyObserver::new(trace.clone()));
        let handle = Handle::current();
        let ids: Vec<NodeId> = (1..=count).map(NodeId).collect();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let disk = Arc::new(SimDisk::new(seed ^ (id.0 << 48)));
            let service: Arc<Mutex<Option<Arc<NodeService>>>> = Arc::default();
            let clock_rate_ppm = Arc::new(Mutex::new(clock_rates_ppm.get(&id).copied().unwrap_or(0)));
            let restarts = Arc::new(Mutex::new(0u64));
            let spec = NodeSpec {
                node: id,
                cluster_id: "sim".into(),
                secret: b"simulation-secret".to_vec(),
                listen_peer: address(id),
                peers: ids.iter().filter(|&&p| p != id).map(|&p| (p, address(p))).collect(),
                replica: ReplicaOptions {
                    tick_interval: Duration::from_millis(TICK_MS),
                    election_ticks: ELECTION_TICKS,
                    heartbeat_ticks: 2,
                    log_retain_entries: log_retain_entries(seed),
                    quiesce_after_ticks: quiesce_after_ticks(seed, must_quiesce),
                    unload_after_ticks: unload_after_ticks(seed),
                    snapshot_size_bytes_max: cohort_core::limits::SNAPSHOT_SIZE_BYTES_MAX_DEFAULT,
                    raft_enabled_by_default: true,
                    bootstrap_format: bootstrap_format(seed),
                },
                frame_size_bytes_max: cohort_net::limits::FRAME_SIZE_BYTES_MAX,
                outbox_messages_max: cohort_net::limits::OUTBOX_MESSAGES_MAX,
                replicas: replicas.unwrap_or(count.min(3) as usize),
                workers: workers(seed),
                store: cohort_core::store::StoreOptions { cache_size_bytes: 4 * 1024 * 1024 },
                applier: applier_options(seed),
                // TLS adds nothing the simulated network can fault; it is tested on real sockets.
                peer_tls: None,
                // Set for a start after `wipe_and_join`.
                join: false,
            };
            let join = Arc::new(Mutex::new(false));
            let init = {
                let (disk, service, faults, observer) =
                    (disk.clone(), service.clone(), faults.clone(), observer.clone());
                let (clock_rate_ppm, restarts, trace) = (clock_rate_ppm.clone(), restarts.clone(), trace.clone());
                let join = join.clone();
                move || {
                    let (disk, service, faults, observer) =
                        (disk.clone(), service.clone(), faults.clone(), observer.clone());
                    let (mut spec, trace) = (spec.clone(), trace.clone());
                    spec.join = *join.lock().expect("not poisoned");
                    let rate = *clock_rate_ppm.lock().expect("not poisoned");
                    let incarnation = *restarts.lock().expect("not poisoned");
                    async move {
                        let node_seed = seed ^ (id.0 << 40) ^ (incarnation << 20);
                        let env = Env {
                            clock: Arc::new(SkewedClock::new(rate)),
                            disk,
                            spawn: Arc::new(SimSpawn::new(node_seed, disk_latency_max)),
                            seed: node_seed,
                            metrics: Arc::new(NodeMetrics::default()),
                            observer: Some(observer),
                        };
                        let wrap = |t: Arc<cohort_net::TcpTransport>| FaultyTransport::wrap(id, t, faults, node_seed);
                        match cohort_net::node::start(env, spec, wrap).await {
                            Ok(running) => {
                                trace.event(now_ns(), format!("node {id} started (incarnation {incarnation})"));
                                *service.lock().expect("not poisoned") = Some(running.service.clone());
                                // The node runs until madsim kills it.
                                std::future::pending::<()>().await;
                                drop(running);
                            }
                            Err(error) => {
                                trace.event(now_ns(), format!("node {id} failed to start: {error}"));
                                panic!("node {id} failed to start: {error}");
                            }
                        }
                    }
                }
            };
            let node = handle.create_node().name(format!("node-{id}")).ip(address(id).ip()).init(init).build();
            nodes.insert(id, SimNode { handle: node, disk, service, up: true, paused: false, restarts, join });
        }
        SimCluster { nodes, faults, observer, trace }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].up
    }

    /// Where clients find each node's service: empty while the node is down.
    pub fn services(&self) -> Services {
        Services { slots: self.nodes.iter().map(|(&id, n)| (id, n.service.clone())).collect() }
    }

    pub fn disk(&self, id: NodeId) -> &Arc<SimDisk> {
        &self.nodes[&id].disk
    }

    /// Power loss: the node stops at once and its disk keeps only what was synced (or torn).
    /// The disk goes first: the node's code, dropped after, finds every file handle dead, so
    /// nothing it does on its way out (redb's close commits) reaches the disk.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.up {
            return;
        }
        node.disk.crash();
        Handle::current().kill(node.handle.id());
        node.service.lock().expect("not poisoned").take();
        node.up = false;
        node.paused = false;
        self.trace.event(now_ns(), format!("fault: crash node {id}"));
    }

    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.up {
            return;
        }
        *node.restarts.lock().expect("not poisoned") += 1;
        node.disk.set_fail_syncs(false);
        Handle::current().restart(node.handle.id());
        node.up = true;
        self.trace.event(now_ns(), format!("fault: restart node {id}"));
    }

    /// The node loses its disk (crashed, everything on it gone) and an operator starts it on
    /// an empty data directory made to join the cluster (`cohort node --join`): its peers
    /// refuse it until it is replaced (`scenario::replace_node`).
    pub fn wipe_and_join(&mut self, id: NodeId) {
        self.crash(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.disk.wipe();
        *node.join.lock().expect("not poisoned") = true;
        self.trace.event(now_ns(), format!("fault: node {id} lost its data directory"));
        self.restart(id);
    }

    pub fn pause(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.up && !node.paused {
            Handle::current().pause(node.handle.id());
            node.paused = true;
            self.trace.event(now_ns(), format!("fault: pause node {id}"));
        }
    }

    pub fn resume(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.paused {
            Handle::current().resume(node.handle.id());
            node.paused = false;
            self.trace.event(now_ns(), format!("fault: resume node {id}"));
        }
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes[&id].paused
    }

    pub fn fail_syncs(&mut self, id: NodeId, fail: bool) {
        self.nodes[&id].disk.set_fail_syncs(fail);
        self.trace.event(now_ns(), format!("fault: fsync {} on node {id}", if fail { "fails" } else { "works" }));
    }
}
