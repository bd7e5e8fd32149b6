//! `memlog up` end to end: the real binary starts real Redis shards with replicas and the real
//! proxy, prints its endpoint, serves through it, and leaves no process behind, whether it is
//! stopped with SIGTERM or killed with `kill -9`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::resp::{self, Conn};
use common::{free_port, memlog_bin};
use serde_json::Value;

const SHARDS: usize = 3;
const REPLICAS: usize = 1;
const JOURNAL_NODES: usize = 3;

/// `memlog up` as a child: killed by pid on drop, its stdout lines forwarded to a channel.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: PathBuf,
}

impl Drop for Up {
    /// Kills up and, should a failing test have left any, the children cluster.json records.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(bytes) = std::fs::read(self.dir.join("cluster.json")) {
            if let Ok(cluster) = serde_json::from_slice::<Value>(&bytes) {
                for (_, pid) in recorded_pids(&cluster).into_iter().filter(|(_, pid)| alive(*pid)) {
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
    }
}

/// Ports of one `memlog up`: proxy, metrics, and the first of consecutive free Redis and journal ports.
struct Ports {
    proxy: u16,
    metrics: u16,
    redis_base: u16,
    journal_base: u16,
}

/// A run of `count` consecutive ports that are free right now: random bases, probed.
fn free_port_range(count: u16) -> u16 {
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let seed = clock ^ (std::process::id() as u64) << 32 ^ free_port() as u64;
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for _ in 0..200 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // Below the usual ephemeral range (32768+), so other tests' free_port() rarely lands here.
        let base = 20_000 + (state >> 33) as u16 % 12_000;
        if (base..base + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {count} consecutive free ports found");
}

fn ports() -> Ports {
    let redis_count = (SHARDS * (1 + REPLICAS)) as u16;
    // One range for both, so the journal ports cannot overlap the Redis ones.
    let redis_base = free_port_range(redis_count + JOURNAL_NODES as u16);
    Ports { proxy: free_port(), metrics: free_port(), redis_base, journal_base: redis_base + redis_count }
}

fn up_command(dir: &Path, ports: &Ports) -> Command {
    let mut cmd = Command::new(memlog_bin());
    cmd.arg("up").arg("--dir").arg(dir);
    cmd.args(["--port", &ports.proxy.to_string(), "--metrics-port", &ports.metrics.to_string()]);
    cmd.args(["--shards", &SHARDS.to_string(), "--replicas", &REPLICAS.to_string()]);
    cmd.args(["--redis-base-port", &ports.redis_base.to_string()]);
    cmd.args(["--journal-nodes", &JOURNAL_NODES.to_string(), "--journal-base-port", &ports.journal_base.to_string()]);
    cmd
}

/// Starts `memlog up` and waits for its `ready` line (returned).
fn start_up(dir: &Path, ports: &Ports) -> (Up, String) {
    let mut cmd = up_command(dir, ports);
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(std::fs::File::create(dir.join("up.log")).unwrap()));
    let mut child = cmd.spawn().expect("start memlog up");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut up = Up { child, lines, dir: dir.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match up.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("ready") => return (up, line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = up.child.wait().unwrap();
                panic!("memlog up exited with {status} before ready:\n{}", up_log(dir));
            }
        }
        assert!(Instant::now() < deadline, "memlog up not ready after 90s:\n{}", up_log(dir));
    }
}

fn up_log(dir: &Path) -> String {
    let mut text = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
    text +=
        &std::fs::read_to_string(dir.join("proxy.log")).map(|l| format!("--- proxy.log ---\n{l}")).unwrap_or_default();
    text
}

fn cluster_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).expect("cluster.json written")).unwrap()
}

/// Every pid recorded in cluster.json, with its role.
fn recorded_pids(cluster: &Value) -> Vec<(String, u32)> {
    cluster["processes"]
        .as_array()
        .expect("processes array")
        .iter()
        .map(|p| (p["role"].as_str().unwrap().to_string(), p["pid"].as_u64().unwrap() as u32))
        .collect()
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').unwrap().1.trim_start().starts_with(['Z', 'X']),
        Err(_) => false,
    }
}

