//! The run's event trace: every fault, operation and safety event, stamped with simulated
//! time. Its hash is the seed's fingerprint: the same seed must give the same hash.

use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inner {
    lines: Vec<String>,
    hasher: Sha256,
    keep: bool,
}

/// Shared by every part of one run.
#[derive(Clone, Default)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

/// The run's trace, for a panic hook: each seed runs in its own process, one run per process.
static CURRENT: Mutex<Option<Trace>> = Mutex::new(None);

/// The hash of the current run's trace so far, if there is a run and its trace is not locked
/// (a panic hook must not wait).
pub fn current_hash() -> Option<String> {
    let trace = CURRENT.try_lock().ok()?.clone()?;
    let inner = match trace.inner.try_lock() {
        Ok(inner) => inner,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    Some(hex::encode(inner.hasher.clone().finalize()))
}

impl Trace {
    /// `keep`: hold every line for printing (replay); otherwise only hash. Becomes the
    /// process's current trace (`current_hash`).
    pub fn new(keep: bool) -> Trace {
        let trace = Trace { inner: Arc::new(Mutex::new(Inner { keep, ..Inner::default() })) };
        *CURRENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(trace.clone());
        trace
    }

    pub fn event(&self, now_ns: u64, line: impl AsRef<str>) {
        let line = format!("{:>7}.{:06} {}", now_ns / 1_000_000_000, (now_ns / 1_000) % 1_000_000, line.as_ref());
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.hasher.update(line.as_bytes());
        inner.hasher.update(b"\n");
        if inner.keep {
            // Printed as it happens, so a run that dies on a failed assertion still shows
            // everything up to it.
            println!("{line}");
            inner.lines.push(line);
        }
    }

    pub fn hash_hex(&self) -> String {
        let inner = self.inner.lock().expect("not poisoned");
        hex::encode(inner.hasher.clone().finalize())
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.lock().expect("not poisoned").lines.clone()
    }
}

/// Simulated time now, in nanoseconds since the simulation began.
pub fn now_ns() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now().duration_since(start).as_nanos() as u64
}
