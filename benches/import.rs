//! Import throughput, side by side in one run: the same keys (SET of `VALUE_SIZE`-byte values)
//! brought into a fresh memlog cluster (`memlog up`: 3 shards, no replicas, 3 journal nodes,
//! no snapshots) four ways: `redis-cli --pipe` of the commands, `memlog import rdb` of the
//! source's dump.rdb, and the first pass of `memlog import live` from the source in each of its
//! modes: `--mode notifications` (SCAN/DUMP/PTTL, its `copy` phase) and `--mode replication`
//! (PSYNC: the full resync's RDB checked and restored, its `restore` phase). Keys/s and MiB/s of
//! data (key and value bytes) from start to the last key acknowledged, median of the rounds;
//! each round runs the four in a rotated order, each into its own fresh cluster.
//!
//! The mode is always named: the source here allows PSYNC, so the default (`auto`) follows it
//! by replication, whose phases are `check`, `restore`, `sync` and never `copy`. The source
//! starts a full resync at once (`repl-diskless-sync-delay 0`; Redis 7.0 waits 5 s by default
//! for more replicas to attach, which would be most of the replication figure at 20,000 keys).
//!
//! ```text
//! cargo bench --bench import                        # 200,000 keys
//! MEMLOG_BENCH_QUICK=1 cargo bench --bench import   # 20,000 keys
//! MEMLOG_BENCH_ROUNDS=5 cargo bench --bench import  # more rounds (default 3)
//! ```

// This bench uses the settings and process helpers, not the redis-benchmark ones.
#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use support::Settings;

const KEYS: u64 = 200_000;
const QUICK_KEYS: u64 = 20_000;
/// Shards of each target cluster.
const SHARDS: u16 = 3;
const JOURNAL_NODES: u16 = 3;
/// How long `memlog up` may take to stop its children at SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a live import's first pass may take before the bench gives up on it.
const LIVE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy)]
enum Method {
    Pipe,
    Rdb,
    /// `memlog import live --mode <mode>` until the end of the phase that copies the keys.
    Live {
        mode: &'static str,
        first_pass: &'static str,
    },
}

const METHODS: [(Method, &str); 4] = [
    (Method::Pipe, "redis-cli --pipe"),
    (Method::Rdb, "memlog import rdb"),
    (Method::Live { mode: "notifications", first_pass: "copy" }, "import live notifications"),
    (Method::Live { mode: "replication", first_pass: "restore" }, "import live replication"),
];
/// Width of the method column.
const NAME_WIDTH: usize = 25;

