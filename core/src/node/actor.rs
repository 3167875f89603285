//! The shell that drives one partition replica: a [`Shell`] its worker steps
//! (`workers.rs`). It turns mailbox inputs, log and store completions and its ticks into the
//! partition's `handle_*` calls, and carries out what `poll_output` returns.

use super::applier::{ApplyDone, ApplyRequest, ApplyResult, ApplyWork, DurableSignal};
use super::persisted::{PersistEvent, PersistSignal};
use super::workers::{Shell, Step};
use crate::env::{Env, Envelope, Payload, Transport};
use crate::ids::{NodeId, PartitionId, RequestId, DIRECTORY};
use crate::partition::{Dormant, ElectionCause, Output, Partition, Request, Response, Role, WakeCause};
use crate::persist::{ConfState, LogWrite, PersistError, PersistRequest, SnapshotMeta};
use crate::snapshot::{SnapshotStore, TransferEvents, Transfers};
use crate::state_machine::{PartitionInfo, ReadQuery};
use crate::store::{self, Rows as _, Store};
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};

/// Ticks between two attempts to record a leader's members in the directory.
const MEMBERS_RETRY_TICKS: u32 = 10;

/// Readies handed to the log and not yet durable, per partition. At this bound the actor
/// stops taking inputs until the log catches up: backpressure instead of an unbounded queue.
pub const UNPERSISTED_READIES_MAX: usize = 256;

/// What a partition's mailbox carries. A mailbox is bounded in inputs
/// (`MAILBOX_MESSAGES_MAX`) and in bytes (`MAILBOX_BYTES_MAX`, by [`PartitionInput::size_bytes`]).
pub enum PartitionInput {
    Message(Envelope),
    Request {
        body: Request,
        reply: oneshot::Sender<Response>,
    },
    /// The nodes node liveness now reports down.
    Liveness(Arc<std::collections::BTreeSet<NodeId>>),
    /// Runs `f` on the partition between two inputs (status pages, tests, debugging).
    Inspect(Box<dyn FnOnce(&Partition) + Send>),
    /// Stops the actor; the partition's pending requests are dropped (callers see a closed
    /// reply channel).
    Stop,
    /// The replica left the partition: make its removal durable (after every write it queued
    /// before), then delete its state, then stop.
    Remove,
}

impl PartitionInput {
    /// What it holds in memory, roughly: its own size and the payload bytes it carries (Raft
    /// entries, snapshot chunks, objects in a write).
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<PartitionInput>() + self.payload_bytes()
    }

    /// A client's request or an inspection: what `MAILBOX_REQUEST_*` bound, as opposed to
    /// what Raft and the node itself send.
    pub fn is_client_request(&self) -> bool {
        matches!(self, PartitionInput::Request { .. } | PartitionInput::Inspect(_))
    }

    /// The bytes this input carries beyond its own struct: entries, snapshot data, a write's
    /// objects. Zero for Raft's control messages (heartbeats, votes, acknowledgements).
    pub fn payload_bytes(&self) -> usize {
        match self {
            PartitionInput::Message(envelope) => envelope.payload_bytes(),
            PartitionInput::Request { body: Request::Write(command) | Request::ForwardedWrite(command), .. } => {
                command.op.data_bytes()
            }
            _ => 0,
        }
    }
}

/// What waits in a replica's mailbox: its bytes, and how many of its inputs are client
/// requests or inspections. Senders add (under the router's lock, refusing what would pass
/// the bounds), the actor subtracts what it takes out.
#[derive(Debug, Default)]
pub(super) struct MailboxLoad {
    pub bytes: std::sync::atomic::AtomicUsize,
    pub requests: std::sync::atomic::AtomicUsize,
}

/// What a replica's actor needs of the node hosting it. The router implements it and owns
/// every replica's lifecycle (creating, unloading, retiring): an actor reports what its
/// partition did and asks to unload itself, and never starts or stops a replica itself.
pub(super) trait ReplicaHost: Send + Sync {
    fn tick_interval(&self) -> std::time::Duration;
    /// The directory (this replica) applied the allocation of `partition`.
    fn partition_allocated(&self, partition: PartitionId, info: &PartitionInfo, campaign: bool);
    /// The directory (this replica) records `info` as `partition`'s members.
    fn members_changed(&self, partition: PartitionId, info: &PartitionInfo);
    /// This actor's replica is idle: replace it by `dormant`, unless an input waits in
    /// `mailbox` (see [`Unload`]).
    fn unload(
        &self,
        partition: PartitionId,
        dormant: Dormant,
        files: SnapshotStore,
        mailbox: &mut mpsc::Receiver<PartitionInput>,
    ) -> Unload;
    /// The removal of this node's replica of `partition` is complete, files and all.
    fn retired(&self, partition: PartitionId);
    /// Records `conf` (as of log index `as_of`) as `partition`'s members in the directory;
    /// true once it is recorded.
    fn record_members(&self, partition: PartitionId, conf: ConfState, as_of: u64) -> BoxFuture<'static, bool>;
}