fn wait_all_gone(pids: &[(String, u32)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|(_, pid)| alive(*pid)) {
        let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(*pid)).collect();
        assert!(Instant::now() < deadline, "still running {timeout:?} after memlog up ended: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redis_cli(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("run redis-cli")
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Checks the cluster `memlog up` reports is the one it started, and serves through the proxy.
fn check_running_cluster(dir: &Path, ports: &Ports, ready: &str) -> Vec<(String, u32)> {
    assert!(ready.contains(&format!("redis://127.0.0.1:{}", ports.proxy)), "ready line: {ready}");
    assert!(ready.contains(&format!("http://127.0.0.1:{}/metrics", ports.metrics)), "ready line: {ready}");
    let cluster = cluster_json(dir);
    assert_eq!(cluster["state"], "running");
    let pids = recorded_pids(&cluster);
    let count = |role: &str| pids.iter().filter(|(r, _)| r == role).count();
    assert_eq!(
        (count("journal"), count("primary"), count("replica"), count("proxy")),
        (JOURNAL_NODES, SHARDS, SHARDS * REPLICAS, 1),
        "{pids:?}"
    );
    assert!(ready.contains(&format!("journal {JOURNAL_NODES} nodes")), "ready line: {ready}");
    for (role, pid) in &pids {
        assert!(alive(*pid), "{role} pid {pid} from cluster.json is not running");
    }
    let config = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    assert!(config.contains(&format!("127.0.0.1:{}", ports.redis_base)), "proxy.toml:\n{config}");
    assert!(config.contains("[journal]"), "proxy.toml:\n{config}");
    assert!(config.contains(&format!("\"127.0.0.1:{}\"", ports.journal_base)), "proxy.toml:\n{config}");
    let metadata = format!("file:{}", dir.canonicalize().unwrap().join("metadata.json").display());
    assert!(config.contains(&metadata), "proxy.toml must name {metadata}:\n{config}");

    // Each replica really replicates its primary (stock replication set up by `up`).
    for process in cluster["processes"].as_array().unwrap().iter().filter(|p| p["role"] == "replica") {
        let port = process["port"].as_u64().unwrap() as u16;
        let info = stdout_of(&redis_cli(port, &["INFO", "replication"]));
        assert!(info.contains("role:slave"), "{info}");
        assert!(info.contains(&format!("master_port:{}", process["replica_of"])), "{info}");
    }

    // Writes and reads through the proxy, spread over every shard by their keys.
    for i in 0..30 {
        let key = format!("up-test-{i}");
        let set = redis_cli(ports.proxy, &["SET", &key, &format!("v{i}")]);
        assert_eq!(stdout_of(&set), "OK", "SET via proxy: {set:?}\n{}", up_log(dir));
        assert_eq!(stdout_of(&redis_cli(ports.proxy, &["GET", &key])), format!("v{i}"));
    }
    let mut keys_on_primaries = 0;
    for process in cluster["processes"].as_array().unwrap().iter().filter(|p| p["role"] == "primary") {
        let port = process["port"].as_u64().unwrap() as u16;
        let keys = stdout_of(&redis_cli(port, &["--scan", "--pattern", "up-test-*"]));
        let n = keys.lines().count();
        assert!(n > 0, "shard on port {port} got none of 30 keys");
        keys_on_primaries += n;
    }
    assert_eq!(keys_on_primaries, 30);
    pids
}

#[test]
fn up_serves_then_sigterm_stops_every_child() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let (mut up, ready) = start_up(tmp.path(), &ports);
    let pids = check_running_cluster(tmp.path(), &ports, &ready);

    // `memlog status` agrees.
    let status = Command::new(memlog_bin()).arg("status").arg("--dir").arg(tmp.path()).output().unwrap();
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "memlog status: {report}");
    assert_eq!(
        report.lines().filter(|l| l.contains("journal node") && l.ends_with("ok")).count(),
        JOURNAL_NODES,
        "{report}"
    );

    // A second `up` on the same --dir is refused while this one runs.
    let second = up_command(tmp.path(), &ports).output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&format!("another `memlog up` (pid {}) is running", up.child.id())), "{stderr}");

    // A child that dies while up runs is reported (not restarted yet), and up keeps running.
    let cluster = cluster_json(tmp.path());
    let victim = cluster["processes"].as_array().unwrap().iter().find(|p| p["role"] == "replica").unwrap();
    let victim_name = victim["name"].as_str().unwrap().to_string();
    unsafe { libc::kill(victim["pid"].as_u64().unwrap() as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up_log(tmp.path()).lines().any(|l| l.contains(&victim_name) && l.contains("child exited")) {
        assert!(Instant::now() < deadline, "death of {victim_name} not reported:\n{}", up_log(tmp.path()));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(up.child.try_wait().unwrap().is_none(), "memlog up must survive a child's death");
    assert_eq!(stdout_of(&redis_cli(ports.proxy, &["GET", "up-test-0"])), "v0", "proxy still serves");

    unsafe { libc::kill(up.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "memlog up did not exit after SIGTERM:\n{}", up_log(tmp.path()));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "memlog up exited with {status}:\n{}", up_log(tmp.path()));
    // up reaped its children before exiting, so they are gone now, not eventually.
    let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(*pid)).collect();
    assert!(left.is_empty(), "still running after a clean stop: {left:?}");
    assert_eq!(cluster_json(tmp.path())["state"], "stopped");

    let status = Command::new(memlog_bin()).arg("status").arg("--dir").arg(tmp.path()).output().unwrap();
    assert!(!status.status.success(), "memlog status must fail for a stopped cluster");
}

#[test]
fn kill_9_of_up_takes_every_child_down() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let (mut up, _ready) = start_up(tmp.path(), &ports);
    let pids = recorded_pids(&cluster_json(tmp.path()));
    assert_eq!(pids.len(), JOURNAL_NODES + SHARDS * (1 + REPLICAS) + 1);
    assert!(pids.iter().all(|(_, pid)| alive(*pid)));

    kill_9_and_wait(&mut up, &pids);
    for port in ports.redis_base..ports.journal_base + JOURNAL_NODES as u16 {
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} still taken after kill -9");
    }
}

