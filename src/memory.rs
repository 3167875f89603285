//! Giving freed heap memory back to the kernel.
//!
//! A node allocates and frees large buffers (objects, log entries, messages) at a high rate.
//! glibc's allocator raises its mmap threshold each time such a buffer is freed, after which they
//! come from its heaps, and a heap keeps the pages of what was freed in it. The node's RSS then
//! reflects its busiest moment, not what it holds. Measured by `cargo bench --bench state`
//! (512 MiB over 100 repositories): each node's RSS grew by 200–250 MiB without trimming, by
//! 90–100 MiB with a trim every second, at the same write rate (pinning the mmap threshold
//! instead cost 15% of it; jemalloc and mimalloc kept as much as glibc did).

/// Buffers at least this large come straight from the kernel and go back to it when freed.
/// An upload's 1 MiB pieces are copied several times on their way (frame, message, log
/// record, apply batch, command), on different threads; from glibc's per-thread heaps, each
/// copy's freed memory stayed with the process until the next trim, and a node's RSS during a
/// 1 GiB upload peaked 90-140 MiB above idle while its live heap never passed 55 MiB
/// (heaptrack). With the threshold, 51-67 MiB above idle (`cargo bench --bench objects`), at a
/// price: mapping and faulting in every such buffer took the upload from about 41 to 33-35
/// MiB/s and range reads from about 300 to 180-210 MiB/s; trimming every 100 ms instead kept
/// the rates but peaked 75-81 MiB above idle. Smaller buffers (objects written whole, up to
/// 1 MiB) keep the heaps, whose reuse the small-write rate depends on.
const MMAP_THRESHOLD_BYTES: i32 = 1024 * 1024;

/// free() gives a heap's top back to the kernel only past this much. Pinning the mmap threshold
/// also pins this one, at glibc's 128 KiB: every write's buffers freed at a heap's top went
/// back to the kernel at once and were faulted in again by the next write (page faults and
/// TLB shootdowns were about 6% of a 3-node cluster's CPU under load, `perf`). The heap
/// trimmer gives the memory back instead, once a burst is over.
const TRIM_THRESHOLD_BYTES: i32 = 64 * 1024 * 1024;

/// Sets the allocator up for the node's buffer sizes, once per process, before it allocates
/// them (see `MMAP_THRESHOLD_BYTES`). Fixing the threshold also stops glibc from raising it
/// whenever such a buffer is freed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; it takes its own locks.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        // SAFETY: as above.
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) };
        if set != 1 || trim != 1 {
            tracing::warn!("cannot set the allocator's mmap threshold; large buffers stay with the process longer");
        }
    }
}

/// Starts, once per process, a thread of its own (a trim never holds up the runtime's threads)
/// that hands the heaps' free pages back to the kernel, checking every second. A trim walks
/// every heap, which costs in proportion to the heap, not to what it frees: with 2,000 idle
/// partitions, trimming every second was over half of an idle node's CPU (`perf`). So it trims
/// only after what frees memory in bulk, and once more a second after it stops: an idle
/// node's heap stays put. Two things free memory in bulk:
/// - a burst that grew the resident set by `TRIM_GROWTH_BYTES` since the last trim (a
///   restart's recovery, a catch-up, large writes). It is trimmed once it stops growing, and
///   every `BURST_TRIM_INTERVAL` while it goes on, not every second: each trim hands back pages
///   that the burst's next second faults in again. Under a steady write load (64 clients,
///   `cargo bench --bench vs_etcd`) whose store grew the resident set by megabytes a second,
///   the kernel zeroing those pages was 5% of the leader's CPU with a trim every second, 1.2%
///   without (`perf`);
/// - `TRIM_UNLOADS` replicas unloaded since the last trim (`unloads` counts them; each frees
///   about 5 KiB). Their memory never shows as growth: on a node restarted with 20,000
///   replicas, which its leaders woke to catch it up and which then unloaded, 86 MiB of the
///   heaps were free and 92 MiB resident, and one trim took the resident set to 63 MiB.
///   (Asking glibc for the heap in use every second instead was three quarters of an idle
///   node's CPU.)
///
/// On other targets it does nothing: their allocators return memory on their own terms.
pub fn spawn_heap_trimmer(unloads: impl Fn() -> u64 + Send + 'static) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
        const BURST_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
        const TRIM_GROWTH_BYTES: u64 = 4 * 1024 * 1024;
        const TRIM_UNLOADS: u64 = 1_000;
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new().name("heap-trim".into()).spawn(move || {
                let mut after_last_trim = 0;
                let mut last_trim = std::time::Instant::now();
                let mut at_last_check = 0;
                let mut unloads_at_last_trim = unloads();
                let mut trailing = false;
                loop {
                    std::thread::sleep(TRIM_INTERVAL);
                    let rss = resident_bytes();
                    let grew = rss.is_none_or(|rss| rss >= after_last_trim + TRIM_GROWTH_BYTES);
                    let growing = rss.is_some_and(|rss| rss >= at_last_check + TRIM_GROWTH_BYTES);
                    at_last_check = rss.unwrap_or(0);
                    let burst_over = grew && !growing;
                    let long_burst = grew && growing && last_trim.elapsed() >= BURST_TRIM_INTERVAL;
                    let unloaded = unloads().saturating_sub(unloads_at_last_trim) >= TRIM_UNLOADS;
                    // A trim before a burst is over is followed by one more once it stops: what
                    // it frees at its end would otherwise stay resident until the next one.
                    // Measured on a node restarted with 20,000 replicas: 90 MiB resident
                    // before that last trim, 62 MiB after.
                    if !(burst_over || long_burst || unloaded || trailing) {
                        continue;
                    }
                    trailing = long_burst || unloaded;
                    // SAFETY: malloc_trim takes the allocator's own locks; it is safe to call from
                    // any thread at any time.
                    unsafe { libc::malloc_trim(0) };
                    after_last_trim = resident_bytes().unwrap_or(0);
                    at_last_check = after_last_trim;
                    last_trim = std::time::Instant::now();
                    unloads_at_last_trim = unloads();
                }
            });
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start the heap trimmer; freed memory stays with the process");
            }
        });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    drop(unloads);
}

/// This process's resident set in bytes, from `/proc/self/statm` (its second field, in pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_bytes).ok()?)
}

/// Bytes the allocator has handed out and not had back (glibc's `mallinfo2`: heap chunks in
/// use plus mapped ones): what the node holds, unlike its resident set, which keeps the pages
/// of freed memory until a trim. It walks the allocator's free lists: a few milliseconds on a
/// fragmented heap, fine for a metrics scrape, not for a loop. `None` on other targets.
pub fn heap_in_use_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics, under its own locks.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