fn main() -> Result<()> {
    let Settings { quick, rounds } = Settings::from_env()?;
    let keys = if quick { QUICK_KEYS } else { KEYS };
    let dir = tempfile::tempdir()?;
    let commands = dir.path().join("data.resp");
    let data_bytes = write_commands(&commands, keys)?;
    let source_addr = support::free_addr();
    let source_dir = dir.path().join("source");
    let mut source_args = support::NO_PERSISTENCE.to_vec();
    // Notifications for `--mode notifications`; a full resync without the wait for more replicas.
    source_args.extend(["--notify-keyspace-events", "KEA", "--repl-diskless-sync-delay", "0"]);
    let _source = support::start_redis(source_addr, &source_dir, &source_args)?;
    pipe(source_addr, &commands)?;
    redis_cli(source_addr, &["SAVE"])?;
    let rdb = source_dir.join("dump.rdb");
    println!(
        "{keys} keys ({:.1} MiB of keys and values); commands {:.1} MiB, RDB {:.1} MiB; targets: memlog up \
         ({SHARDS} shards, {JOURNAL_NODES} journal nodes, no replicas); {rounds} rounds, quick={quick}",
        mib(data_bytes),
        mib(std::fs::metadata(&commands)?.len()),
        mib(std::fs::metadata(&rdb)?.len())
    );

    let seconds = support::interleaved_runs(METHODS.len(), rounds, |index, round| {
        let (method, name) = METHODS[index];
        let target = Up::start(&dir.path().join(format!("target-{round}-{index}")))?;
        let started = Instant::now();
        match method {
            Method::Pipe => pipe(target.proxy, &commands)?,
            Method::Rdb => import_rdb(&rdb, target.proxy)?,
            Method::Live { mode, first_pass } => import_live(source_addr, target.proxy, mode, first_pass)?,
        }
        let elapsed = started.elapsed().as_secs_f64();
        let held = redis_cli(target.proxy, &["DBSIZE"])?;
        if held.trim() != keys.to_string() {
            bail!("{name}: memlog holds {held:?} keys, not {keys}");
        }
        println!(
            "  round {round} {name:<NAME_WIDTH$} {:>8.0} keys/s {:>6.2} MiB/s",
            keys as f64 / elapsed,
            mib_per_s(data_bytes, elapsed)
        );
        Ok(elapsed)
    })?;
    println!("\nmedian of {rounds} rounds:");
    for ((_, name), runs) in METHODS.iter().zip(seconds) {
        let median = support::median(runs);
        println!(
            "  {name:<NAME_WIDTH$} {:>8.0} keys/s {:>6.2} MiB/s ({median:.2} s)",
            keys as f64 / median,
            mib_per_s(data_bytes, median)
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    mib(bytes) / seconds.max(1e-6)
}

/// `SET bench:<i> <value>` for every key, as RESP (what `redis-cli --pipe` reads); returns the
/// bytes of keys and values.
fn write_commands(path: &Path, keys: u64) -> Result<u64> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut data = 0;
    for i in 0..keys {
        let key = format!("bench:{i:08}");
        let value = format!("{i:0width$}", width = support::VALUE_SIZE as usize);
        write!(out, "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len())?;
        data += (key.len() + value.len()) as u64;
    }
    out.flush()?;
    Ok(data)
}

fn redis_cli(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .context("cannot run redis-cli")?;
    if !out.status.success() {
        bail!("redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pipe(addr: SocketAddr, commands: &Path) -> Result<()> {
    let out = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "--pipe"])
        .stdin(std::fs::File::open(commands)?)
        .output()
        .context("cannot run redis-cli --pipe")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("errors: 0") {
        bail!("redis-cli --pipe into {addr}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn import_rdb(rdb: &Path, proxy: SocketAddr) -> Result<()> {
    let out = support::memlog(&["import", "rdb", &rdb.display().to_string(), "--to", &format!("redis://{proxy}")])
        .arg("--json")
        .output()?;
    if !out.status.success() {
        bail!("memlog import rdb: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A live import in `mode` until its first pass is done (the last line of its `first_pass`
/// phase), then stopped. A `sync` line before that (the pass this mode does not have, e.g.
/// `copy` in replication mode) or no end within [`LIVE_TIMEOUT`] is an error, not a wait: the
/// import prints a line a second and follows the source until told to stop.
fn import_live(source: SocketAddr, proxy: SocketAddr, mode: &str, first_pass: &str) -> Result<()> {
    let mut child = Killed(
        support::memlog(&[
            "import",
            "live",
            &format!("redis://{source}"),
            "--to",
            &format!("redis://{proxy}"),
            "--mode",
            mode,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?,
    );
    let started = Instant::now();
    let stdout = child.0.stdout.take().context("stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let parsed: serde_json::Value = serde_json::from_str(&line)?;
        if parsed["phase"] == first_pass && parsed["done"] == true {
            // The cut-over signal: it drains and exits 0.
            unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
            let status = child.0.wait()?;
            anyhow::ensure!(status.success(), "memlog import live --mode {mode} exited with {status} at SIGINT");
            return Ok(());
        }
        if parsed["phase"] == "sync" {
            bail!(
                "memlog import live --mode {mode} reached its sync phase without ending a {first_pass:?} phase: {line}"
            );
        }
        if started.elapsed() > LIVE_TIMEOUT {
            bail!("memlog import live --mode {mode}: no end of its {first_pass:?} phase in {LIVE_TIMEOUT:?}: {line}");
        }
    }
    bail!("memlog import live --mode {mode} ended before its first pass did: {:?}", child.0.wait()?)
}

/// A child killed (by pid) if still running when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `memlog up` cluster; stopped by SIGTERM (so it stops its own children) when dropped.
struct Up {
    child: Killed,
    proxy: SocketAddr,
    dir: PathBuf,
}

impl Up {
    fn start(dir: &Path) -> Result<Up> {
        std::fs::create_dir_all(dir)?;
        let proxy = support::free_addr();
        let redis_base = support::ports::free_port_range(SHARDS).to_string();
        let journal_base = support::ports::free_port_range(JOURNAL_NODES).to_string();
        let log = std::fs::File::create(dir.join("up.log"))?;
        let mut command = support::memlog(&["up", "--port", &proxy.port().to_string(), "--no-metrics"]);
        command
            .args(["--shards", &SHARDS.to_string(), "--replicas", "0", "--snapshot-every", "0"])
            .args(["--journal-nodes", &JOURNAL_NODES.to_string()])
            .args(["--redis-base-port", &redis_base, "--journal-base-port", &journal_base])
            .arg("--dir")
            .arg(dir.join("cluster"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = Killed(command.spawn().context("cannot start memlog up")?);
        let up = Up { child, proxy, dir: dir.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while redis_cli(proxy, &["PING"]).map_or(true, |r| r.trim() != "PONG") {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(up.dir.join("up.log")).unwrap_or_default();
                bail!("memlog up in {} did not serve within 60 s:\n{log}", up.dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(up)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
