//! What the side-by-side benches share: run settings from the environment, processes on free
//! loopback ports killed by pid on drop, `redis-benchmark --csv` runs and their parsing, and
//! interleaved rounds reduced to medians (a timing on a shared machine is noise; the ratio of
//! interleaved runs is not).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[path = "../../tests/common/ports.rs"]
pub mod ports;

/// Clients redis-benchmark keeps open (`-c`).
pub const CLIENTS: u32 = 50;
/// Value size in bytes (`-d`).
pub const VALUE_SIZE: u32 = 100;
/// Distinct keys (`-r`), so GETs hit the keys the SET runs wrote.
pub const KEYSPACE: u32 = 100_000;
/// redis-server arguments for a node without persistence of its own.
pub const NO_PERSISTENCE: &[&str] = &["--save", "", "--appendonly", "no"];
/// How long a started process may take to answer PING (the proxy replays the journal first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a bench run was asked to behave: `MEMLOG_BENCH_QUICK=1` for a short smoke run,
/// `MEMLOG_BENCH_ROUNDS=N` interleaved rounds (default 3: a median needs three).
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
}

impl Settings {
    /// Reads the settings from the environment; a malformed round count is refused, not ignored.
    pub fn from_env() -> Result<Settings> {
        let quick = std::env::var_os("MEMLOG_BENCH_QUICK").is_some_and(|v| v != "0");
        let rounds = match std::env::var("MEMLOG_BENCH_ROUNDS") {
            Ok(v) => {
                v.parse().ok().filter(|&n: &usize| n > 0).context("MEMLOG_BENCH_ROUNDS must be a positive number")?
            }
            Err(_) => 3,
        };
        Ok(Settings { quick, rounds })
    }
}

/// One redis-benchmark test at a pipeline depth.
pub struct Workload {
    pub test: &'static str,
    pub pipeline: u32,
}

/// A server a workload runs against, with the request count that gives it a few seconds of load.
pub struct Target<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    pub requests: u64,
    /// The processes that serve it, whose CPU time each run charges to it (may be empty).
    pub pids: Vec<u32>,
    /// How redis-benchmark connects and logs in.
    pub client: Client<'a>,
}

/// How redis-benchmark reaches a target.
#[derive(Clone, Copy, Default)]
pub struct Client<'a> {
    /// The user and password it logs in with (`--user`, `-a`); none: `default`.
    pub login: Option<(&'a str, &'a str)>,
    /// TLS, the server's certificate checked against this CA file (`--tls --cacert`); none: plain.
    pub tls_ca: Option<&'a Path>,
}

/// What redis-benchmark's `--csv` line reports for one run, and the CPU its target spent.
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time (user + system, every thread) of the target's processes per request, in µs;
    /// 0 when the target names no process.
    pub cpu_us_per_request: f64,
    /// CPU time of the load generator (redis-benchmark, or the bench's own client threads) per
    /// request, in µs: it shares the machine's two cores with the target.
    pub client_cpu_us_per_request: f64,
    /// The share of the machine's CPU time (all cores) that was busy during the run, 0 to 1;
    /// near 1, the run was bound by CPU rather than by waiting (an fsync, a round trip).
    pub machine_busy: f64,
}

/// The whole machine's CPU time so far, all cores, from the `cpu` line of `/proc/stat`
/// (proc(5)): what was busy, and everything.
#[derive(Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn now() -> Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().next().filter(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
        let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
        // counted in user, so the first eight make the total.
        let total: u64 = ticks.iter().take(8).sum();
        let waiting = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Ok(MachineCpu { busy: total - waiting, total })
    }

    /// The share of CPU time busy between `earlier` and this reading.
    pub fn busy_since(&self, earlier: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// CPU seconds (user + system) of this process (`RUSAGE_SELF`, every thread: the bench's own
/// load clients) or of its children waited for (`RUSAGE_CHILDREN`: the redis-benchmark runs),
/// from getrusage(2).
pub fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which lives on this stack frame.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU seconds (user + system, all threads) `pids` have used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    let ticks_per_second = clock_ticks_per_second()?;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
        // Fields after the command name (which may hold spaces, hence the last ')'): utime is
        // the 14th field of the line, stime the 15th (proc(5)).
        let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    }
    Ok(ticks as f64 / ticks_per_second)
}

fn clock_ticks_per_second() -> Result<f64> {
    let output = Command::new("getconf").arg("CLK_TCK").output().context("cannot run getconf")?;
    String::from_utf8_lossy(&output.stdout).trim().parse().context("getconf CLK_TCK is not a number")
}

/// A child process killed (SIGKILL, by pid) and reaped when dropped, so a failed bench leaves
/// nothing behind.
pub struct Guard(Child);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback address, below the ephemeral range (see `tests/common/ports.rs`).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports::free_port()))
}

/// A stock redis-server on `addr` with its files in `dir`, started with `args` (its persistence).
pub fn start_redis(addr: SocketAddr, dir: &Path, args: &[&str]) -> Result<Guard> {
    std::fs::create_dir_all(dir)?;
    let child = Command::new("redis-server")
        .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    let mut guard = Guard(child);
    wait_for_pong(addr, &mut guard)?;
    Ok(guard)
}

