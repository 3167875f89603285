//! Quiescing: the replicas of an idle partition stop ticking and stop talking, and wake
//! without an election when there is work again.
//!
//! The protocol, after CockroachDB's quiescence and TiKV's hibernation (see
//! `../shared/research/multiraft-peers.md` for the bugs both hit):
//!
//! 1. A leader that has been idle for `quiesce_after_ticks` (nothing proposed, nothing pending:
//!    no proposals, reads, forwarded writes, unpersisted readies, entries being applied,
//!    membership change, transfer or snapshot), whose every member on a live node has matched
//!    its last index, which is committed and applied, *asks*: it sends each of them one
//!    heartbeat carrying its term and commit and marked [`QUIESCE_CONTEXT`], and stops
//!    heartbeating. Members on nodes known to be down are excused (they are *lagging*), so one
//!    dead node does not keep every partition awake (TiKV #19070), as long as the live voters
//!    are a quorum.
//! 2. A follower quiesces if the heartbeat comes from the leader it follows, in its term, and
//!    its log ends at the leader's commit with nothing of its own pending. Raft answers every
//!    heartbeat; the answer keeps the mark if the follower quiesced and carries
//!    [`WAKE_CONTEXT`] if not.
//! 3. The leader quiesces once every asked member answered with the mark. A wake answer, any
//!    message other than a heartbeat answer, or an election timeout without every answer wakes
//!    it. Plain heartbeat answers (to heartbeats sent before it asked, arriving late) do not.
//! 4. A quiesced replica has no timer and sends nothing. Anything that needs Raft wakes it: a
//!    request (not a stale read), any Raft message other than the quiesce exchange, a
//!    snapshot. A waking leader resets its election clock, counts every member as recently
//!    active (so check-quorum cannot depose it before they answer) and heartbeats at once, which
//!    wakes its followers. A follower woken by anything but its leader tells the leader (a
//!    heartbeat answer carrying [`WAKE_CONTEXT`]), so the leader heartbeats again before the follower's
//!    election clock runs out: a wake never starts an election while the leader is reachable
//!    (CockroachDB #9372).
//! 5. Node liveness replaces per-partition heartbeats (the shell calls
//!    `handle_down_nodes`): a quiesced follower whose leader's node went down wakes with its
//!    election clock run out, so it grants votes at once and campaigns after its randomised
//!    timeout; a quiesced leader that no longer reaches a quorum of its voters' nodes wakes (and
//!    check-quorum deposes it if that lasts); a lagging node that comes back wakes the groups it
//!    lags in, and only those (CockroachDB #50865).

use super::Partition;
use crate::env::Instant;
use crate::ids::{NodeId, PeerId};
use raft::eraftpb::{Message, MessageType};
use raft::StateRole;
use rand::Rng;
use std::collections::BTreeSet;
use std::time::Duration;

/// Marks the leader's heartbeat that asks followers to quiesce, and a follower's answer that it
/// did. Heartbeat contexts are otherwise ReadIndex contexts, which are eight bytes.
pub(super) const QUIESCE_CONTEXT: &[u8] = b"cohort-quiesce";

/// How many heartbeat intervals a follower whose leader's node is alive waits past its
/// election timeout for the leader to answer (`hold_election_for_live_leader`): a woken
/// leader heartbeats at once, so a few intervals are room for a busy node's queues.
const HOLD_HEARTBEATS: usize = 3;

/// Marks a follower's heartbeat answer that wakes its leader: it refused to quiesce, or woke
/// for a reason of its own. Unmarked answers (to ordinary heartbeats, arriving late) never
/// wake a quiesced leader.
pub(super) const WAKE_CONTEXT: &[u8] = b"cohort-wake";

/// Whether `message` carries the quiesce mark.
pub(super) fn is_quiesce_mark(message: &Message) -> bool {
    message.context[..] == *QUIESCE_CONTEXT
}

/// What a heartbeat answer says about quiescing.
enum Signal {
    /// Nothing: an answer to an ordinary heartbeat.
    None,
    /// The follower quiesced.
    Quiesced,
    /// The follower is awake and wants its leader awake.
    Wake,
}

fn quiesce_signal(answer: &Message) -> Signal {
    if is_quiesce_mark(answer) {
        Signal::Quiesced
    } else if answer.context[..] == *WAKE_CONTEXT {
        Signal::Wake
    } else {
        Signal::None
    }
}

