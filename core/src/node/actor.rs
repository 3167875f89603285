//! The task that drives one partition replica.

use super::persisted::{PersistEvent, PersistSignal};
use super::router::Router;
use crate::env::{BoxFuture, Env, Envelope, Payload, Transport};
use crate::ids::{NodeId, RequestId};
use crate::partition::{Output, Partition, Request, Response};
use crate::persist::{LogWrite, PersistRequest, SnapshotMeta};
use crate::snapshot::{TransferEvents, Transfers};
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::{Arc, Weak};
use std::task::Poll;

/// Readies handed to the log and not yet durable, per partition. At this bound the actor
/// stops taking inputs until the log catches up: backpressure instead of an unbounded queue.
pub const UNPERSISTED_READIES_MAX: usize = 256;

/// What a partition's mailbox carries.
pub enum PartitionInput {
    Message(Envelope),
    Request {
        body: Request,
        reply: oneshot::Sender<Response>,
    },
    /// Runs `f` on the partition between two inputs (status pages, tests, debugging).
    Inspect(Box<dyn FnOnce(&Partition) + Send>),
    /// Stops the actor; the partition's pending requests are dropped (callers see a closed
    /// reply channel).
    Stop,
    /// The replica left the partition: make its removal durable (after every write it queued
    /// before), then stop.
    Remove,
}

pub(super) struct Actor {
    pub partition: Partition,
    pub mailbox: mpsc::Receiver<PartitionInput>,
    pub env: Env,
    pub transport: Arc<dyn Transport>,
    pub persist: mpsc::Sender<PersistRequest>,
    pub signal: PersistSignal,
    /// The router that owns this actor, told about partitions the directory allocates.
    pub router: Weak<Router>,
    /// Snapshot files and transfers of this replica.
    pub transfers: Transfers,
    /// What transfers asked for since the last drain.
    pub transfer_events: TransferEvents,
    /// The snapshot being written away from this task, if any: its outcome arrives here.
    pub saving: Option<oneshot::Receiver<SnapshotSaved>>,
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
    fn complete(mut self, result: Result<(), crate::persist::PersistError>) {
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
            signal.failed(crate::persist::PersistError(Arc::new(error)));
        }
    }
}

/// A request waiting for its partition's answer.
struct Pending {
    reply: oneshot::Sender<Response>,
    arrived: crate::env::Instant,
    is_write: bool,
}

enum Wake {
    Input(Option<PartitionInput>),
    Persist(PersistEvent),
    SnapshotSaved(SnapshotSaved),
    Timer,
}

