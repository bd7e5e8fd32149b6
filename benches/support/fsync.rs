//! The raw `fdatasync` latency of a directory's disk, printed next to a durable measurement so
//! a run where fsync is free (tmpfs, a disk that lies) shows: shared by the journal and durable
//! benches (each includes this file with `#[path]`).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes appended before each `fdatasync`: a typical journal entry.
pub const RAW_APPEND_BYTES: usize = 1024;

pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
}

pub fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Percentiles { p50: at(0.50), p99: at(0.99) }
}

/// Latency of appending `RAW_APPEND_BYTES` to a file in `dir` and `fdatasync`ing it, as the
/// journal does, `rounds` times.
pub fn raw_fdatasync(dir: &Path, rounds: usize) -> Percentiles {
    std::fs::create_dir_all(dir).unwrap();
    let mut file = std::fs::File::create(dir.join("raw.log")).unwrap();
    let block = vec![7u8; RAW_APPEND_BYTES];
    let samples = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            file.write_all(&block).unwrap();
            file.sync_data().unwrap();
            started.elapsed()
        })
        .collect();
    percentiles(samples)
}
