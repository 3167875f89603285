//! Log benchmark: what a batch costs through cohort's write-ahead log (`LogEngine` append +
//! sync on `FsDisk`, as group commit runs it), beside the same bytes written by the two ways a
//! log can write them, in one run and on one disk, taking turns:
//!
//! - appended past the end of a file, then fdatasync (what cohort's log did before it wrote
//!   its records over zeros prepared ahead of them: each fsync also commits the file system's
//!   journal for the file's new length);
//! - written over blocks already written (zeros), then fdatasync: the floor of a log that
//!   writes in place, which the engine approaches except on the batches that prepare the next
//!   zeros (256 KiB at a time: those pay for writing them).
//!
//! Prints, for batches of 1 and of 64 entries of 1 KiB (a lone client's writes and a loaded
//! node's group commit), p50, p99 and mean microseconds per batch of each, and the engine's
//! ratios to the appends.
//!
//! `cargo bench --bench log` writes 8,000 batches of one entry and 800 of 64 per way (in
//! turns of a tenth each); without `--bench` (as `cargo test --all-targets` runs it) a short
//! smoke run that checks the engine's log reads back.

#[path = "common/log_probe.rs"]
mod log_probe;

use log_probe::{LogProbe, ENTRY_BYTES};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

const TURNS: usize = 10;

/// One way of writing batches, timed per batch.
trait Way {
    fn write_batch(&mut self, entries: usize) -> Duration;
}

/// cohort's log: one `LogWrite` per entry (as many partitions' writes in one group commit).
impl Way for LogProbe {
    fn write_batch(&mut self, entries: usize) -> Duration {
        self.append_sync(entries as u64)
    }
}

/// Raw writes of the engine's bytes per batch, appended or in place.
struct Raw {
    file: std::fs::File,
    in_place: bool,
    offset: u64,
}

impl Raw {
    fn open(path: &Path, in_place: bool, prepared_bytes: u64) -> Raw {
        let mut file =
            std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(true).open(path).unwrap();
        if in_place {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..prepared_bytes.div_ceil(zeros.len() as u64) {
                file.write_all(&zeros).unwrap();
            }
            file.sync_all().unwrap();
        }
        Raw { file, in_place, offset: 0 }
    }
}

impl Way for Raw {
    fn write_batch(&mut self, entries: usize) -> Duration {
        // The engine's bytes for one entry: the entry, its write's and the frame's overhead.
        let bytes = vec![0x5au8; entries * (ENTRY_BYTES + 64)];
        let started = Instant::now();
        if self.in_place {
            self.file.write_all_at(&bytes, self.offset).unwrap();
        } else {
            (&self.file).write_all(&bytes).unwrap();
        }
        // SAFETY: the descriptor is open for the whole call.
        assert_eq!(unsafe { libc::fdatasync(self.file.as_raw_fd()) }, 0, "fdatasync");
        self.offset += bytes.len() as u64;
        started.elapsed()
    }
}

/// p50, p99 and mean of `times`, in microseconds.
fn summary(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().map(|&d| us(d)).sum::<f64>() / times.len() as f64;
    (us(times[times.len() / 2]), us(times[times.len() * 99 / 100]), mean)
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (entries, batches) in [(1usize, if full { 8_000 } else { 200 }), (64, if full { 800 } else { 20 })] {
        let batch_bytes = (entries * (ENTRY_BYTES + 64)) as u64;
        let mut ways: [(&str, Box<dyn Way>); 3] = [
            ("cohort's log", Box::new(LogProbe::open(&dir.path().join(format!("engine-{entries}"))))),
            ("appended + fdatasync", Box::new(Raw::open(&dir.path().join(format!("append-{entries}")), false, 0))),
            (
                "in place + fdatasync",
                Box::new(Raw::open(
                    &dir.path().join(format!("in-place-{entries}")),
                    true,
                    batch_bytes * batches as u64,
                )),
            ),
        ];
        let mut times: [Vec<Duration>; 3] = Default::default();
        for _ in 0..TURNS {
            for (way, (_, writer)) in ways.iter_mut().enumerate() {
                for _ in 0..batches / TURNS {
                    times[way].push(writer.write_batch(entries));
                }
            }
        }
        let [engine, appended, in_place] = times.each_mut().map(|t| summary(t));
        println!("batches of {entries} entr{} of 1 KiB, {batches} per way:", if entries == 1 { "y" } else { "ies" });
        for ((name, _), (p50, p99, mean)) in ways.iter().zip([engine, appended, in_place]) {
            println!("  {name:<22} p50 {p50:7.1} us  p99 {p99:7.1} us  mean {mean:7.1} us");
        }
        println!(
            "  cohort's log / appended: p50 {:.2}x, p99 {:.2}x, mean {:.2}x",
            engine.0 / appended.0,
            engine.1 / appended.1,
            engine.2 / appended.2
        );
        // The engine wrote what it was given: every entry reads back after a reopen.
        drop(ways);
        let recovered = LogProbe::recover(&dir.path().join(format!("engine-{entries}")));
        assert_eq!(recovered.len(), entries, "every partition written is recovered");
        assert!(recovered.values().all(|p| p.entries.len() == batches), "every batch's entries are recovered");
    }
}