/// Why a quiesced replica woke, for metrics and the simulator's checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WakeCause {
    /// A request that needs Raft arrived.
    Request,
    /// A Raft message other than the quiesce exchange arrived.
    Message,
    /// The node of this follower's leader stopped answering.
    LeaderNodeDown,
    /// This leader no longer reaches a quorum of its voters' nodes.
    QuorumNodesDown,
    /// A node whose replica lagged when the partition quiesced answers again.
    LaggingNodeUp,
    /// A member did not agree to quiesce (or did not answer in time).
    QuiesceRefused,
}

impl WakeCause {
    pub fn name(self) -> &'static str {
        match self {
            WakeCause::Request => "request",
            WakeCause::Message => "message",
            WakeCause::LeaderNodeDown => "leader_node_down",
            WakeCause::QuorumNodesDown => "quorum_nodes_down",
            WakeCause::LaggingNodeUp => "lagging_node_up",
            WakeCause::QuiesceRefused => "quiesce_refused",
        }
    }
}

/// Why a replica started an election (a pre-vote or a vote), for metrics and checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElectionCause {
    /// Its election clock ran out while it was awake: the leader went quiet.
    Timeout,
    /// It woke because its leader's node went down, then campaigned.
    LeaderNodeDown,
    /// It campaigned within two election timeouts of waking for any other reason (and the
    /// hold, if it held its election for its leader meanwhile). With a live, reachable leader
    /// this never happens; the simulator checks it.
    AfterWake,
    /// The leader handed leadership over (`MsgTimeoutNow`).
    Transfer,
    /// Asked to (`Partition::campaign`, a brand-new partition).
    Requested,
}

impl ElectionCause {
    pub fn name(self) -> &'static str {
        match self {
            ElectionCause::Timeout => "timeout",
            ElectionCause::LeaderNodeDown => "leader_node_down",
            ElectionCause::AfterWake => "after_wake",
            ElectionCause::Transfer => "transfer",
            ElectionCause::Requested => "requested",
        }
    }
}

#[derive(Debug)]
pub(super) enum Quiesce {
    Awake {
        /// Consecutive ticks this leader has been idle.
        idle_ticks: u64,
        /// (term, last index, commit) at the last tick: any change is activity.
        seen: (u64, u64, u64),
    },
    /// A leader asked its members to quiesce at tick `asked_tick` and waits for their answers.
    Asking { asked_tick: u64, unanswered: BTreeSet<u64>, lagging: BTreeSet<NodeId> },
    /// No timer, no messages. `lagging`: nodes (a leader's members) that were down when it
    /// quiesced; when one answers again the partition wakes to catch it up.
    Quiesced { lagging: BTreeSet<NodeId> },
}

impl Quiesce {
    pub(super) fn awake() -> Quiesce {
        Quiesce::Awake { idle_ticks: 0, seen: (0, 0, 0) }
    }
}

/// Ticks a leader waits for its members' answers before it gives up quiescing, in election
/// timeouts.
const ASKING_TIMEOUT_ELECTIONS: u64 = 1;

impl Partition {
    /// Whether this replica is quiesced: no timer, nothing sent until an input wakes it.
    pub fn is_quiesced(&self) -> bool {
        matches!(self.quiesce, Quiesce::Quiesced { .. })
    }

    /// Puts a replica that has just opened (a node restarting) to rest: quiesced, with no
    /// timer, until a request or a message needs it. Its partition's leader, if alive, is
    /// quiesced or heartbeating (which wakes it); if the partition has no leader (its leader
    /// was this node), the first request elects one. A restart then costs no election and no
    /// traffic for partitions nobody uses.
    pub fn rest(&mut self) {
        if self.fatal.is_none() && !self.is_leader() {
            self.quiesce = Quiesce::Quiesced { lagging: BTreeSet::new() };
        }
    }

    /// The quiesce state, the tick count and the nodes known down, for debugging.
    pub fn quiesce_debug(&self) -> String {
        format!("{:?} at tick {} down {:?}", self.quiesce, self.ticks, self.down_nodes)
    }

    /// Why this replica last woke, and at which of its ticks.
    pub fn last_wake(&self) -> Option<(WakeCause, u64)> {
        self.last_wake
    }