/// `memlog <args>` (the binary cargo built for this bench). The proxy reads `MEMLOG_…`
/// variables as config keys; ours (`MEMLOG_BENCH_…`) are not meant for it, so none is passed on.
#[allow(dead_code)] // used by the benches that start whole clusters (durable, import)
pub fn memlog(args: &[&str]) -> Command {
    memlog_from(Path::new(env!("CARGO_BIN_EXE_memlog")), args)
}

/// `memlog <args>` from the binary `bin` (another build, for an A/B), environment as [`memlog`].
pub fn memlog_from(bin: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin);
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MEMLOG_") {
            command.env_remove(name);
        }
    }
    command
}

/// Starts `command` with its stdout and stderr appended to the file `log`.
pub fn spawn_logged(mut command: Command, log: &Path) -> Result<Guard> {
    let log = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    Ok(Guard(child))
}

/// `memlog proxy --config <config>` listening on `addr`, logging to `log`; returns once it
/// answers PING (with the log in the error if it never does).
#[allow(dead_code)] // used by the benches that start whole clusters (durable, import)
pub fn start_proxy(config: &Path, addr: SocketAddr, log: &Path) -> Result<Guard> {
    start_proxy_from(Path::new(env!("CARGO_BIN_EXE_memlog")), config, addr, log)
}

/// [`start_proxy`] with the binary `bin`.
pub fn start_proxy_from(bin: &Path, config: &Path, addr: SocketAddr, log: &Path) -> Result<Guard> {
    let mut command = memlog_from(bin, &["proxy", "--config"]);
    command.arg(config);
    let mut guard = spawn_logged(command, log)?;
    wait_for_pong(addr, &mut guard)
        .with_context(|| format!("proxy log:\n{}", std::fs::read_to_string(log).unwrap_or_default()))?;
    Ok(guard)
}

/// `memlog proxy` (no journal: routing only) in front of the one Redis at `redis`, with `extra`
/// TOML (e.g. `[[users]]` tables) in its config, written to `dir`.
pub fn start_routing_proxy(dir: &Path, redis: SocketAddr, extra: &str) -> Result<(SocketAddr, Guard)> {
    start_routing_proxy_from(Path::new(env!("CARGO_BIN_EXE_memlog")), "proxy", dir, redis, extra)
}

/// [`start_routing_proxy`] with the binary `bin`, its files in `dir` named after `name`.
pub fn start_routing_proxy_from(
    bin: &Path,
    name: &str,
    dir: &Path,
    redis: SocketAddr,
    extra: &str,
) -> Result<(SocketAddr, Guard)> {
    let addr = free_addr();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("listen = \"{addr}\"\n{extra}\n[[shards]]\nslots = \"0-16383\"\nprimary = \"{redis}\"\n"),
    )?;
    let guard = start_proxy_from(bin, &config, addr, &dir.join(format!("{name}.log")))?;
    Ok((addr, guard))
}