/// How an actor's request to unload its replica ended (`ReplicaHost::unload`).
pub(super) enum Unload {
    Done,
    /// An input was waiting in its mailbox: the actor handles it and stays loaded.
    Input(Box<PartitionInput>),
    /// The host no longer runs this replica as this actor (it is retiring, or the node is
    /// stopping): the actor carries on.
    Refused,
}

pub(super) struct Actor {
    pub partition: Partition,
    pub mailbox: mpsc::Receiver<PartitionInput>,
    pub mailbox_load: Arc<MailboxLoad>,
    pub env: Env,
    pub transport: Arc<dyn Transport>,
    pub persist: mpsc::Sender<PersistRequest>,
    pub signal: PersistSignal,
    /// The node's state store (reads), and its applier (every write to it).
    pub store: Arc<Store>,
    pub applier: mpsc::Sender<ApplyRequest>,
    /// How far the store has made this partition's state durable.
    pub durable: DurableSignal,
    /// The node hosting this replica (the router), which owns its lifecycle: the actor tells
    /// it what happened and asks it to unload; it never changes other replicas itself.
    pub host: Weak<dyn ReplicaHost>,
    /// Snapshot files and transfers of this replica.
    pub transfers: Transfers,
    /// What transfers asked for since the last drain.
    pub transfer_events: TransferEvents,
    /// The snapshot being written away from this task, if any: its outcome arrives here.
    pub saving: Option<oneshot::Receiver<SnapshotSaved>>,
    /// A received snapshot file being checked on a blocking thread (`PendingCheck`).
    pub checking: Option<oneshot::Receiver<crate::snapshot::CheckedSnapshot>>,
    /// Members this replica, as leader, wants the directory to record (see
    /// `Output::LeaderMembers`), and the recording under way, if any.
    pub members: MembersRecord,
    /// What it keeps between steps.
    pub state: ActorState,
}

/// Members a leader reports, with the log index through which they hold.
type ReportedMembers = Box<(crate::persist::ConfState, u64)>;

/// The directory recording of a leader's members: at most one attempt at a time, retried
/// (while this replica leads) until the directory records them. The members are boxed:
/// rarely set, and every replica's actor holds a `MembersRecord`.
#[derive(Default)]
pub(super) struct MembersRecord {
    wanted: Option<ReportedMembers>,
    attempt: Option<(ReportedMembers, oneshot::Receiver<bool>)>,
    not_before: crate::env::Instant,
}

/// How writing a snapshot ended.
pub(super) type SnapshotSaved = Result<SnapshotMeta, String>;

/// Tells the actor how its write ended. If the writer drops the write without answering (it
/// stopped, or panicked on a broken invariant), that counts as a failure: the partition must
/// never wait forever for, or acknowledge, a write nobody made durable.
struct Completion {
    signal: Option<PersistSignal>,
    ready_number: u64,
}

impl Completion {
    fn complete(mut self, result: Result<(), PersistError>) {
        let signal = self.signal.take().expect("completed once");
        match result {
            Ok(()) => signal.persisted(self.ready_number),
            Err(error) => signal.failed(error),
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(signal) = self.signal.take() {
            let error = std::io::Error::other("the log writer dropped the write without making it durable");
            signal.failed(PersistError(Arc::new(error)));
        }
    }
}

/// How far this replica's furthest-behind member is behind it while it leads (zeros
/// otherwise), in entries and in time; kept by its actor, read by metric scrapes without
/// asking the replica.
#[derive(Debug, Default)]
pub(super) struct LagGauge {
    pub entries: std::sync::atomic::AtomicU64,
    pub millis: std::sync::atomic::AtomicU64,
}

/// Keeps the node's metrics of this replica as it changes (replicas by role and quiesced,
/// elections by cause, leader changes, wakes by cause, its lag as a leader): a scrape reads
/// them without asking every replica.
struct ReplicaGauges {
    metrics: Arc<crate::metrics::NodeMetrics>,
    lag: Arc<LagGauge>,
    role: Option<Role>,
    leader: Option<NodeId>,
    quiesced: bool,
    under_replicated: bool,
    leaderless: bool,
    last_wake: Option<(WakeCause, u64)>,
    elections_held: u64,
}

/// Keeps `gauge` counting this replica while `now` holds, given whether it did (`was`).
fn count_while(gauge: &prometheus_client::metrics::gauge::Gauge, was: &mut bool, now: bool) {
    if now != *was {
        if now {
            gauge.inc();
        } else {
            gauge.dec();
        }
        *was = now;
    }
}

impl ReplicaGauges {
    fn role_gauge(&self, role: Role) -> &prometheus_client::metrics::gauge::Gauge {
        match role {
            Role::Leader => &self.metrics.partitions_leader,
            Role::Follower => &self.metrics.partitions_follower,
            Role::Candidate => &self.metrics.partitions_candidate,
            Role::Learner => &self.metrics.partitions_learner,
        }
    }

