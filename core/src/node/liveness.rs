//! Node liveness: one heartbeat per pair of nodes, whatever the number of partitions, so that
//! quiesced partitions need no heartbeats of their own (see `partition/quiesce.rs`).
//!
//! Every `interval` a node sends each other node a `Payload::NodeHeartbeat`. Anything that
//! arrives from a node (a heartbeat or any Raft message) counts as hearing from it. A node not
//! heard from for `timeout` is *down*; heard again, it is *up*. Each change is told to every
//! replica on this node, at most `NOTICES_PER_INTERVAL` replicas per interval, so that a dead node that
//! led 10,000 partitions does not start 10,000 elections at once (each replica's randomised
//! election timeout spreads them further).

use crate::env::{Heartbeat, HeartbeatEcho, Instant};
use crate::ids::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often heartbeats go out and how long silence means down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessOptions {
    pub interval: Duration,
    pub timeout: Duration,
}

impl LivenessOptions {
    /// Heartbeats at Raft's heartbeat interval; down after two election timeouts of silence
    /// (a loaded node may drop a heartbeat or two; a wrong "down" only wakes partitions).
    pub fn for_replicas(options: &crate::partition::ReplicaOptions) -> LivenessOptions {
        LivenessOptions {
            interval: options.tick_interval * options.heartbeat_ticks as u32,
            timeout: options.tick_interval * (2 * options.election_ticks) as u32,
        }
    }
}

/// Replicas told of a liveness change per heartbeat interval (5,000 a second at the default
/// 200 ms).
pub const NOTICES_PER_INTERVAL: usize = 1_000;

/// Who this node has heard from, and when. Pure: fed what arrived and the time.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    last_heard: BTreeMap<NodeId, Instant>,
    down: BTreeSet<NodeId>,
    /// Peers never heard from since this node started (counted up until the timeout).
    unheard: BTreeSet<NodeId>,
    /// Each peer's latest heartbeat: its `sent_nanos` and when it arrived, echoed back in
    /// this node's next heartbeat to that peer.
    to_echo: BTreeMap<NodeId, (u64, Instant)>,
}

