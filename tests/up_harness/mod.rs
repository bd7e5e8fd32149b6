//! `memlog up` as a test fixture, shared by the tests of `memlog up` and of the operator commands
//! that read the cluster it runs (`memlog status`): consecutive free ports, the real binary
//! started in a temp dir, its `cluster.json` read back, and every process it recorded killed by
//! pid when the guard drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::ports::free_port_range;
use crate::common::{free_port, memlog_bin};

/// The shape of a cluster: shards, replicas per shard, journal nodes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub shards: usize,
    pub replicas: usize,
    pub journal_nodes: usize,
    /// `--snapshot-every`.
    pub snapshot_every: u64,
}

impl Shape {
    pub fn redis_nodes(&self) -> usize {
        self.shards * (1 + self.replicas)
    }
}

/// `memlog up` as a child: killed by pid on drop, its stdout lines forwarded to a channel.
pub struct Up {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub dir: PathBuf,
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
pub struct Ports {
    pub proxy: u16,
    pub metrics: u16,
    pub redis_base: u16,
    pub journal_base: u16,
}

pub fn ports(shape: Shape) -> Ports {
    let redis_count = shape.redis_nodes() as u16;
    // One range for both, so the journal ports cannot overlap the Redis ones.
    let redis_base = free_port_range(redis_count + shape.journal_nodes as u16);
    Ports { proxy: free_port(), metrics: free_port(), redis_base, journal_base: redis_base + redis_count }
}

pub fn up_command(dir: &Path, ports: &Ports, shape: Shape) -> Command {
    let mut cmd = Command::new(memlog_bin());
    cmd.arg("up").arg("--dir").arg(dir);
    cmd.args(["--port", &ports.proxy.to_string(), "--metrics-port", &ports.metrics.to_string()]);
    cmd.args(["--shards", &shape.shards.to_string(), "--replicas", &shape.replicas.to_string()]);
    cmd.args(["--redis-base-port", &ports.redis_base.to_string()]);
    cmd.args(["--journal-nodes", &shape.journal_nodes.to_string()]);
    cmd.args(["--journal-base-port", &ports.journal_base.to_string()]);
    cmd.args(["--snapshot-every", &shape.snapshot_every.to_string()]);
    cmd
}

/// Starts `memlog up` and waits for its `ready` line (returned).
pub fn start_up(dir: &Path, ports: &Ports, shape: Shape) -> (Up, String) {
    start_up_with(dir, ports, shape, &[])
}

/// [`start_up`] with more arguments for `memlog up`.
pub fn start_up_with(dir: &Path, ports: &Ports, shape: Shape, extra: &[&str]) -> (Up, String) {
    let mut cmd = up_command(dir, ports, shape);
    cmd.args(extra);
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

/// memlog up's own log and the proxy's, for failure messages.
pub fn up_log(dir: &Path) -> String {
    let mut text = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
    text +=
        &std::fs::read_to_string(dir.join("proxy.log")).map(|l| format!("--- proxy.log ---\n{l}")).unwrap_or_default();
    text
}

pub fn cluster_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).expect("cluster.json written")).unwrap()
}

/// The records of `role` in cluster.json.
pub fn processes_with_role(cluster: &Value, role: &str) -> Vec<Value> {
    cluster["processes"].as_array().expect("processes array").iter().filter(|p| p["role"] == role).cloned().collect()
}

/// Every pid recorded in cluster.json, with its role.
pub fn recorded_pids(cluster: &Value) -> Vec<(String, u32)> {
    cluster["processes"]
        .as_array()
        .expect("processes array")
        .iter()
        .map(|p| (p["role"].as_str().unwrap().to_string(), p["pid"].as_u64().unwrap() as u32))
        .collect()
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').unwrap().1.trim_start().starts_with(['Z', 'X']),
        Err(_) => false,
    }
}

pub fn wait_all_gone(pids: &[(String, u32)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|(_, pid)| alive(*pid)) {
        let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(*pid)).collect();
        assert!(Instant::now() < deadline, "still running {timeout:?} after memlog up ended: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("run redis-cli")
}

/// `redis-cli` straight to a Redis node of the cluster in `dir`, authenticated with the password
/// `memlog up` generated (given in the environment, as `redis-cli` allows, not on its command line),
/// over TLS with the proxy's certificate when `up` ran with `--redis-tls`.
pub fn node_cli(dir: &Path, port: u16, args: &[&str]) -> Output {
    let password = std::fs::read_to_string(dir.join("redis.password")).expect("memlog up wrote redis.password");
    let tls = dir.join("redis-tls");
    let mut cmd = Command::new("redis-cli");
    if tls.join("ca.pem").exists() {
        cmd.arg("--tls").arg("--cacert").arg(tls.join("ca.pem"));
        cmd.arg("--cert").arg(tls.join("proxy.pem")).arg("--key").arg(tls.join("proxy.key"));
    }
    cmd.env("REDISCLI_AUTH", password.trim())
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli")
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `condition` every 20 ms until it holds; panics with `what` (and up's log) after `timeout`.
pub fn wait_until(dir: &Path, timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}\n{}", up_log(dir));
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}