    fn observe(&mut self, partition: &Partition, now: crate::env::Instant) {
        let role = partition.role();
        if self.role != Some(role) {
            if let Some(old) = self.role {
                self.role_gauge(old).dec();
            }
            self.role_gauge(role).inc();
            if role == Role::Candidate {
                let cause = partition.last_election().unwrap_or(ElectionCause::Timeout);
                self.metrics.elections.get_or_create(&vec![("cause", cause.name().to_string())]).inc();
            }
            self.role = Some(role);
        }
        let leader = partition.leader();
        if leader != self.leader && leader.is_some() {
            self.metrics.leader_changes.inc();
        }
        self.leader = leader;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.lag.entries.store(partition.leader_lag_entries(), relaxed);
        self.lag.millis.store(partition.leader_lag_time(now).as_millis() as u64, relaxed);
        count_while(&self.metrics.partitions_quiesced, &mut self.quiesced, partition.is_quiesced());
        count_while(
            &self.metrics.partitions_under_replicated,
            &mut self.under_replicated,
            partition.is_under_replicated(),
        );
        count_while(&self.metrics.partitions_leaderless, &mut self.leaderless, partition.is_leaderless());
        let held = partition.elections_held();
        if held != self.elections_held {
            self.metrics.elections_held.inc_by(held.saturating_sub(self.elections_held));
            self.elections_held = held;
        }
        let last_wake = partition.last_wake();
        if last_wake != self.last_wake {
            if let Some((cause, _)) = last_wake {
                self.metrics.wakes.get_or_create(&vec![("cause", cause.name().to_string())]).inc();
            }
            self.last_wake = last_wake;
        }
    }
}

impl Drop for ReplicaGauges {
    fn drop(&mut self) {
        if let Some(role) = self.role {
            self.role_gauge(role).dec();
        }
        for (gauge, counted) in [
            (&self.metrics.partitions_quiesced, self.quiesced),
            (&self.metrics.partitions_under_replicated, self.under_replicated),
            (&self.metrics.partitions_leaderless, self.leaderless),
        ] {
            if counted {
                gauge.dec();
            }
        }
    }
}

/// A request waiting for its partition's answer.
struct Pending {
    reply: oneshot::Sender<Response>,
    arrived: crate::env::Instant,
    is_write: bool,
}

/// What an input asks of the actor.
enum Flow {
    Continue,
    Stop,
    /// The replica left its partition (`PartitionInput::Remove`).
    Remove,
}

enum Wake {
    Input(Option<PartitionInput>),
    Persist(PersistEvent),
    Applied(ApplyResult),
    Durable(crate::persist::LogPosition),
    SnapshotSaved(SnapshotSaved),
    /// Boxed: rare, and large next to the other wakes.
    SnapshotChecked(Box<crate::snapshot::CheckedSnapshot>),
    MembersRecorded(bool),
    Timer,
}

/// Work handed to the log writer or the store's applier whose queue was full: the actor
/// takes nothing else until it is handed over (backpressure, as an `await` on the send).
enum Blocked {
    Persist(PersistRequest),
    Apply(ApplyRequest, oneshot::Receiver<ApplyResult>),
}

/// Events an actor handles in one step before it lets its worker step others.
const EVENTS_PER_STEP: usize = 32;

fn applier_gone() -> PersistError {
    PersistError(Arc::new(std::io::Error::other("the store's applier stopped")))
}

/// What the actor keeps between steps, besides the partition and its connections.
pub(super) struct ActorState {
    replies: BTreeMap<RequestId, Pending>,
    next_request: u64,
    persisted_seen: u64,
    durable_seen: u64,
    /// Answers of the store, in the order the work was handed to it, with when entries (not
    /// a snapshot install) were handed over, for the apply latency.
    applying: VecDeque<(Option<crate::env::Instant>, oneshot::Receiver<ApplyResult>)>,
    gauges: ReplicaGauges,
    /// Messages to send at the end of the current drain, one batch per node.
    outbox: BTreeMap<NodeId, Vec<Envelope>>,
    blocked: Option<Blocked>,
    /// When this replica was last seen quiesced as a follower: it unloads
    /// `unload_after` later.
    quiesced_since: Option<crate::env::Instant>,
    was_quiesced: bool,
    unload_after: Option<std::time::Duration>,
}

impl ActorState {
    pub fn new(
        partition: &Partition,
        metrics: Arc<crate::metrics::NodeMetrics>,
        lag: Arc<LagGauge>,
        unload_after: Option<std::time::Duration>,
    ) -> ActorState {
        ActorState {
            replies: BTreeMap::new(),
            next_request: 0,
            persisted_seen: PersistSignal::NOTHING_SEEN,
            durable_seen: partition.applied().index,
            applying: VecDeque::new(),
            gauges: ReplicaGauges {
                metrics,
                lag,
                role: None,
                leader: partition.leader(),
                quiesced: false,
                under_replicated: false,
                leaderless: false,
                last_wake: None,
                elections_held: 0,
            },
            outbox: BTreeMap::new(),
            blocked: None,
            quiesced_since: None,
            was_quiesced: false,
            unload_after: unload_after.filter(|_| partition.id() != DIRECTORY),
        }
    }
}

impl Shell for Actor {
    /// Handles up to `EVENTS_PER_STEP` events, carrying out the partition's outputs after
    /// each; returns when it next needs a tick.
    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        // The worker's `replica` span names the partition; the term is the replica's own.
        tracing::Span::current().record("term", self.partition.term());
        for _ in 0..EVENTS_PER_STEP {
            match self.drain(cx) {
                // Waiting for room in the log writer's or the applier's queue: no tick
                // until then, as no input.
                Poll::Pending => return Step::Wait { deadline: None },
                Poll::Ready(false) => return Step::Done,
                Poll::Ready(true) => {}
            }
            let now = self.env.clock.now();
            self.record_members(now);
            let (deadline, unload_at) = self.deadlines(now);
            let Some(wake) = self.poll_wake(cx, now, deadline) else {
                return Step::Wait { deadline: deadline.filter(|_| self.accepting()) };
            };
            let now = self.env.clock.now();
            let flow = match wake {
                Wake::Input(input) => self.handle_input(now, input),
                Wake::Persist(PersistEvent::DurableThrough(number)) => {
                    self.partition.handle_persisted(now, number);
                    Flow::Continue
                }
                Wake::Persist(PersistEvent::Failed(error)) => {
                    self.partition.handle_persist_failed(error);
                    Flow::Continue
                }
                Wake::Applied(outcome) => {
                    match outcome {
                        Ok(Ok(ApplyDone::Applied(applied))) => self.partition.handle_applied(now, applied),
                        Ok(Ok(ApplyDone::Installed(format))) => {
                            self.partition.handle_snapshot_installed(now, Ok(format))
                        }
                        Ok(Err(reason)) => self.partition.handle_snapshot_installed(now, Err(reason)),
                        Ok(Ok(ApplyDone::Removed)) => unreachable!("a removal is awaited where it is asked"),
                        Err(error) => self.partition.handle_apply_failed(error),
                    }
                    Flow::Continue
                }
                Wake::Durable(position) => {
                    self.partition.handle_store_durable(now, position);
                    Flow::Continue
                }
                Wake::SnapshotSaved(outcome) => {
                    self.saving = None;
                    self.partition.handle_snapshot_saved(now, outcome);
                    Flow::Continue
                }
                Wake::SnapshotChecked(checked) => {
                    self.checking = None;
                    self.transfers.checked(*checked, &mut self.transfer_events);
                    Flow::Continue
                }
                Wake::MembersRecorded(recorded) => {
                    let (attempted, _) = self.members.attempt.take().expect("an attempt was polled");
                    if recorded && self.members.wanted.as_ref() == Some(&attempted) {
                        self.members.wanted = None;
                    } else if !recorded {
                        self.members.not_before = now + self.env_tick() * MEMBERS_RETRY_TICKS;
                    }
                    Flow::Continue
                }
                Wake::Timer if unload_at.is_some_and(|at| now >= at) => match self.unload() {
                    Some(Unload::Done) => return Step::Done,
                    Some(Unload::Input(input)) => {
                        self.took_out(&input);
                        self.handle_input(now, Some(*input))
                    }
                    // Not now: try again after another wait.
                    Some(Unload::Refused) | None => {
                        self.state.quiesced_since = Some(now);
                        Flow::Continue
                    }
                },
                Wake::Timer => {
                    self.partition.handle_tick(now);
                    self.transfers.tick(&mut self.transfer_events);
                    Flow::Continue
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => return Step::Done,
                Flow::Remove => {
                    self.remove();
                    return Step::Done;
                }
            }
            self.state.gauges.observe(&self.partition, self.env.clock.now());
        }
        // More may be ready: let the worker step the others first.
        cx.waker().wake_by_ref();
        Step::Wait { deadline: None }
    }
}

impl Actor {
    /// When this replica next needs its timer: Raft's next tick, a retry of this shell's
    /// own work, or its unloading; and when it unloads, if it is to. Also gives back memory
    /// when the replica has just gone quiet.
    fn deadlines(&mut self, now: crate::env::Instant) -> (Option<crate::env::Instant>, Option<crate::env::Instant>) {
        let state = &mut self.state;
        // A quiesced replica has no timer, unless this shell still has work to retry, or it
        // is to unload.
        let retry_members =
            (self.members.wanted.is_some() && self.members.attempt.is_none()).then_some(self.members.not_before);
        let quiesced = self.partition.is_quiesced();
        if quiesced && !state.was_quiesced {
            // Gone quiet: an emptied map keeps its root node (about 370 bytes here).
            if state.replies.is_empty() {
                state.replies = BTreeMap::new();
            }
            state.applying.shrink_to_fit();
            self.partition.shrink_idle_buffers();
        }
        state.was_quiesced = quiesced;
        // Leaders never unload (`partition/dormant.rs`): a quiesced leader keeps no timer.
        if !quiesced || self.partition.is_leader() {
            state.quiesced_since = None;
        } else if state.quiesced_since.is_none() {
            state.quiesced_since = Some(now);
        }
        let unload_at = state.unload_after.and_then(|after| Some(state.quiesced_since? + after));
        let deadline = [self.partition.poll_timeout(), retry_members, unload_at].into_iter().flatten().min();
        (deadline, unload_at)
    }