impl Liveness {
    /// Every node in `peers` counts as heard at `now`: a node silent from the start is down
    /// after one `timeout`.
    pub fn new(peers: &[NodeId], timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            timeout,
            last_heard: peers.iter().map(|&p| (p, now)).collect(),
            down: BTreeSet::new(),
            unheard: peers.iter().copied().collect(),
            to_echo: BTreeMap::new(),
        }
    }

    /// Counts every peer as heard at `now`: the node starts listening. Opening thousands of
    /// replicas can take longer than the timeout, and silence before the node listened is not
    /// a peer's.
    pub fn start_listening(&mut self, now: Instant) {
        for at in self.last_heard.values_mut() {
            *at = now;
        }
    }

    /// Something arrived from `node`. Returns true if that brings it back up.
    pub fn heard(&mut self, node: NodeId, now: Instant) -> bool {
        match self.last_heard.get_mut(&node) {
            Some(at) => *at = (*at).max(now),
            // Not a peer of this node's configuration: nothing to track.
            None => return false,
        }
        self.unheard.remove(&node);
        self.down.remove(&node)
    }

    /// Whether `node` has been heard from since this node started, and lately: it answers.
    /// (A node counts as up until the timeout passes without a word; this does not.)
    pub fn answers(&self, node: NodeId) -> bool {
        self.last_heard.contains_key(&node) && !self.unheard.contains(&node) && !self.down.contains(&node)
    }

    /// The heartbeat to send `peer` now: this node's clock, and an echo of the peer's latest.
    pub fn heartbeat_for(&self, peer: NodeId, now: Instant) -> Heartbeat {
        let echo = self.to_echo.get(&peer).map(|&(sent_nanos, arrived)| HeartbeatEcho {
            sent_nanos,
            held_nanos: now.saturating_duration_since(arrived).as_nanos() as u64,
        });
        Heartbeat { sent_nanos: now.as_nanos(), echo }
    }

    /// A heartbeat arrived from `peer`: it is echoed back next time, and if it echoes one of
    /// this node's, returns the round trip that measures (the time since that one left, less
    /// what the peer held it). A heartbeat that was not a peer's, or an echo of a time still to
    /// come, measures nothing.
    pub fn heartbeat_from(&mut self, peer: NodeId, heartbeat: Heartbeat, now: Instant) -> Option<Duration> {
        if !self.last_heard.contains_key(&peer) {
            return None;
        }
        self.to_echo.insert(peer, (heartbeat.sent_nanos, now));
        let echo = heartbeat.echo?;
        let elapsed = now.as_nanos().checked_sub(echo.sent_nanos)?;
        Some(Duration::from_nanos(elapsed.saturating_sub(echo.held_nanos)))
    }

    /// Marks down every node silent for longer than the timeout. Returns whether any was.
    pub fn check(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for (&node, &at) in &self.last_heard {
            if now.saturating_duration_since(at) > self.timeout && self.down.insert(node) {
                changed = true;
            }
        }
        changed
    }

    pub fn down(&self) -> &BTreeSet<NodeId> {
        &self.down
    }

    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.last_heard.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn a_silent_node_is_down_after_the_timeout_and_up_when_heard() {
        let mut liveness = Liveness::new(&[NodeId(2), NodeId(3)], Duration::from_millis(1000), at(0));
        assert!(!liveness.check(at(1000)), "silent for exactly the timeout is not down yet");
        assert!(!liveness.answers(NodeId(3)), "not down yet, but never heard: it does not answer");
        liveness.heard(NodeId(2), at(900));
        assert!(liveness.answers(NodeId(2)));
        assert!(liveness.check(at(1001)));
        assert_eq!(liveness.down().iter().copied().collect::<Vec<_>>(), vec![NodeId(3)]);
        assert!(!liveness.check(at(1500)), "no new change");
        assert!(liveness.heard(NodeId(3), at(1600)), "heard again: up");
        assert!(liveness.down().is_empty());
        assert!(liveness.answers(NodeId(3)));
        assert!(!liveness.heard(NodeId(9), at(1600)), "a node outside the cluster is not tracked");
        assert!(!liveness.answers(NodeId(9)));
    }

    #[test]
    fn heartbeats_echo_each_other_and_measure_the_round_trip_without_shared_clocks() {
        // Node 1 at its clock's 0; node 2's clock is 5 s ahead; each way takes 3 ms.
        let mut one = Liveness::new(&[NodeId(2)], Duration::from_secs(1), at(0));
        let mut two = Liveness::new(&[NodeId(1)], Duration::from_secs(1), at(5_000));
        let first = one.heartbeat_for(NodeId(2), at(0));
        assert_eq!(first.echo, None, "nothing heard yet, nothing echoed");
        assert_eq!(two.heartbeat_from(NodeId(1), first, at(5_003)), None, "no echo, no measure");
        // Node 2 answers 150 ms later with its next heartbeat, which echoes node 1's.
        let answer = two.heartbeat_for(NodeId(1), at(5_153));
        assert_eq!(answer.echo.map(|e| e.held_nanos), Some(150_000_000));
        let rtt = one.heartbeat_from(NodeId(2), answer, at(156)).expect("an echo measures");
        assert_eq!(rtt, Duration::from_millis(6), "156 ms since it left, less the 150 ms held");
        // An echo from the future (a peer that lies, or restarted clocks) measures nothing.
        let lying = Heartbeat { sent_nanos: 1, echo: Some(HeartbeatEcho { sent_nanos: u64::MAX, held_nanos: 0 }) };
        assert_eq!(one.heartbeat_from(NodeId(2), lying, at(200)), None);
        assert_eq!(one.heartbeat_from(NodeId(9), answer, at(200)), None, "not a peer");
    }

    #[test]
    fn silence_before_the_node_listens_does_not_count() {
        let mut liveness = Liveness::new(&[NodeId(2)], Duration::from_millis(1000), at(0));
        liveness.start_listening(at(2500));
        assert!(!liveness.check(at(3000)), "silent for 500 ms since it listened");
        assert!(liveness.check(at(3501)));
    }
}