    /// The nodes the node's liveness monitor (one heartbeat per pair of nodes, instead of one
    /// per partition) now reports down.
    pub fn handle_down_nodes(&mut self, now: Instant, down: &BTreeSet<NodeId>) {
        let mut down = down.clone();
        down.remove(&self.config.node);
        let went_down: Vec<NodeId> = down.difference(&self.down_nodes).copied().collect();
        let came_up: Vec<NodeId> = self.down_nodes.difference(&down).copied().collect();
        self.down_nodes = down;
        if self.fatal.is_some() {
            return;
        }
        let leader = self.raw.raft.leader_id;
        if self.election_held && leader != raft::INVALID_ID && went_down.contains(&PeerId(leader).node()) {
            // Holding its election for a leader whose node has now been declared down: the
            // reason to hold is gone, and the follower campaigns before the hold would end (it
            // holds no second time: `election_held` stays set). Not at its next tick: every
            // follower holding for this leader is released by the same liveness round, and
            // released together they campaign together and split the vote. A release drawn
            // from the seeded source over an election timeout's randomised span, and never
            // later than the hold's end, spreads them (in the unit tests' harness, where all
            // replicas tick at the same instants, about one failover in ten still splits; one
            // in seven if drawn from the rest of the hold instead).
            let release_ticks = self.rng.gen_range(1..=self.config.options.election_ticks);
            let raft = &mut self.raw.raft;
            let timeout = raft.randomized_election_timeout();
            raft.election_elapsed = raft.election_elapsed.max(timeout.saturating_sub(release_ticks));
        }
        for node in came_up {
            let lagged = match &self.quiesce {
                Quiesce::Quiesced { lagging } | Quiesce::Asking { lagging, .. } => lagging.contains(&node),
                Quiesce::Awake { .. } => false,
            };
            if lagged {
                self.wake(now, WakeCause::LaggingNodeUp);
            }
        }
        for node in went_down {
            if matches!(self.quiesce, Quiesce::Awake { .. }) {
                break;
            }
            if self.is_leader() {
                if !self.live_voters_are_quorum() {
                    self.wake(now, WakeCause::QuorumNodesDown);
                }
            } else if self.leader() == Some(node) && !crate::bugs::is_active(crate::bugs::Bug::QuiesceIgnoresLiveness) {
                self.wake(now, WakeCause::LeaderNodeDown);
                // The leader is gone: do not wait out a full election timeout before granting
                // votes or campaigning; the randomised part of the timeout still spreads the
                // elections of many partitions over time.
                self.raw.raft.election_elapsed = self.raw.raft.election_timeout();
            }
        }
        self.after_input(now);
    }

    /// Wakes this replica if it is quiesced (or a leader asking to be); returns whether it was.
    /// See the module documentation for what waking does. A follower woken by a message tells
    /// its leader itself when the message did not come from the leader.
    pub(super) fn wake(&mut self, now: Instant, cause: WakeCause) -> bool {
        if matches!(self.quiesce, Quiesce::Awake { .. }) {
            return false;
        }
        self.quiesce = Quiesce::awake();
        self.last_wake = Some((cause, self.ticks));
        // The next tick at a random phase: replicas woken by one event (a node declared down
        // on every node at once) would otherwise tick in step, and draw equal election
        // timeouts into split votes round after round.
        let tick_nanos = self.config.options.tick_interval.as_nanos() as u64;
        self.next_tick_at = now + Duration::from_nanos(self.rng.gen_range(tick_nanos / 2..=tick_nanos * 3 / 2));
        let raft = &mut self.raw.raft;
        raft.election_elapsed = 0;
        if raft.state == StateRole::Leader {
            // Check-quorum must not depose a leader for the silence it asked for: members on
            // live nodes count as recently heard; those on nodes known down do not.
            let me = raft.id;
            for (id, progress) in raft.mut_prs().iter_mut() {
                if *id != me {
                    progress.recent_active = !self.down_nodes.contains(&PeerId(*id).node());
                }
            }
            raft.ping();
        } else if raft.leader_id == raft::INVALID_ID && cause == WakeCause::Request {
            // Woken from rest by a request, knowing no leader (this node restarted): ask for
            // votes now rather than an election timeout from now. Pre-vote keeps it harmless:
            // if the partition has a leader, its followers and the leader itself refuse, and
            // the leader, woken by the ask, heartbeats.
            self.campaign_asked = true;
        } else if !matches!(cause, WakeCause::Message | WakeCause::LeaderNodeDown) {
            self.tell_leader_awake();
        }
        true
    }