    /// The first thing ready, in order of priority: completions before new inputs, and
    /// inputs only while the log and the store keep up.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        now: crate::env::Instant,
        deadline: Option<crate::env::Instant>,
    ) -> Option<Wake> {
        let state = &mut self.state;
        if let Poll::Ready(event) = self.signal.poll_event(&mut state.persisted_seen, cx) {
            return Some(Wake::Persist(event));
        }
        if let Some((handed_at, front)) = state.applying.front_mut() {
            if let Poll::Ready(outcome) = front.poll_unpin(cx) {
                if let Some(handed_at) = *handed_at {
                    let elapsed = now.saturating_duration_since(handed_at);
                    self.env.metrics.apply_latency_seconds.observe(elapsed.as_secs_f64());
                }
                state.applying.pop_front();
                return Some(Wake::Applied(outcome.unwrap_or_else(|_| Err(applier_gone()))));
            }
        }
        if let Poll::Ready(position) = self.durable.poll_durable(&mut state.durable_seen, cx) {
            return Some(Wake::Durable(position));
        }
        if let Some((_, attempt)) = self.members.attempt.as_mut() {
            if let Poll::Ready(recorded) = attempt.poll_unpin(cx) {
                return Some(Wake::MembersRecorded(recorded.unwrap_or(false)));
            }
        }
        if let Some(saving) = self.saving.as_mut() {
            if let Poll::Ready(outcome) = saving.poll_unpin(cx) {
                let outcome = outcome.unwrap_or_else(|_| Err("the snapshot writer ended without an answer".into()));
                return Some(Wake::SnapshotSaved(outcome));
            }
        }
        if let Some(checking) = self.checking.as_mut() {
            if let Poll::Ready(checked) = checking.poll_unpin(cx) {
                let checked = checked.expect("a snapshot check always answers");
                return Some(Wake::SnapshotChecked(Box::new(checked)));
            }
        }
        if !self.accepting() {
            // Neither inputs nor ticks until the log and the store catch up: a tick would count
            // as silence from peers whose messages wait unread in the mailbox (a leader applying
            // large entries would step down for want of the acknowledgements queued for it,
            // and its followers would campaign for want of its heartbeats).
            return None;
        }
        if let Poll::Ready(input) = self.mailbox.poll_next_unpin(cx) {
            if let Some(input) = &input {
                self.took_out(input);
            }
            return Some(Wake::Input(input));
        }
        deadline.is_some_and(|at| at <= now).then_some(Wake::Timer)
    }

