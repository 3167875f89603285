//! The node's memory allocator, and giving freed memory back to the kernel.
//!
//! Small allocations come from mimalloc (v3), large buffers from glibc, which maps each one
//! and unmaps it when freed ([`NodeAllocator`]).
//!
//! - Small ones: under a steady write load, glibc's malloc and free were about 12% of a
//!   3-node cluster's CPU (`perf`, 64 clients, `cargo bench --bench vs_etcd`): the state store
//!   allocates a buffer for each page it touches, and every write's buffers cross threads
//!   (received on one, logged and applied on others). With this allocator, cohort's CPU per
//!   write was 1.17, 1.13 and 1.15 times etcd's in three runs, against 1.18, 1.34 and 1.25
//!   with glibc's, and its throughput 0.90-0.93 times etcd's against 0.79-0.88 (both builds
//!   in each round, in turn under one generator: `COHORT_NODE_BINARY`). The machine's noise
//!   is about as large as the gain: take it as about 9% of the CPU per write.
//! - Large ones (`LARGE_BYTES` and up: an upload's 1 MiB pieces, copied several times on
//!   their way, on different threads): from mimalloc, a 256 MiB upload took each node's RSS
//!   74-78 MiB above idle (`cargo bench --bench objects`; the goal is at most 64); mapped by
//!   glibc, as they were before mimalloc, 54-58 MiB. Upload and download rates were the same
//!   as with glibc alone, within the machine's noise.
//!
//! The price is memory a node keeps: at 1,000 partitions (`cargo bench --bench idle`), a node
//! started at 18 MiB of RSS instead of 13, and its RSS per replica, quiesced or unloaded, was
//! the same within the noise; after a write burst (`cargo bench --bench state`, 256 MiB) each
//! node's RSS had grown by 26-34% of what it wrote instead of 22-28%.
//!
//! mimalloc hands freed pages back to the kernel itself, a second after they were freed, but
//! only when the allocator runs on the thread that freed them or on a collection. An idle
//! node's threads sleep, so the heap trimmer below collects after what frees memory in bulk.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// Allocations at least this large are glibc's, which maps them (`tune_allocator`).
const LARGE_BYTES: usize = 1024 * 1024;

/// mimalloc below `LARGE_BYTES`, glibc from there. Which one freed memory goes back to is
/// decided by its layout's size, which is the size it was allocated with. It counts the bytes
/// allocated and not freed ([`heap_in_use_bytes`]): mimalloc keeps no such figure outside its
/// debug builds.
struct NodeAllocator;

/// Bytes allocated less bytes freed, in shards: a thread adds to its own shard, so that counting
/// is an uncontended atomic add rather than every thread's writes to one cache line. A shard
/// can go below zero (memory freed by another thread than allocated it); the sum cannot.
static IN_USE_BYTES: [Shard; SHARDS] = [const { Shard(AtomicIsize::new(0)) }; SHARDS];
const SHARDS: usize = 32;

#[repr(align(128))] // a shard per pair of cache lines: no false sharing with its neighbours
struct Shard(AtomicIsize);

/// This thread's shard. Threads take shards in turn as they first count.
fn shard() -> &'static AtomicIsize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // const-initialised and without drop: reading it never allocates.
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let index = INDEX.with(|index| {
        if index.get() == usize::MAX {
            index.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        index.get()
    });
    &IN_USE_BYTES[index].0
}

fn count(bytes: usize, allocated: bool) {
    let bytes = bytes as isize;
    shard().fetch_add(if allocated { bytes } else { -bytes }, Ordering::Relaxed);
}

/// `block`, counted as `size_bytes` allocated if the allocation succeeded.
fn counted(block: *mut u8, size_bytes: usize) -> *mut u8 {
    if !block.is_null() {
        count(size_bytes, true);
    }
    block
}

#[global_allocator]
static ALLOCATOR: NodeAllocator = NodeAllocator;

// SAFETY: each call goes to the allocator that `layout.size()` selects, and a block always
// returns to the one it came from: dealloc and realloc receive the layout it was allocated
// with. A realloc across `LARGE_BYTES` moves the block between them by copying.
unsafe impl GlobalAlloc for NodeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let block = unsafe {
            match layout.size() < LARGE_BYTES {
                true => mimalloc::MiMalloc.alloc(layout),
                false => System.alloc(layout),
            }
        };
        counted(block, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let block = unsafe {
            match layout.size() < LARGE_BYTES {
                true => mimalloc::MiMalloc.alloc_zeroed(layout),
                false => System.alloc_zeroed(layout),
            }
        };
        counted(block, layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `layout` is the one `ptr` was allocated with, so it selects the same allocator.
        unsafe {
            match layout.size() < LARGE_BYTES {
                true => mimalloc::MiMalloc.dealloc(ptr, layout),
                false => System.dealloc(ptr, layout),
            }
        }
        count(layout.size(), false);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (small, new_small) = (layout.size() < LARGE_BYTES, new_size < LARGE_BYTES);
        if small != new_small {
            // Across allocators: a new block of the caller's alignment (`new_size` is valid for
            // it, by realloc's contract), the smaller size's bytes copied, the old block freed
            // with the layout it was allocated with. alloc and dealloc count both.
            // SAFETY: as just said; `ptr` holds `layout.size()` bytes and `new` `new_size`.
            unsafe {
                let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                return new;
            }
        }
        // SAFETY: within one allocator, its own realloc, under the caller's contract.
        let moved = unsafe {
            match small {
                true => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
                false => System.realloc(ptr, layout, new_size),
            }
        };
        if !moved.is_null() {
            count(layout.size(), false);
        }
        counted(moved, new_size)
    }
}

