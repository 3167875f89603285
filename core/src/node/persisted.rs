//! How the group-commit writer tells a partition actor that its writes are durable, without a
//! queue that could fill: a watermark (writes complete in order, so "durable up to ready N"
//! says everything) and a waker.

use crate::persist::PersistError;
use futures::task::AtomicWaker;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// No ready has been persisted yet (ready numbers start at 0, for a creation write).
const NONE: u64 = u64::MAX;

#[derive(Default)]
struct Inner {
    persisted_through: AtomicU64,
    failed: Mutex<Option<PersistError>>,
    waker: AtomicWaker,
}

/// The actor's end and the writer's end share one of these.
#[derive(Clone)]
pub struct PersistSignal {
    inner: Arc<Inner>,
}

/// What changed since the actor last looked.
pub enum PersistEvent {
    DurableThrough(u64),
    Failed(PersistError),
}

impl PersistSignal {
    pub fn new() -> PersistSignal {
        let inner = Inner { persisted_through: AtomicU64::new(NONE), ..Inner::default() };
        PersistSignal { inner: Arc::new(inner) }
    }

    /// Called by the writer, in ready order.
    pub fn persisted(&self, ready_number: u64) {
        let previous = self.inner.persisted_through.swap(ready_number, Ordering::AcqRel);
        assert!(previous == NONE || previous < ready_number, "writes complete in order");
        self.inner.waker.wake();
    }

    pub fn failed(&self, error: PersistError) {
        *self.inner.failed.lock().expect("not poisoned") = Some(error);
        self.inner.waker.wake();
    }

    /// Ready when something is new past `seen` (the last watermark the actor handled).
    pub fn poll_event(&self, seen: &mut u64, cx: &mut Context<'_>) -> Poll<PersistEvent> {
        self.inner.waker.register(cx.waker());
        if let Some(error) = self.inner.failed.lock().expect("not poisoned").take() {
            return Poll::Ready(PersistEvent::Failed(error));
        }
        let through = self.inner.persisted_through.load(Ordering::Acquire);
        if through != NONE && (*seen == NONE || through > *seen) {
            *seen = through;
            return Poll::Ready(PersistEvent::DurableThrough(through));
        }
        Poll::Pending
    }

    pub const NOTHING_SEEN: u64 = NONE;
}