    /// Whether the log writer and the store keep up, so that this replica takes inputs and
    /// ticks; otherwise it waits for their completions, which wake it.
    fn accepting(&self) -> bool {
        self.partition.unpersisted_readies() < UNPERSISTED_READIES_MAX
            && self.partition.apply_batches_in_flight() < crate::limits::APPLY_BATCHES_IN_FLIGHT_MAX
            && self.partition.apply_bytes_in_flight() < crate::limits::APPLY_BYTES_IN_FLIGHT_MAX
    }

    /// `input` left the mailbox: its bytes no longer count against the bound.
    fn took_out(&self, input: &PartitionInput) {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.mailbox_load.bytes.fetch_sub(input.size_bytes(), Relaxed);
        assert!(before >= input.size_bytes(), "a mailbox's bytes count every input in it");
        if input.is_client_request() {
            let before = self.mailbox_load.requests.fetch_sub(1, Relaxed);
            assert!(before > 0, "a mailbox's request count counts every request in it");
        }
    }

    /// Handles one input from the mailbox (`None`: it closed).
    fn handle_input(&mut self, now: crate::env::Instant, input: Option<PartitionInput>) -> Flow {
        match input {
            None | Some(PartitionInput::Stop) => return Flow::Stop,
            Some(PartitionInput::Remove) => return Flow::Remove,
            Some(PartitionInput::Message(envelope)) => match envelope.payload {
                Payload::Raft(message) => self.partition.handle_message(now, message),
                Payload::Snapshot(message) => {
                    self.transfers.handle(now, envelope.from, message, &mut self.transfer_events)
                }
                Payload::NodeHeartbeat(_) => {}
            },
            Some(PartitionInput::Liveness(down)) => self.partition.handle_down_nodes(now, &down),
            Some(PartitionInput::Request { body, reply }) => {
                self.state.next_request += 1;
                let request = RequestId(self.state.next_request);
                let is_write = matches!(body, Request::Write(_) | Request::ForwardedWrite(_));
                let proposes = match body {
                    Request::Write(_) => self.partition.is_leader(),
                    Request::ForwardedWrite(_) => true,
                    Request::SetRaft(_) => self.partition.is_leader(),
                    Request::Read { .. } | Request::ChangeMembership(_) | Request::TransferLeader(_) => false,
                };
                if proposes {
                    self.env.metrics.proposals.inc();
                }
                self.state.replies.insert(request, Pending { reply, arrived: now, is_write });
                self.partition.handle_request(now, request, body);
            }
            Some(PartitionInput::Inspect(f)) => f(&self.partition),
        }
        Flow::Continue
    }