    /// Called before a tick: whether to hold the election that this tick would start. A
    /// follower whose leader's node is alive (by node liveness) waits `HOLD_HEARTBEATS` more
    /// heartbeat intervals before campaigning, and asks its leader to heartbeat meanwhile (a
    /// heartbeat answer marked [`WAKE_CONTEXT`], which wakes a quiesced or asking leader). The
    /// leader's silence is then more likely lost messages than a lost leader: a node catching
    /// up thousands of partitions after a restart drops messages at full mailboxes, and its
    /// woken replicas pre-voted in vain (hundreds of pre-votes in some `idle` benchmark
    /// restarts at 20,000 partitions). The hold is short, and one per contact with the
    /// leader, because "alive" is only "not yet declared down": liveness declares a node down
    /// after two election timeouts of silence, so a follower of a leader that just crashed
    /// holds too, and its failover waits those few heartbeats longer. Pre-vote would keep an
    /// election from disrupting a live leader, but not from costing messages and a round.
    pub(super) fn hold_election_for_live_leader(&mut self) -> bool {
        let raft = &self.raw.raft;
        let leader = raft.leader_id;
        let timeout = raft.randomized_election_timeout();
        let would_campaign =
            raft.state == StateRole::Follower && raft.promotable() && raft.election_elapsed + 1 >= timeout;
        if !would_campaign
            || self.election_held
            || leader == raft::INVALID_ID
            || self.down_nodes.contains(&PeerId(leader).node())
        {
            return false;
        }
        self.election_held = true;
        self.elections_held += 1;
        self.raw.raft.election_elapsed = timeout.saturating_sub(self.hold_ticks());
        tracing::debug!(partition = %self.config.partition, leader = %PeerId(leader),
            "election timeout held: the leader's node is alive; asked the leader to heartbeat");
        self.tell_leader_awake();
        true
    }

    /// How long a hold lasts, in ticks.
    fn hold_ticks(&self) -> usize {
        HOLD_HEARTBEATS * self.config.options.heartbeat_ticks
    }

    /// Elections held by [`Partition::hold_election_for_live_leader`] since this replica
    /// loaded, for metrics.
    pub fn elections_held(&self) -> u64 {
        self.elections_held
    }

    /// A heartbeat answer marked [`WAKE_CONTEXT`] makes a quiesced (or asking) leader wake;
    /// an awake one ignores it.
    fn tell_leader_awake(&mut self) {
        let raft = &self.raw.raft;
        if raft.leader_id == raft::INVALID_ID || raft.leader_id == raft.id {
            return;
        }
        self.send_marked(MessageType::MsgHeartbeatResponse, raft.leader_id, WAKE_CONTEXT);
    }

    /// Sends `to` a heartbeat or heartbeat answer of this replica's term and commit, carrying
    /// `mark` as its context.
    fn send_marked(&mut self, message_type: MessageType, to: u64, mark: &[u8]) {
        let raft = &self.raw.raft;
        let mut message = Message::default();
        message.set_msg_type(message_type);
        message.to = to;
        message.from = raft.id;
        message.term = raft.term;
        message.commit = raft.raft_log.committed;
        message.context = mark.to_vec().into();
        self.send(message);
    }

    /// The quiesce side of an incoming Raft message, before Raft steps it. Returns false if the
    /// message is fully handled (a leader's quiesce answer).
    pub(super) fn quiesce_before_step(&mut self, now: Instant, message: &Message) -> bool {
        if matches!(self.quiesce, Quiesce::Awake { .. }) {
            return true;
        }
        let term = self.raw.raft.term;
        let signal = (message.get_msg_type() == MessageType::MsgHeartbeatResponse && message.term == term)
            .then(|| quiesce_signal(message));
        match (&mut self.quiesce, signal) {
            (Quiesce::Asking { unanswered, lagging, .. }, Some(Signal::Quiesced)) => {
                unanswered.remove(&message.from);
                if unanswered.is_empty() {
                    let lagging = std::mem::take(lagging);
                    self.enter_quiesced(lagging);
                }
                false
            }
            // A late answer to an earlier heartbeat, or to an earlier request to quiesce: no
            // news, and no work.
            (_, Some(Signal::None | Signal::Quiesced)) => false,
            // Asked again while quiesced (an answer was lost): Raft answers, and the answer says
            // whether this replica still agrees.
            (Quiesce::Quiesced { .. }, _)
                if message.get_msg_type() == MessageType::MsgHeartbeat
                    && is_quiesce_mark(message)
                    && message.term == term =>
            {
                true
            }
            _ => {
                let from_leader = message.from == self.raw.raft.leader_id;
                if self.wake(now, WakeCause::Message) && !from_leader {
                    self.tell_leader_awake();
                }
                true
            }
        }
    }