impl Actor {
    pub async fn run(mut self) {
        let mut replies: BTreeMap<RequestId, Pending> = BTreeMap::new();
        let mut next_request = 0u64;
        let mut persisted_seen = PersistSignal::NOTHING_SEEN;
        let mut timer: Option<(crate::env::Instant, BoxFuture<()>)> = None;
        let (mut last_leader, mut was_candidate) = (self.partition.leader(), false);
        self.drain(&mut replies).await;
        loop {
            let deadline = self.partition.poll_timeout();
            if timer.as_ref().map(|(at, _)| Some(*at)) != Some(deadline) {
                timer = deadline.map(|at| (at, self.env.clock.sleep_until(at)));
            }
            let accepting = self.partition.unpersisted_readies() < UNPERSISTED_READIES_MAX;
            let wake = poll_fn(|cx| {
                if let Poll::Ready(event) = self.signal.poll_event(&mut persisted_seen, cx) {
                    return Poll::Ready(Wake::Persist(event));
                }
                if let Some(saving) = self.saving.as_mut() {
                    if let Poll::Ready(outcome) = saving.poll_unpin(cx) {
                        let outcome =
                            outcome.unwrap_or_else(|_| Err("the snapshot writer ended without an answer".into()));
                        return Poll::Ready(Wake::SnapshotSaved(outcome));
                    }
                }
                if accepting {
                    if let Poll::Ready(input) = self.mailbox.poll_next_unpin(cx) {
                        return Poll::Ready(Wake::Input(input));
                    }
                }
                if let Some((_, sleep)) = timer.as_mut() {
                    if sleep.poll_unpin(cx).is_ready() {
                        return Poll::Ready(Wake::Timer);
                    }
                }
                Poll::Pending
            })
            .await;
            let now = self.env.clock.now();
            match wake {
                Wake::Input(None) | Wake::Input(Some(PartitionInput::Stop)) => return,
                Wake::Input(Some(PartitionInput::Remove)) => {
                    let partition = self.partition.id();
                    tracing::info!(%partition, node = %self.partition.node(), "replica removed; deleting its data");
                    let write = LogWrite { remove: true, ..LogWrite::new(partition) };
                    // The removal follows every write this replica queued; once it is durable
                    // its snapshot files go, and the router may start a new replica here.
                    let router = self.router.clone();
                    let store = self.transfers.store().clone();
                    let done = Box::new(move |result: Result<(), _>| {
                        if result.is_ok() {
                            if let Err(error) = store.remove_all() {
                                tracing::warn!(%partition, %error, "cannot delete a removed replica's files");
                            }
                        }
                        if let Some(router) = router.upgrade() {
                            router.on_retired(partition);
                        }
                    });
                    let _ = self.persist.send(PersistRequest { write, done }).await;
                    return;
                }
                Wake::Input(Some(PartitionInput::Message(envelope))) => match envelope.payload {
                    Payload::Raft(message) => self.partition.handle_message(now, message),
                    Payload::Snapshot(message) => {
                        self.transfers.handle(now, envelope.from, message, &mut self.transfer_events)
                    }
                },
                Wake::Input(Some(PartitionInput::Request { body, reply })) => {
                    next_request += 1;
                    let request = RequestId(next_request);
                    let is_write = matches!(body, Request::Write(_) | Request::ForwardedWrite(_));
                    let proposes = match body {
                        Request::Write(_) => self.partition.is_leader(),
                        Request::ForwardedWrite(_) => true,
                        Request::Read { .. } | Request::ChangeMembership(_) | Request::TransferLeader(_) => false,
                    };
                    if proposes {
                        self.env.metrics.proposals.inc();
                    }
                    replies.insert(request, Pending { reply, arrived: now, is_write });
                    self.partition.handle_request(now, request, body);
                }
                Wake::Input(Some(PartitionInput::Inspect(f))) => f(&self.partition),
                Wake::Persist(PersistEvent::DurableThrough(number)) => self.partition.handle_persisted(now, number),
                Wake::Persist(PersistEvent::Failed(error)) => self.partition.handle_persist_failed(error),
                Wake::SnapshotSaved(outcome) => {
                    self.saving = None;
                    self.partition.handle_snapshot_saved(now, outcome);
                }
                Wake::Timer => {
                    timer = None;
                    self.partition.handle_tick(now);
                    self.transfers.tick(&mut self.transfer_events);
                }
            }
            let (leader, candidate) = (self.partition.leader(), self.partition.status_role_is_candidate());
            if leader != last_leader && leader.is_some() {
                self.env.metrics.leader_changes.inc();
            }
            if candidate && !was_candidate {
                self.env.metrics.elections.inc();
            }
            (last_leader, was_candidate) = (leader, candidate);
            self.drain(&mut replies).await;
        }
    }

    /// Carries out every output the partition has, in order, and feeds it what snapshot
    /// transfers produced, until neither has anything left.
    async fn drain(&mut self, replies: &mut BTreeMap<RequestId, Pending>) {
        // Messages to one node in one drain go out as one batch.
        let mut batches: BTreeMap<NodeId, Vec<Envelope>> = BTreeMap::new();
        loop {
            if !self.drain_outputs(replies, &mut batches).await {
                return;
            }
            let events = std::mem::take(&mut self.transfer_events);
            for envelope in events.send {
                batches.entry(envelope.to).or_default().push(envelope);
            }
            if events.finished.is_empty() && events.installed.is_none() {
                break;
            }
            // Inputs only now, after every output was carried out (see `Output::SaveSnapshot`).
            let now = self.env.clock.now();
            for (to, delivered) in events.finished {
                self.partition.report_snapshot(now, to, delivered);
            }
            if let Some(installed) = events.installed {
                let position = installed.meta.position;
                if !self.partition.handle_snapshot_received(now, installed.message, installed.meta, installed.state) {
                    tracing::info!(partition = %self.partition.id(), ?position, "received snapshot is stale; dropped");
                }
            }
        }
        for (to, batch) in batches {
            self.transport.send(to, batch);
        }
    }

