//! The shell's scheduler: a fixed set of workers, each driving many partition replicas from
//! one ready queue and one timer queue.
//!
//! A replica's shell (its actor) is not a task. It is a [`Shell`] a worker steps: the worker
//! hands it a waker naming the replica, and the shell polls whatever it waits on (its
//! mailbox, the log's and the store's answers) with it, handles what is ready, and returns
//! when its time next to tick is, if any. Whatever it polled wakes it by putting it in its
//! worker's ready queue, once: a replica is in that queue at most once, so the queue is
//! bounded by the worker's replicas. A quiesced replica returns no deadline and is in no
//! queue: it costs nothing until an input arrives.
//!
//! Each worker is one task on the node's runtime; replicas are spread over workers by
//! partition id, so a replica always runs on the same worker and never on two at once. A
//! worker steps at most [`STEPS_PER_POLL`] shells before it yields to the runtime, and a shell
//! handles at most a bounded number of events per step (the actor's), so one busy replica
//! cannot starve the others on its worker.

use crate::env::{Clock, Instant, Spawn};
use crate::ids::PartitionId;
use futures::task::{waker, ArcWake, AtomicWaker};
use futures::FutureExt;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

/// Shells a worker steps before it yields to the runtime (other tasks: the transport, the
/// log writer, the applier, gRPC).
pub const STEPS_PER_POLL: usize = 64;

thread_local! {
    /// The partition whose shell this thread is stepping.
    static STEPPING: Cell<Option<PartitionId>> = const { Cell::new(None) };
}

/// The partition whose replica the current thread is stepping, if any: a panic hook names it
/// (a panic in a step is a broken invariant of that replica, and ends its whole worker).
pub fn stepping_partition() -> Option<PartitionId> {
    STEPPING.with(Cell::get)
}

/// Marks the thread as stepping a partition until dropped (also when a step unwinds), and
/// enters a `replica` span naming it: every line the step logs carries the partition, and
/// the term as the step began (the shell records it).
struct Stepping {
    _span: tracing::span::EnteredSpan,
}

impl Stepping {
    fn start(partition: PartitionId) -> Stepping {
        STEPPING.with(|s| s.set(Some(partition)));
        Stepping { _span: tracing::info_span!("replica", %partition, term = tracing::field::Empty).entered() }
    }
}

impl Drop for Stepping {
    fn drop(&mut self) {
        STEPPING.with(|s| s.set(None));
    }
}

/// What a worker runs: one replica's shell.
pub(super) trait Shell: Send + 'static {
    /// Handles what is ready, registering `cx`'s waker with everything it waits on.
    fn step(&mut self, cx: &mut Context<'_>) -> Step;
}

/// How a step ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The shell waits for its wakers, and for `deadline` if any (its next tick).
    Wait { deadline: Option<Instant> },
    /// The shell is finished (stopped, removed or unloaded); the worker drops it.
    Done,
}

/// A node's workers.
pub(super) struct Workers {
    workers: Vec<Arc<Worker>>,
}

impl Workers {
    /// Starts `count` workers (at least one) as tasks on `spawn`.
    pub fn start(count: usize, clock: Arc<dyn Clock>, spawn: &dyn Spawn) -> Workers {
        let workers: Vec<Arc<Worker>> = (0..count.max(1))
            .map(|_| {
                Arc::new(Worker {
                    state: Mutex::new(WorkerState::default()),
                    task: AtomicWaker::new(),
                    clock: clock.clone(),
                })
            })
            .collect();
        for worker in &workers {
            spawn.spawn("partition worker", Box::pin(worker.clone().run()));
        }
        Workers { workers }
    }