    /// Unloads this replica if it and this shell hold nothing that would be lost. `None` if
    /// it may not unload now.
    fn unload(&mut self) -> Option<Unload> {
        let shell_idle = self.state.replies.is_empty()
            && self.state.applying.is_empty()
            && self.state.blocked.is_none()
            && self.saving.is_none()
            && self.checking.is_none()
            && self.members.wanted.is_none()
            && self.members.attempt.is_none()
            && self.transfers.is_idle();
        if !shell_idle {
            return None;
        }
        let dormant = self.partition.dormant()?;
        let host = self.host.upgrade()?;
        if self.partition.forget_snapshot_file() {
            // A reopened replica holds no snapshot file: the file goes now (a restart would
            // delete it too).
            if let Err(error) = self.transfers.store().retain_only(None) {
                tracing::warn!(partition = %self.partition.id(), %error, "cannot delete an unloading replica's snapshot");
            }
        }
        Some(host.unload(self.partition.id(), dormant, self.transfers.store().clone(), &mut self.mailbox))
    }

    fn env_tick(&self) -> std::time::Duration {
        self.host.upgrade().map_or(std::time::Duration::from_millis(100), |host| host.tick_interval())
    }

    /// Starts recording the wanted members in the directory, if due and this replica still
    /// leads (a new leader takes the task over).
    fn record_members(&mut self, now: crate::env::Instant) {
        if !self.partition.is_leader() {
            self.members.wanted = None;
        }
        if self.members.attempt.is_some() || now < self.members.not_before {
            return;
        }
        let (Some(wanted), Some(host)) = (self.members.wanted.clone(), self.host.upgrade()) else { return };
        let (tx, rx) = oneshot::channel();
        let partition = self.partition.id();
        let (conf, as_of) = (*wanted).clone();
        let recorded = host.record_members(partition, conf, as_of);
        self.env.spawn.spawn(
            "record members",
            Box::pin(async move {
                let _ = tx.send(recorded.await);
            }),
        );
        self.members.attempt = Some((wanted, rx));
    }

    /// The replica left the partition: its removal goes to the log after every write it queued
    /// (all of them are handed over: the actor takes an input only then); once that is
    /// durable its state leaves the store, then its files, and the router may start a new
    /// replica here. In this order a crash leaves at worst rows or files of a partition the
    /// log no longer knows, which the next start deletes. The actor ends; a task carries this
    /// out.
    fn remove(&mut self) {
        assert!(self.state.blocked.is_none(), "every write the replica queued was handed to the log");
        let partition = self.partition.id();
        tracing::info!(%partition, node = %self.partition.node(), "replica removed; deleting its data");
        let write = LogWrite { remove: true, ..LogWrite::new(partition) };
        let (logged, removal_durable) = oneshot::channel();
        let done = Box::new(move |result: Result<(), PersistError>| {
            let _ = logged.send(result);
        });
        let mut persist = self.persist.clone();
        let (mut applier, files, host) = (self.applier.clone(), self.transfers.store().clone(), self.host.clone());
        let durable = self.durable.clone();
        // A snapshot being saved or checked writes into the replica's directory: its files
        // are deleted only once both are done, so none is left behind.
        let (saving, checking) = (self.saving.take(), self.checking.take());
        self.env.spawn.spawn(
            "remove replica",
            Box::pin(async move {
                if persist.send(PersistRequest { write, done }).await.is_err() {
                    return;
                }
                if !matches!(removal_durable.await, Ok(Ok(()))) {
                    return;
                }
                let (done, removed) = oneshot::channel();
                let request = ApplyRequest { partition, work: ApplyWork::Remove, durable, done };
                if applier.send(request).await.is_err() || !matches!(removed.await, Ok(Ok(Ok(ApplyDone::Removed)))) {
                    tracing::warn!(%partition, "cannot delete a removed replica's state; the next start will");
                    return;
                }
                if let Some(saving) = saving {
                    let _ = saving.await;
                }
                if let Some(checking) = checking {
                    let _ = checking.await;
                }
                if let Err(error) = files.remove_all() {
                    tracing::warn!(%partition, %error, "cannot delete a removed replica's files");
                }
                if let Some(host) = host.upgrade() {
                    host.retired(partition);
                }
            }),
        );
    }