    /// Writes the snapshot `meta` describes on a blocking thread; its outcome wakes the actor.
    fn save_snapshot(&mut self, meta: SnapshotMeta) {
        assert!(self.saving.is_none(), "one snapshot is written at a time");
        let view = self.partition.snapshot_view(&meta);
        let store = self.transfers.store().clone();
        let (partition, metrics) = (self.partition.id(), self.env.metrics.clone());
        let (tx, rx) = oneshot::channel();
        let work = Box::new(move || {
            let outcome = match store.save(&meta, |out| view.write_snapshot(out)) {
                Ok(size_bytes) => {
                    tracing::info!(%partition, position = ?meta.position, size_bytes, "snapshot saved");
                    metrics.snapshots_saved.inc();
                    Ok(meta)
                }
                Err(error) => Err(error.to_string()),
            };
            let _ = tx.send(outcome);
        });
        self.env.spawn.spawn("save snapshot", self.env.spawn.run_blocking(work));
        self.saving = Some(rx);
    }

    /// Carries out the partition's outputs; false if the node is stopping.
    async fn drain_outputs(
        &mut self,
        replies: &mut BTreeMap<RequestId, Pending>,
        batches: &mut BTreeMap<NodeId, Vec<Envelope>>,
    ) -> bool {
        while let Some(output) = self.partition.poll_output() {
            match output {
                Output::Send(envelope) => batches.entry(envelope.to).or_default().push(envelope),
                Output::SendSnapshot { to, message } => {
                    let now = self.env.clock.now();
                    self.transfers.start(now, to, &message, &mut self.transfer_events);
                }
                Output::SaveSnapshot(meta) => self.save_snapshot(meta),
                Output::Compact { write, snapshot } => {
                    let store = self.transfers.store().clone();
                    let done = Box::new(move |result: Result<(), _>| {
                        // Older snapshots are superseded once the log says this one is current.
                        if result.is_ok() {
                            if let Err(error) = store.remove_older_than(snapshot.position.index) {
                                tracing::warn!(%error, "cannot delete superseded snapshots");
                            }
                        }
                    });
                    if self.persist.send(PersistRequest { write, done }).await.is_err() {
                        return false;
                    }
                }
                Output::Persist { ready_number, write } => {
                    let completion = Completion { signal: Some(self.signal.clone()), ready_number };
                    let done = Box::new(move |result| completion.complete(result));
                    // Waits when the writer's queue is full: the writer never waits on us.
                    if self.persist.send(PersistRequest { write, done }).await.is_err() {
                        // The writer is gone (the node is stopping); nothing more is durable.
                        return false;
                    }
                }
                Output::PartitionAllocated { partition, info, campaign } => {
                    if let Some(router) = self.router.upgrade() {
                        router.on_partition_allocated(partition, &info, campaign);
                    }
                }
                Output::MembersChanged { partition, info } => {
                    if let Some(router) = self.router.upgrade() {
                        router.reconcile(partition, &info);
                    }
                }
                Output::DirectoryReady { partitions } => {
                    if let Some(router) = self.router.upgrade() {
                        for (partition, info) in &partitions {
                            router.reconcile(*partition, info);
                        }
                    }
                }
                Output::Respond { request, response } => {
                    if let Some(pending) = replies.remove(&request) {
                        if pending.is_write && matches!(response, Response::Written(_)) {
                            let elapsed = self.env.clock.now().saturating_duration_since(pending.arrived);
                            self.env.metrics.commit_latency_seconds.observe(elapsed.as_secs_f64());
                        }
                        // The caller may have stopped waiting; that is its business.
                        let _ = pending.reply.send(response);
                    }
                }
            }
        }
        true
    }
}
