//! A single-threaded executor and a manual clock implementing core's `Spawn` and `Clock`, so
//! actors can be tested in one thread with time that moves only when the test says so.

use crate::env::{BoxFuture, Clock, Instant, Spawn};
use futures::task::{waker_ref, ArcWake};
use futures::FutureExt;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Task {
    future: Mutex<Option<BoxFuture<()>>>,
    queue: Arc<Mutex<VecDeque<Arc<Task>>>>,
}

impl ArcWake for Task {
    fn wake_by_ref(task: &Arc<Task>) {
        task.queue.lock().unwrap().push_back(task.clone());
    }
}

/// Runs spawned tasks when asked, in the order they became ready.
#[derive(Clone, Default)]
pub struct ManualExecutor {
    queue: Arc<Mutex<VecDeque<Arc<Task>>>>,
}

impl ManualExecutor {
    /// Polls ready tasks until none is ready or `polls_max` polls were made; returns the
    /// number of polls.
    pub fn run_until_stalled(&self, polls_max: usize) -> usize {
        for polls in 0..polls_max {
            let Some(task) = self.queue.lock().unwrap().pop_front() else { return polls };
            let mut slot = task.future.lock().unwrap();
            if let Some(mut future) = slot.take() {
                let waker = waker_ref(&task);
                let mut cx = Context::from_waker(&waker);
                if future.poll_unpin(&mut cx).is_pending() {
                    *slot = Some(future);
                }
            }
        }
        polls_max
    }
}

impl Spawn for ManualExecutor {
    fn spawn(&self, _name: &'static str, task: BoxFuture<()>) {
        let task = Arc::new(Task { future: Mutex::new(Some(task)), queue: self.queue.clone() });
        self.queue.lock().unwrap().push_back(task);
    }

    fn run_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        work();
        Box::pin(std::future::ready(()))
    }
}

#[derive(Default)]
struct ClockState {
    now: Instant,
    timers: BTreeMap<(Instant, u64), Waker>,
    next_timer: u64,
}

/// A clock that moves only through `advance_to`.
#[derive(Clone, Default)]
pub struct ManualClock {
    state: Arc<Mutex<ClockState>>,
}

impl ManualClock {
    /// The earliest deadline anyone waits for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.state.lock().unwrap().timers.keys().next().map(|&(at, _)| at)
    }

    /// Moves time to `to` and wakes every timer due by then.
    pub fn advance_to(&self, to: Instant) {
        let mut state = self.state.lock().unwrap();
        assert!(to >= state.now, "time never goes back");
        state.now = to;
        let later = state.timers.split_off(&(to, u64::MAX));
        let due = std::mem::replace(&mut state.timers, later);
        drop(state);
        for waker in due.into_values() {
            waker.wake();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.state.lock().unwrap().now
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        let state = self.state.clone();
        let mut registered: Option<(Instant, u64)> = None;
        Box::pin(std::future::poll_fn(move |cx| {
            let mut state = state.lock().unwrap();
            if state.now >= deadline {
                return Poll::Ready(());
            }
            let key = *registered.get_or_insert_with(|| {
                state.next_timer += 1;
                (deadline, state.next_timer)
            });
            state.timers.insert(key, cx.waker().clone());
            Poll::Pending
        }))
    }
}