/// Polls `ready` until it holds; fails if `process` exits first or after [`READY_TIMEOUT`].
pub fn wait_until(what: &str, process: &mut Guard, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        if let Some(status) = process.0.try_wait()? {
            bail!("{what}: the process exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what}: not within {READY_TIMEOUT:?}")
}

/// Polls PING until the server at `addr` (run by `process`) answers `+PONG`.
pub fn wait_for_pong(addr: SocketAddr, process: &mut Guard) -> Result<()> {
    wait_until(&format!("{addr} answering PING"), process, || ping(addr).unwrap_or(false))
}

fn ping(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    Ok(&reply == b"+PONG\r\n")
}

/// Runs `workload` against every target `rounds` times, rotating which target goes first so a
/// drift in machine load hits all alike, prints each run, and returns each target's medians
/// (in the order of `targets`).
pub fn interleaved(workload: &Workload, targets: &[Target], rounds: usize) -> Result<Vec<Measurement>> {
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let runs = interleaved_runs(targets.len(), rounds, |index, round| {
        let target = &targets[index];
        let (cpu_before, client_before, machine_before) =
            (cpu_seconds(&target.pids)?, rusage_seconds(libc::RUSAGE_CHILDREN), MachineCpu::now()?);
        let mut run = redis_benchmark(target.addr, workload, target.requests, target.client)?;
        let requests = target.requests as f64;
        run.cpu_us_per_request = (cpu_seconds(&target.pids)? - cpu_before) * 1e6 / requests;
        run.client_cpu_us_per_request = (rusage_seconds(libc::RUSAGE_CHILDREN) - client_before) * 1e6 / requests;
        run.machine_busy = MachineCpu::now()?.busy_since(&machine_before);
        println!("  {} -P {:<2} round {round} {:<width$} {}", workload.test, workload.pipeline, target.name, run);
        Ok(run)
    })?;
    Ok(runs.iter().map(|r| median_of(r)).collect())
}

/// One redis-benchmark run of `requests` requests against `addr`, connecting as `client` says.
pub fn redis_benchmark(addr: SocketAddr, workload: &Workload, requests: u64, client: Client) -> Result<Measurement> {
    let mut command = Command::new("redis-benchmark");
    if let Some((user, password)) = client.login {
        // A throwaway password of the bench's own proxy (redis-benchmark takes it no other way).
        command.args(["--user", user, "-a", password]);
    }
    if let Some(ca) = client.tls_ca {
        command.arg("--tls").arg("--cacert").arg(ca);
    }
    let output = command
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", workload.test, "-c", &CLIENTS.to_string(), "-P", &workload.pipeline.to_string()])
        .args(["-d", &VALUE_SIZE.to_string(), "-r", &KEYSPACE.to_string(), "-n", &requests.to_string()])
        .args(["--csv", "--precision", "3"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run redis-benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("redis-benchmark failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    }
    parse_csv(&stdout).with_context(|| format!("unexpected redis-benchmark output:\n{stdout}"))
}

/// Reads the data line of redis-benchmark 7's `--csv` output, by column name:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",…`
fn parse_csv(text: &str) -> Result<Measurement> {
    let mut lines = text.lines().filter(|line| line.starts_with('"'));
    let header: Vec<&str> = fields(lines.next().context("no CSV header")?);
    let values: Vec<&str> = fields(lines.next().context("no CSV data line")?);
    let column = |name: &str| -> Result<f64> {
        let index = header.iter().position(|h| *h == name).with_context(|| format!("no column {name}"))?;
        let value = values.get(index).with_context(|| format!("no value for {name}"))?;
        value.parse::<f64>().with_context(|| format!("{name} = {value:?} is not a number"))
    };
    Ok(Measurement {
        ops_per_sec: column("rps")?,
        p50_ms: column("p50_latency_ms")?,
        p99_ms: column("p99_latency_ms")?,
        cpu_us_per_request: 0.0,
        client_cpu_us_per_request: 0.0,
        machine_busy: 0.0,
    })
}

fn fields(line: &str) -> Vec<&str> {
    line.split(',').map(|field| field.trim().trim_matches('"')).collect()
}

/// `run(target, round)` for each of `targets` targets in `rounds` rounds, each round starting one
/// target later, so a machine that speeds up or slows down meets every target alike; each
/// target's runs.
pub fn interleaved_runs<T>(
    targets: usize,
    rounds: usize,
    mut run: impl FnMut(usize, usize) -> Result<T>,
) -> Result<Vec<Vec<T>>> {
    let mut runs: Vec<Vec<T>> = (0..targets).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for offset in 0..targets {
            let index = (round + offset) % targets;
            runs[index].push(run(index, round)?);
        }
    }
    Ok(runs)
}

/// The `p` quantile (0 to 1) of `sorted` latencies, in milliseconds (the nearest rank; 0 for
/// no latencies).
pub fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(rank).copied().unwrap_or_default().as_secs_f64() * 1e3
}

/// The keys a bench's own load writes and reads: a xorshift64 over `0..keys`, so each client
/// (one `seed` each) touches them in its own repeatable order.
pub struct KeyPicker(u64);

impl KeyPicker {
    pub fn new(seed: u64) -> KeyPicker {
        KeyPicker(0x9E37_79B9_7F4A_7C15 ^ seed)
    }

    pub fn next(&mut self, keys: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % keys
    }
}

/// The median of `values` (of an even count: the mean of the middle two).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// The median of each metric on its own (with 2 rounds: their mean).
pub fn median_of(runs: &[Measurement]) -> Measurement {
    let median = |pick: fn(&Measurement) -> f64| median(runs.iter().map(pick).collect());
    Measurement {
        ops_per_sec: median(|m| m.ops_per_sec),
        p50_ms: median(|m| m.p50_ms),
        p99_ms: median(|m| m.p99_ms),
        cpu_us_per_request: median(|m| m.cpu_us_per_request),
        client_cpu_us_per_request: median(|m| m.client_cpu_us_per_request),
        machine_busy: median(|m| m.machine_busy),
    }
}

impl std::fmt::Display for Measurement {
    /// One run's line: throughput, latency, and where the CPU went.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0} ops/s  p50 {:.3}ms  p99 {:.3}ms  cpu {:.1} µs/req  client {:.1} µs/req  machine busy {:.0}%",
            self.ops_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.cpu_us_per_request,
            self.client_cpu_us_per_request,
            self.machine_busy * 100.0
        )
    }
}

/// The most requests per second `target` could serve at the CPU per request it was measured
/// with (its processes plus the load generator) were it to keep every core of the machine busy:
/// an upper bound on its throughput on this machine, whatever it waited for in the run.
pub fn cpu_ceiling(target: &Measurement) -> f64 {
    let cost_us = target.cpu_us_per_request + target.client_cpu_us_per_request;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cost_us == 0.0 {
        return f64::INFINITY;
    }
    cores as f64 * 1e6 / cost_us
}