    /// The quiesce side of an incoming Raft message, after Raft stepped it: a follower asked to
    /// quiesce decides, and Raft's answer says what it decided.
    pub(super) fn quiesce_after_step(&mut self, message: &Message) {
        if message.get_msg_type() != MessageType::MsgHeartbeat || !is_quiesce_mark(message) {
            return;
        }
        let raft = &self.raw.raft;
        let agrees = raft.state == StateRole::Follower
            && raft.leader_id == message.from
            && raft.term == message.term
            && raft.raft_log.last_index() == message.commit
            && raft.raft_log.committed == message.commit
            && self.forwarded.is_empty()
            && self.installing.is_none()
            && self.staged_snapshot.is_none();
        if agrees {
            self.enter_quiesced(BTreeSet::new());
            return;
        }
        // Asked again while quiesced, and no longer agreeing: awake, and the answer says so.
        if self.is_quiesced() {
            self.quiesce = Quiesce::awake();
        }
        // Raft answered with the heartbeat's context; the answer must wake the leader instead.
        for answer in self.raw.raft.msgs.iter_mut() {
            if answer.get_msg_type() == MessageType::MsgHeartbeatResponse
                && answer.to == message.from
                && is_quiesce_mark(answer)
            {
                answer.context = WAKE_CONTEXT.to_vec().into();
            }
        }
    }

    /// Called on each tick while not quiesced: a leader idle long enough asks its members to
    /// quiesce; a leader asking resends to members that did not answer, and gives up after an
    /// election timeout. Returns whether Raft should tick (not while asking: no heartbeats).
    pub(super) fn quiesce_on_tick(&mut self, now: Instant) -> bool {
        let (asked_tick, unanswered) = match &self.quiesce {
            Quiesce::Awake { .. } => return true,
            Quiesce::Quiesced { .. } => return false,
            Quiesce::Asking { asked_tick, unanswered, .. } => (*asked_tick, unanswered.clone()),
        };
        let waited = self.ticks - asked_tick;
        if waited >= ASKING_TIMEOUT_ELECTIONS * self.config.options.election_ticks as u64 {
            self.wake(now, WakeCause::QuiesceRefused);
            return true;
        }
        if waited.is_multiple_of(self.config.options.heartbeat_ticks as u64) {
            for peer in unanswered {
                self.send_quiesce(peer);
            }
        }
        false
    }

    /// After a tick of an awake replica: counts a leader's idle ticks and asks to quiesce once
    /// it has been idle long enough.
    pub(super) fn maybe_quiesce(&mut self) {
        let raft = &self.raw.raft;
        let seen_now = (raft.term, raft.raft_log.last_index(), raft.raft_log.committed);
        let idle = self.config.options.quiesce_after_ticks > 0 && self.is_leader() && self.nothing_pending();
        let Quiesce::Awake { idle_ticks, seen } = &mut self.quiesce else { return };
        if !idle || *seen != seen_now {
            *idle_ticks = 0;
            *seen = seen_now;
            return;
        }
        *idle_ticks += 1;
        if *idle_ticks < self.config.options.quiesce_after_ticks {
            return;
        }
        let Some((asked, lagging)) = self.quiesce_targets() else { return };
        if asked.is_empty() {
            self.enter_quiesced(lagging);
            return;
        }
        for &peer in &asked {
            self.send_quiesce(peer);
        }
        self.quiesce = Quiesce::Asking { asked_tick: self.ticks, unanswered: asked, lagging };
    }