    /// Carries out every output the partition has, in order, and feeds it what snapshot
    /// transfers produced, until neither has anything left; then sends the messages, one
    /// batch per node. `Pending` while work waits for room in a full queue (the drain goes
    /// on from there when woken); `Ready(false)` if the node is stopping.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            if !ready!(self.hand_over_blocked(cx)) {
                return Poll::Ready(false);
            }
            if let Some(output) = self.partition.poll_output() {
                self.carry_out(output);
                continue;
            }
            let events = std::mem::take(&mut self.transfer_events);
            for envelope in events.send {
                self.state.outbox.entry(envelope.to).or_default().push(envelope);
            }
            if let Some(check) = events.check {
                self.check_snapshot(*check);
            }
            if events.finished.is_empty() && events.installed.is_none() {
                break;
            }
            // Inputs only now, after every output was carried out.
            let now = self.env.clock.now();
            for (to, delivered) in events.finished {
                self.partition.report_snapshot(now, to, delivered);
            }
            if let Some(installed) = events.installed {
                let crate::snapshot::Installed { message, meta } = *installed;
                let position = meta.position;
                if !self.partition.handle_snapshot_received(now, message, meta) {
                    tracing::info!(partition = %self.partition.id(), ?position, "received snapshot is stale; dropped");
                }
            }
        }
        for (to, batch) in std::mem::take(&mut self.state.outbox) {
            self.transport.send(to, batch);
        }
        Poll::Ready(true)
    }

    /// Hands the blocked work, if any, to its queue. `Ready(false)` if the queue's reader is
    /// gone (the node is stopping: nothing more becomes durable).
    fn hand_over_blocked(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let sent = match self.state.blocked.take() {
            None => return Poll::Ready(true),
            Some(Blocked::Persist(request)) => match self.persist.poll_ready(cx) {
                Poll::Pending => {
                    self.state.blocked = Some(Blocked::Persist(request));
                    return Poll::Pending;
                }
                Poll::Ready(room) => room.and_then(|()| self.persist.start_send(request)).is_ok(),
            },
            Some(Blocked::Apply(request, answer)) => match self.applier.poll_ready(cx) {
                Poll::Pending => {
                    self.state.blocked = Some(Blocked::Apply(request, answer));
                    return Poll::Pending;
                }
                Poll::Ready(room) => {
                    let entries = matches!(request.work, ApplyWork::Entries(_));
                    let sent = room.and_then(|()| self.applier.start_send(request)).is_ok();
                    if sent {
                        let handed_at = entries.then(|| self.env.clock.now());
                        self.state.applying.push_back((handed_at, answer));
                    }
                    sent
                }
            },
        };
        Poll::Ready(sent)
    }

    /// Syncs and checks a received snapshot file on a blocking thread; its outcome wakes the
    /// actor.
    fn check_snapshot(&mut self, check: crate::snapshot::PendingCheck) {
        assert!(self.checking.is_none(), "one received snapshot is checked at a time");
        let (tx, rx) = oneshot::channel();
        let work = Box::new(move || {
            let _ = tx.send(check.run());
        });
        self.env.spawn.spawn("check snapshot", self.env.spawn.run_blocking(work));
        self.checking = Some(rx);
    }

    /// Writes a snapshot of the partition's state in the store (one read transaction) on a
    /// blocking thread; its outcome wakes the actor.
    fn save_snapshot(&mut self) {
        assert!(self.saving.is_none(), "one snapshot is written at a time");
        let (store, files) = (self.store.clone(), self.transfers.store().clone());
        let (partition, metrics) = (self.partition.id(), self.env.metrics.clone());
        let (tx, rx) = oneshot::channel();
        let work = Box::new(move || {
            let _ = tx.send(save_snapshot(&store, &files, partition, &metrics));
        });
        self.env.spawn.spawn("save snapshot", self.env.spawn.run_blocking(work));
        self.saving = Some(rx);
    }

    /// The store's answer to a read, with the index it is as of.
    fn read(&self, query: &ReadQuery) -> Response {
        let partition = self.partition.id();
        let answer = self.store.read().and_then(|rows| {
            let applied_index = rows.partition(partition)?.map_or(0, |record| record.applied.index);
            Ok((store::read::read(&rows, partition, query)?, applied_index))
        });
        match answer {
            Ok((result, applied_index)) => Response::Read { result, applied_index },
            Err(error) => {
                tracing::error!(%partition, %error, "cannot read the state store");
                Response::Failed(PersistError(Arc::new(error)))
            }
        }
    }

    /// Carries out one of the partition's outputs. Work for the log writer or the applier
    /// is queued as blocked: the drain hands it over before anything else.
    fn carry_out(&mut self, output: Output) {
        assert!(self.state.blocked.is_none(), "an output is carried out only once the last one was handed over");
        match output {
            Output::Send(envelope) => self.state.outbox.entry(envelope.to).or_default().push(envelope),
            Output::SendSnapshot { to, message } => {
                let now = self.env.clock.now();
                self.transfers.start(now, to, &message, &mut self.transfer_events);
            }
            Output::SaveSnapshot => self.save_snapshot(),
            Output::Apply(entries) => self.apply(ApplyWork::Entries(entries)),
            Output::InstallSnapshot(meta) => {
                let files = self.transfers.store().clone();
                self.apply(ApplyWork::Install { meta, files });
            }
            Output::Read { request, query } => {
                let response = self.read(&query);
                self.respond(request, response);
            }
            Output::Compact(write) => {
                let done = Box::new(|_: Result<(), PersistError>| {});
                self.state.blocked = Some(Blocked::Persist(PersistRequest { write, done }));
            }
            Output::Persist { ready_number, write } => {
                let completion = Completion { signal: Some(self.signal.clone()), ready_number };
                let done = Box::new(move |result| completion.complete(result));
                // Handed over when the writer's queue has room: the writer never waits on us.
                self.state.blocked = Some(Blocked::Persist(PersistRequest { write, done }));
            }
            Output::PartitionAllocated { partition, info, campaign } => {
                if let Some(host) = self.host.upgrade() {
                    host.partition_allocated(partition, &info, campaign);
                }
            }
            Output::MembersChanged { partition, info } => {
                if let Some(host) = self.host.upgrade() {
                    host.members_changed(partition, &info);
                }
            }
            Output::LeaderMembers { conf, as_of } => self.members.wanted = Some(Box::new((conf, as_of))),
            Output::DirectoryReady => {
                let partitions = self.store.read().and_then(|rows| store::read::directory_partitions(&rows, DIRECTORY));
                match (partitions, self.host.upgrade()) {
                    (Ok(partitions), Some(host)) => {
                        for (partition, info) in &partitions {
                            host.members_changed(*partition, info);
                        }
                    }
                    (Err(error), _) => tracing::error!(%error, "cannot read the directory from the store"),
                    (Ok(_), None) => {}
                }
            }
            Output::Respond { request, response } => self.respond(request, response),
        }
    }

    /// Hands work to the store's applier (when its queue has room); its answer comes back in
    /// order through `applying`.
    fn apply(&mut self, work: ApplyWork) {
        let (done, answer) = oneshot::channel();
        let request = ApplyRequest { partition: self.partition.id(), work, durable: self.durable.clone(), done };
        self.state.blocked = Some(Blocked::Apply(request, answer));
    }

    fn respond(&mut self, request: RequestId, response: Response) {
        if let Some(pending) = self.state.replies.remove(&request) {
            if pending.is_write && matches!(response, Response::Written(_)) {
                let elapsed = self.env.clock.now().saturating_duration_since(pending.arrived);
                self.env.metrics.commit_latency_seconds.observe(elapsed.as_secs_f64());
            }
            // The caller may have stopped waiting; that is its business.
            let _ = pending.reply.send(response);
        }
    }
}
/// Exports `partition`'s state from one read transaction into a snapshot file; returns its
/// position and membership.
fn save_snapshot(
    store: &Store,
    files: &SnapshotStore,
    partition: PartitionId,
    metrics: &crate::metrics::NodeMetrics,
) -> SnapshotSaved {
    let rows = store.read().map_err(|e| e.to_string())?;
    let record = rows
        .partition(partition)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("partition {partition} has applied nothing yet"))?;
    let meta = SnapshotMeta { position: record.applied, conf_state: record.conf_state };
    let size_bytes =
        files.save(&meta, |out| store::snapshot::export(&rows, partition, out)).map_err(|e| e.to_string())?;
    // The newest file is the one raft-rs sends; older ones serve no one.
    if let Err(error) = files.remove_older_than(meta.position.index) {
        tracing::warn!(%partition, %error, "cannot delete superseded snapshots");
    }
    tracing::info!(%partition, position = ?meta.position, size_bytes, "snapshot saved");
    metrics.snapshots_saved.inc();
    Ok(meta)
}