/// Sets the process up for its allocations; first thing in `main`, before anything faults in
/// mimalloc's memory. Answers what it could not do, for the caller to log once it can.
/// - No transparent huge pages (where the kernel makes them for every mapping, as here):
///   mimalloc's regions are aligned to them, and an idle node's RSS was 26 MiB with them, 15
///   without (20 when a node turned them off only as it started, after its first allocations).
/// - glibc maps every block from `LARGE_BYTES` (all it is given) and unmaps it when freed,
///   rather than raising its mmap threshold whenever such a block is freed and keeping the
///   next ones in its heaps.
pub fn tune_allocator() -> Vec<&'static str> {
    let mut failed = Vec::new();
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        failed.push("cannot turn off transparent huge pages; the node's RSS may be larger");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = i32::try_from(LARGE_BYTES).expect("the threshold fits glibc's parameter");
        // SAFETY: mallopt only changes the allocator's parameters; it takes its own locks.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) } != 1 {
            failed.push("cannot set glibc's mmap threshold; large buffers may stay with the process longer");
        }
    }
    failed
}

/// Starts, once per process, a thread of its own (a collection never holds up the runtime's
/// threads) that has mimalloc hand freed pages back to the kernel, checking every second. A
/// forced collection walks all of mimalloc's arenas, so it collects only after what frees
/// memory in bulk, and once more a second after it stops:
/// - a burst that grew the resident set by `TRIM_GROWTH_BYTES` since the last collection (a
///   restart's recovery, a catch-up, large writes). It is collected once it stops growing, and
///   every `BURST_TRIM_INTERVAL` while it goes on, not every second: each collection hands back
///   pages that the burst's next second faults in again;
/// - `TRIM_UNLOADS` replicas unloaded since the last collection (`unloads` counts them; each
///   frees about 5 KiB). Their memory never shows as growth.
///
/// Where there is no `/proc/self/statm` to tell growth, it collects every second.
pub fn spawn_heap_trimmer(unloads: impl Fn() -> u64 + Send + 'static) {
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
                // A collection before a burst is over is followed by one more once it stops:
                // what it frees at its end would otherwise stay resident until the next one.
                if !(burst_over || long_burst || unloaded || trailing) {
                    continue;
                }
                trailing = long_burst || unloaded;
                // SAFETY: mi_collect takes the allocator's own locks; it is safe to call from
                // any thread at any time.
                unsafe { libmimalloc_sys::mi_collect(true) };
                after_last_trim = resident_bytes().unwrap_or(0);
                at_last_check = after_last_trim;
                last_trim = std::time::Instant::now();
                unloads_at_last_trim = unloads();
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the heap trimmer; freed memory stays with the process longer");
        }
    });
}

/// This process's resident set in bytes, from `/proc/self/statm` (its second field, in pages);
/// `None` where there is no such file.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_bytes).ok()?)
}

/// Bytes the node has allocated and not freed (as asked for: what the allocators add for
/// alignment and bookkeeping is not in it). Its resident set is larger by the binary, thread
/// stacks, and freed pages not yet handed back.
pub fn heap_in_use_bytes() -> u64 {
    // Shards read one after another may have seen a block's free and not its allocation.
    let sum: isize = IN_USE_BYTES.iter().map(|shard| shard.0.load(Ordering::Relaxed)).sum();
    u64::try_from(sum).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Other tests allocate and free on their threads meanwhile; blocks this large dwarf them.
    const BIG_BYTES: usize = 256 << 20;
    const SLACK_BYTES: u64 = 64 << 20;

    #[test]
    fn heap_in_use_counts_what_is_allocated_until_it_is_freed() {
        let before = heap_in_use_bytes();
        // Never written: the kernel maps it without backing it, so it costs no memory.
        let block: Vec<u8> = Vec::with_capacity(BIG_BYTES);
        let during = heap_in_use_bytes();
        assert!(during >= before + BIG_BYTES as u64 - SLACK_BYTES, "{before} -> {during}");
        drop(block);
        let after = heap_in_use_bytes();
        assert!(after + BIG_BYTES as u64 - SLACK_BYTES <= during, "{during} -> {after}");
    }

    #[test]
    fn a_block_keeps_its_bytes_as_it_grows_and_shrinks_across_allocators() {
        let mut block: Vec<u8> = (0..1000u32).map(|n| n as u8).collect();
        for size in [LARGE_BYTES - 1, LARGE_BYTES, 3 * LARGE_BYTES] {
            block.reserve_exact(size - block.len());
            assert!(block.capacity() >= size);
            assert!(block.iter().enumerate().all(|(n, byte)| *byte == n as u8), "grown to {size}");
        }
        block.shrink_to_fit();
        assert!(block.capacity() < LARGE_BYTES, "{}", block.capacity());
        assert!(block.iter().enumerate().all(|(n, byte)| *byte == n as u8), "shrunk back");
    }
}