    /// A replica quiesces: it lets go of memory only an active replica needs (a leader's
    /// buffer of `max_inflight_msgs` slots per follower, the capacity of its queues and of the
    /// log's vectors, the nodes of empty request maps: together about 2.5 KiB per replica,
    /// measured with heaptrack); all of it comes back with the next request or append.
    fn enter_quiesced(&mut self, lagging: BTreeSet<NodeId>) {
        self.quiesce = Quiesce::Quiesced { lagging };
        self.raw.raft.maybe_free_inflight_buffers();
        self.raw.raft.raft_log.unstable.entries.shrink_to_fit();
        self.raw.mut_store().release_all_capacity();
        self.outputs.shrink_to_fit();
        self.unpersisted.shrink_to_fit();
        self.apply_batches_in_flight.shrink_to_fit();
        // An emptied map keeps its root node; a fresh one holds nothing. (Not the reads: their
        // counter of ReadIndex contexts must never restart.)
        if self.proposals.is_empty() {
            self.proposals = Default::default();
        }
        if self.forwarded.is_empty() {
            self.forwarded = Default::default();
        }
    }

    /// A leader with nothing in flight: everything it appended is committed, applied and
    /// durable in its log, and no request, membership change, transfer or snapshot is under way.
    fn nothing_pending(&self) -> bool {
        self.pending_work().is_none()
    }

    /// What keeps this replica from quiescing as a leader (for status and debugging), if
    /// anything.
    pub fn pending_work(&self) -> Option<&'static str> {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        let checks = [
            (self.fatal.is_none(), "failed"),
            (self.switching.is_none(), "switching Raft on or off"),
            (raft.lead_transferee.is_none(), "transferring leadership"),
            (!raft.has_pending_conf(), "membership change in flight"),
            (raft.prs().conf().to_conf_state().get_voters_outgoing().is_empty(), "joint configuration"),
            (raft.raft_log.committed == last, "uncommitted entries"),
            (self.applied.index == last && self.applying == last, "entries not applied"),
            (self.apply_batches_in_flight.is_empty(), "store applying"),
            (self.unpersisted.is_empty(), "log writes not durable"),
            (self.proposals.is_empty(), "proposals pending"),
            (self.forwarded.is_empty(), "forwarded writes pending"),
            (self.reads.is_empty(), "reads pending"),
            (!self.saving_snapshot, "saving a snapshot"),
            (self.staged_snapshot.is_none() && self.installing.is_none(), "installing a snapshot"),
            (self.compaction_deadline_tick.is_none(), "holding compaction for a follower"),
        ];
        checks.into_iter().find(|(ok, _)| !ok).map(|(_, why)| why)
    }

    /// The members to ask (every other member on a live node, each matched through the last
    /// index), and the nodes excused as down. `None` if some live member is behind or the
    /// live voters are not a quorum.
    fn quiesce_targets(&self) -> Option<(BTreeSet<u64>, BTreeSet<NodeId>)> {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        let (mut asked, mut lagging) = (BTreeSet::new(), BTreeSet::new());
        for (&id, progress) in raft.prs().iter() {
            if id == raft.id {
                continue;
            }
            let node = PeerId(id).node();
            if self.down_nodes.contains(&node) {
                lagging.insert(node);
            } else if progress.matched == last {
                asked.insert(id);
            } else {
                return None;
            }
        }
        self.live_voters_are_quorum().then_some((asked, lagging))
    }

    /// Whether the voters on nodes not known to be down are a quorum.
    fn live_voters_are_quorum(&self) -> bool {
        let voters = self.raw.raft.prs().conf().voters().ids();
        let total = voters.len();
        let live = voters.iter().filter(|&id| !self.down_nodes.contains(&PeerId(id).node())).count();
        live > total / 2
    }

    fn send_quiesce(&mut self, to: u64) {
        self.send_marked(MessageType::MsgHeartbeat, to, QUIESCE_CONTEXT);
    }

    /// Why an election this replica is starting now started.
    pub(super) fn election_cause(&self) -> ElectionCause {
        let held_ticks = if self.election_held { self.hold_ticks() } else { 0 };
        let window = (2 * self.config.options.election_ticks + held_ticks) as u64;
        match self.last_wake {
            Some((cause, tick)) if self.ticks <= tick + window => match cause {
                WakeCause::LeaderNodeDown | WakeCause::QuorumNodesDown => ElectionCause::LeaderNodeDown,
                _ => ElectionCause::AfterWake,
            },
            _ => ElectionCause::Timeout,
        }
    }
}