/// SIGKILL of `memlog up`: it gets no chance to stop anything itself; its children die with it.
fn kill_9_and_wait(up: &mut Up, pids: &[(String, u32)]) {
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    wait_all_gone(pids, Duration::from_secs(10));
}

#[test]
fn up_again_after_kill_9_of_everything_brings_back_every_acknowledged_write() {
    const KEYS: usize = 1_000;
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let (mut up, _ready) = start_up(tmp.path(), &ports);
    let proxy = format!("127.0.0.1:{}", ports.proxy).parse().unwrap();
    let mut client = Conn::connect(proxy, Duration::from_secs(20)).unwrap();
    for i in 0..KEYS {
        client.queue(&["SET".to_string(), format!("durable:{i}"), format!("value-{i}")]);
    }
    client.flush().unwrap();
    for (i, reply) in client.read_n(KEYS).unwrap().into_iter().enumerate() {
        assert_eq!(reply, resp::Value::Simple("OK".into()), "SET durable:{i}\n{}", up_log(tmp.path()));
    }
    drop(client);
    let pids = recorded_pids(&cluster_json(tmp.path()));
    kill_9_and_wait(&mut up, &pids);
    // The stale cluster.json (state running, every pid dead) must not block the re-run.
    assert_eq!(cluster_json(tmp.path())["state"], "running");

    let (_up, ready) = start_up(tmp.path(), &ports);
    assert!(ready.contains("journal 3 nodes"), "{ready}");
    let mut client = Conn::connect(proxy, Duration::from_secs(20)).unwrap();
    for i in 0..KEYS {
        client.queue(&["GET".to_string(), format!("durable:{i}")]);
    }
    client.flush().unwrap();
    let lost: Vec<String> = client
        .read_n(KEYS)
        .unwrap()
        .into_iter()
        .enumerate()
        .filter(|(i, got)| got.text() != format!("value-{i}"))
        .map(|(i, got)| format!("durable:{i} = {got:?}"))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {KEYS} acknowledged writes lost, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        up_log(tmp.path())
    );
}

#[test]
fn missing_redis_server_is_a_clear_error_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let out = up_command(tmp.path(), &ports).arg("--redis-server").arg("/nonexistent/redis-server").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redis-server not found: install it (apt-get install redis-server) or pass --redis-server"),
        "{stderr}"
    );
    assert!(!tmp.path().join("cluster.json").exists(), "nothing may be started");
}

#[test]
fn a_child_that_fails_to_start_is_reported_with_its_log_and_the_others_are_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    // A "redis-server" that starts, complains and exits: up must say so, show the complaint,
    // stop the nodes it already started and exit non-zero.
    let fake = tmp.path().join("broken-redis-server");
    std::fs::write(&fake, "#!/bin/sh\necho \"broken on purpose: $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = up_command(tmp.path(), &ports).arg("--redis-server").arg(&fake).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to start: exited with"), "{stderr}");
    assert!(stderr.contains("broken on purpose: --port"), "log tail missing: {stderr}");
    let cluster = cluster_json(tmp.path());
    assert_eq!(cluster["state"], "stopped");
    wait_all_gone(&recorded_pids(&cluster), Duration::from_secs(5));
}
