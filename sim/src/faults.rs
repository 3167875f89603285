//! Network faults between nodes, injected where core hands messages to the transport: links
//! cut one way or both, message loss, delay (which also reorders) and duplication. Crashes,
//! pauses, clock rates and disk faults are driven by the scenario through madsim and `SimDisk`.

use cohort_core::env::{Envelope, Transport};
use cohort_core::ids::NodeId;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The network's current misbehaviour, shared by every node's transport.
#[derive(Debug, Default)]
pub struct NetworkFaults {
    /// Directed links that drop everything: (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Upper bound of the extra delay of a message; zero: none.
    pub delay_max: Duration,
    /// When set, every vote granted is noted in `votes_granted` (for faults that strike a node
    /// right after it voted).
    pub watch_votes: bool,
    pub votes_granted: Vec<NodeId>,
}

impl NetworkFaults {
    /// No fault at all: messages pass untouched.
    pub fn is_calm(&self) -> bool {
        self.cut.is_empty()
            && self.loss == 0.0
            && self.duplicate == 0.0
            && self.delay_max.is_zero()
            && !self.watch_votes
    }

    /// Cuts every link between the two sides, both ways.
    pub fn split(&mut self, side_a: &[NodeId], side_b: &[NodeId]) {
        for &a in side_a {
            for &b in side_b {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }
}

pub type SharedFaults = Arc<Mutex<NetworkFaults>>;

/// Wraps a node's real transport and applies the shared faults to what it sends.
pub struct FaultyTransport {
    node: NodeId,
    inner: Arc<dyn Transport>,
    faults: SharedFaults,
    rng: Mutex<StdRng>,
}

impl FaultyTransport {
    pub fn wrap(node: NodeId, inner: Arc<dyn Transport>, faults: SharedFaults, seed: u64) -> Arc<dyn Transport> {
        Arc::new(FaultyTransport { node, inner, faults, rng: Mutex::new(StdRng::seed_from_u64(seed)) })
    }
}

impl Transport for FaultyTransport {
    fn send(&self, to: NodeId, batch: Vec<Envelope>) {
        let mut faults = self.faults.lock().expect("not poisoned");
        if faults.watch_votes {
            let granted = batch
                .iter()
                .filter_map(|e| e.raft())
                .any(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgRequestVoteResponse && !m.reject);
            if granted {
                faults.votes_granted.push(self.node);
            }
        }
        if faults.is_calm() {
            drop(faults);
            self.inner.send(to, batch);
            return;
        }
        if faults.cut.contains(&(self.node, to)) {
            return;
        }
        let mut rng = self.rng.lock().expect("not poisoned");
        let mut now = Vec::with_capacity(batch.len());
        for envelope in batch {
            if faults.loss > 0.0 && rng.gen_bool(faults.loss) {
                continue;
            }
            let copies = if faults.duplicate > 0.0 && rng.gen_bool(faults.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                if faults.delay_max.is_zero() {
                    now.push(envelope.clone());
                } else {
                    let delay = Duration::from_micros(rng.gen_range(0..=faults.delay_max.as_micros() as u64));
                    let inner = self.inner.clone();
                    let late = envelope.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        inner.send(to, vec![late]);
                    });
                }
            }
        }
        drop(rng);
        drop(faults);
        if !now.is_empty() {
            self.inner.send(to, now);
        }
    }
}