    /// Hands `shell`, the replica of `partition`, to its worker, which steps it at once.
    pub fn insert(&self, partition: PartitionId, shell: Box<dyn Shell>) {
        let index = (partition.0 % self.workers.len() as u64) as usize;
        let worker = &self.workers[index];
        let mut state = worker.state.lock().expect("not poisoned");
        assert!(!state.stopping, "no replica starts once the node stops");
        state.next_id += 1;
        let id = state.next_id;
        let wake = Arc::new(ShellWake { worker: Arc::downgrade(worker), id });
        let slot = Slot { partition, shell: Some(shell), waker: waker(wake), scheduled: true, deadline: None };
        state.shells.insert(id, slot);
        state.ready.push_back(id);
        drop(state);
        worker.task.wake();
    }

    /// Lets every worker end once the shells it runs have finished (the router has told
    /// them all to stop).
    pub fn stop(&self) {
        for worker in &self.workers {
            worker.state.lock().expect("not poisoned").stopping = true;
            worker.task.wake();
        }
    }

    /// Shells that are running (loaded replicas), over all workers.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.workers.iter().map(|w| w.state.lock().expect("not poisoned").shells.len()).sum()
    }
}

/// One worker: its shells, its ready queue and its timer queue.
struct Worker {
    state: Mutex<WorkerState>,
    /// The worker's task, woken when a shell becomes ready.
    task: AtomicWaker,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct WorkerState {
    /// Keyed by an id of the shell's own, not its partition: a replica that unloads and
    /// loads again is a new shell, and a waker of the old one must not wake the new one.
    shells: BTreeMap<u64, Slot>,
    next_id: u64,
    /// Shells to step, each at most once while it runs (`Slot::scheduled`); a shell woken
    /// during its last step leaves a stale id, skipped when popped.
    ready: VecDeque<u64>,
    /// Shells' next ticks.
    timers: BTreeSet<(Instant, u64)>,
    stopping: bool,
}

struct Slot {
    partition: PartitionId,
    /// `None` while the worker steps it (outside the lock).
    shell: Option<Box<dyn Shell>>,
    waker: Waker,
    /// In the ready queue.
    scheduled: bool,
    /// Its entry in the timer queue.
    deadline: Option<Instant>,
}

impl WorkerState {
    fn schedule(&mut self, id: u64) {
        if let Some(slot) = self.shells.get_mut(&id) {
            if !slot.scheduled {
                slot.scheduled = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Moves every shell whose deadline has come into the ready queue.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.shells.get_mut(&id).expect("a timer belongs to a shell").deadline = None;
            self.schedule(id);
        }
    }

    fn set_deadline(&mut self, id: u64, deadline: Option<Instant>) {
        let slot = self.shells.get_mut(&id).expect("a stepped shell has a slot");
        if slot.deadline == deadline {
            return;
        }
        if let Some(old) = slot.deadline.take() {
            self.timers.remove(&(old, id));
        }
        if let Some(at) = deadline {
            slot.deadline = Some(at);
            self.timers.insert((at, id));
        }
    }
}

/// A shell's waker: puts it in its worker's ready queue.
struct ShellWake {
    worker: Weak<Worker>,
    id: u64,
}

impl ArcWake for ShellWake {
    fn wake_by_ref(wake: &Arc<Self>) {
        let Some(worker) = wake.worker.upgrade() else { return };
        worker.state.lock().expect("not poisoned").schedule(wake.id);
        worker.task.wake();
    }
}

impl Worker {
    async fn run(self: Arc<Self>) {
        let mut sleep: Option<(Instant, crate::env::BoxFuture<()>)> = None;
        poll_fn(|cx| {
            self.task.register(cx.waker());
            let mut stepped = 0;
            loop {
                let now = self.clock.now();
                let mut state = self.state.lock().expect("not poisoned");
                state.fire_timers(now);
                if state.stopping && state.shells.is_empty() {
                    return Poll::Ready(());
                }
                let Some(id) = state.ready.pop_front() else {
                    // Nothing ready: sleep until the earliest tick.
                    let earliest = state.timers.first().map(|&(at, _)| at);
                    drop(state);
                    if sleep.as_ref().map(|(at, _)| *at) != earliest {
                        sleep = earliest.map(|at| (at, self.clock.sleep_until(at)));
                    }
                    let fired = sleep.as_mut().is_some_and(|(_, timer)| timer.poll_unpin(cx).is_ready());
                    if !fired {
                        return Poll::Pending;
                    }
                    sleep = None;
                    continue;
                };
                // A shell woken while it stepped for the last time left its id behind.
                let Some(slot) = state.shells.get_mut(&id) else { continue };
                slot.scheduled = false;
                let mut shell = slot.shell.take().expect("only its worker takes a shell, and puts it back");
                let (waker, partition) = (slot.waker.clone(), slot.partition);
                // Stepped outside the lock: a step wakes other shells (and may start new
                // ones) on this worker.
                drop(state);
                let stepping = Stepping::start(partition);
                let step = shell.step(&mut Context::from_waker(&waker));
                drop(stepping);
                let mut state = self.state.lock().expect("not poisoned");
                let finished = match step {
                    Step::Wait { deadline } => {
                        state.set_deadline(id, deadline);
                        state.shells.get_mut(&id).expect("a stepped shell has a slot").shell = Some(shell);
                        None
                    }
                    Step::Done => {
                        state.set_deadline(id, None);
                        state.shells.remove(&id);
                        Some(shell)
                    }
                };
                drop(state);
                // Dropped outside the lock: what it holds may wake shells of this worker.
                drop(finished);
                stepped += 1;
                if stepped == STEPS_PER_POLL {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ManualClock, ManualExecutor};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A shell that counts its steps, ticks every `period` until it has ticked `ticks` times,
    /// and wakes when `input` is told to.
    struct Counting {
        steps: Arc<AtomicUsize>,
        ticks_left: usize,
        period: Duration,
        clock: ManualClock,
        next_tick: Option<Instant>,
        input: Arc<AtomicWaker>,
    }

    impl Shell for Counting {
        fn step(&mut self, cx: &mut Context<'_>) -> Step {
            self.steps.fetch_add(1, Ordering::SeqCst);
            self.input.register(cx.waker());
            let now = self.clock.now();
            if self.next_tick.is_some_and(|at| at <= now) {
                self.ticks_left -= 1;
                self.next_tick = None;
            }
            if self.ticks_left == 0 {
                return Step::Done;
            }
            let next = *self.next_tick.get_or_insert(now + self.period);
            Step::Wait { deadline: Some(next) }
        }
    }

    fn counting(clock: &ManualClock, ticks: usize) -> (Box<Counting>, Arc<AtomicUsize>, Arc<AtomicWaker>) {
        let steps = Arc::new(AtomicUsize::new(0));
        let input = Arc::new(AtomicWaker::new());
        let shell = Counting {
            steps: steps.clone(),
            ticks_left: ticks,
            period: Duration::from_millis(100),
            clock: clock.clone(),
            next_tick: None,
            input: input.clone(),
        };
        (Box::new(shell), steps, input)
    }

    #[test]
    fn a_shell_is_stepped_at_start_at_each_deadline_and_when_woken_and_dropped_when_done() {
        let (executor, clock) = (ManualExecutor::default(), ManualClock::default());
        let workers = Workers::start(2, Arc::new(clock.clone()), &executor);
        let (shell, steps, input) = counting(&clock, 3);
        workers.insert(PartitionId(7), shell);
        executor.run_until_stalled(100);
        assert_eq!(steps.load(Ordering::SeqCst), 1, "stepped once at start");
        // A wake before the deadline steps it once more; a second wake while it is still
        // queued does not queue it twice.
        input.wake();
        input.wake();
        executor.run_until_stalled(100);
        assert_eq!(steps.load(Ordering::SeqCst), 2);
        for tick in 1..=3u64 {
            let at = clock.next_deadline().expect("a worker sleeps until the shell's tick");
            assert_eq!(at, Instant::from_nanos(tick * 100_000_000));
            clock.advance_to(at);
            executor.run_until_stalled(100);
        }
        assert_eq!(steps.load(Ordering::SeqCst), 5);
        assert_eq!(workers.len(), 0, "a finished shell is dropped");
        assert_eq!(clock.next_deadline(), None, "no timer is left behind");
    }

    #[test]
    fn a_quiet_shell_has_no_timer_and_workers_end_once_stopped_and_empty() {
        struct Quiet(Arc<AtomicWaker>, bool);
        impl Shell for Quiet {
            fn step(&mut self, cx: &mut Context<'_>) -> Step {
                self.0.register(cx.waker());
                if self.1 {
                    return Step::Done;
                }
                self.1 = true;
                Step::Wait { deadline: None }
            }
        }
        let (executor, clock) = (ManualExecutor::default(), ManualClock::default());
        let workers = Workers::start(1, Arc::new(clock.clone()), &executor);
        let inputs: Vec<_> = (0..100).map(|_| Arc::new(AtomicWaker::new())).collect();
        for (p, input) in inputs.iter().enumerate() {
            workers.insert(PartitionId(p as u64), Box::new(Quiet(input.clone(), false)));
        }
        executor.run_until_stalled(1000);
        assert_eq!(clock.next_deadline(), None, "quiet shells need no timer");
        assert_eq!(workers.len(), 100);
        workers.stop();
        assert!(executor.run_until_stalled(1000) < 1000);
        assert_eq!(workers.len(), 100, "a worker ends only once its shells have");
        for input in &inputs {
            input.wake();
        }
        executor.run_until_stalled(1000);
        assert_eq!(workers.len(), 0);
        // Nothing is left to poll: every worker's task has ended.
        assert_eq!(executor.run_until_stalled(1000), 0);
    }

    #[test]
    fn a_shell_woken_during_its_last_step_is_not_stepped_again() {
        struct Last(Arc<AtomicUsize>);
        impl Shell for Last {
            fn step(&mut self, cx: &mut Context<'_>) -> Step {
                self.0.fetch_add(1, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                Step::Done
            }
        }
        let (executor, clock) = (ManualExecutor::default(), ManualClock::default());
        let workers = Workers::start(1, Arc::new(clock.clone()), &executor);
        let steps = Arc::new(AtomicUsize::new(0));
        workers.insert(PartitionId(1), Box::new(Last(steps.clone())));
        workers.insert(PartitionId(2), Box::new(Last(steps.clone())));
        executor.run_until_stalled(100);
        assert_eq!(steps.load(Ordering::SeqCst), 2);
        assert_eq!(workers.len(), 0);
    }

    #[test]
    fn a_panicking_step_names_its_partition_to_the_panic_hook_and_ends_its_worker() {
        struct Broken;
        impl Shell for Broken {
            fn step(&mut self, _: &mut Context<'_>) -> Step {
                assert_eq!(stepping_partition(), Some(PartitionId(9)));
                panic!("a broken invariant");
            }
        }
        let (executor, clock) = (ManualExecutor::default(), ManualClock::default());
        let workers = Workers::start(1, Arc::new(clock.clone()), &executor);
        workers.insert(PartitionId(9), Box::new(Broken));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| executor.run_until_stalled(100)));
        let panic = outcome.expect_err("the panic reaches the worker's runtime");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"a broken invariant"));
        assert_eq!(stepping_partition(), None, "the mark is gone once the step unwound");
    }

    #[test]
    fn a_busy_worker_yields_after_a_bounded_number_of_steps() {
        /// Wakes itself at every step, forever.
        struct Busy(Arc<AtomicUsize>);
        impl Shell for Busy {
            fn step(&mut self, cx: &mut Context<'_>) -> Step {
                self.0.fetch_add(1, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                Step::Wait { deadline: None }
            }
        }
        let (executor, clock) = (ManualExecutor::default(), ManualClock::default());
        let workers = Workers::start(1, Arc::new(clock.clone()), &executor);
        let steps = Arc::new(AtomicUsize::new(0));
        workers.insert(PartitionId(1), Box::new(Busy(steps.clone())));
        // One poll of the worker's task.
        executor.run_until_stalled(1);
        assert_eq!(steps.load(Ordering::SeqCst), STEPS_PER_POLL);
    }
}
