//! Shared harness of the integration tests: real processes on free loopback ports, each in its
//! own temp dir and killed by pid when its guard drops (never by name, so parallel tests and
//! a developer's own Redis are left alone).
#![allow(dead_code)]

pub mod cluster;
pub mod cluster_tls;
pub mod load;
pub mod pair;
pub mod ports;
pub mod redis_tls;
pub mod resp;

pub use ports::free_port;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `memlog` binary cargo built for this test run.
pub fn memlog_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_memlog"))
}

/// A child process that is killed (SIGKILL, by pid) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    /// Its stdout and stderr, shown when a test fails while it runs.
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the process gets no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGSTOP: the process freezes with its sockets open, as in a gray failure.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let exited = self.child.try_wait();
        if let Ok(None) = exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // The failing test's processes say what they saw (a CI log has nothing else).
            const LINES: usize = 30;
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let state = match exited {
                Ok(Some(status)) => format!("had exited: {status}"),
                _ => "was running".to_string(),
            };
            eprintln!(
                "--- {} ({}, pid {}) {state}; last {LINES} lines of {} ---\n{}",
                self.name,
                self.addr,
                self.child.id(),
                self.log.display(),
                lines[lines.len().saturating_sub(LINES)..].join("\n")
            );
        }
    }
}

/// True if process `pid` itself has a listening TCP socket on `port`: its socket descriptors
/// against the kernel's table of listening sockets. A connect would also succeed when some
/// other process holds the port, and the test would then talk to that process.
fn listens_on(pid: u32, port: u16) -> bool {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `sl local_address rem_address st … inode`; state 0A is LISTEN.
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let local_port = fields[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                sockets.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| sockets.iter().any(|socket| target.as_os_str() == socket.as_str()))
}

/// Waits until something accepts TCP connections on `addr`, or panics after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {addr} after {timeout:?}");
}

/// Starts `cmd` (stdout/stderr to `log`) and waits for it to listen on `addr`.
pub fn spawn_listening(name: &str, mut cmd: Command, addr: SocketAddr, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::from(out.try_clone().unwrap())).stderr(Stdio::from(out)).stdin(Stdio::null());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut proc = Proc { name: name.to_string(), child, addr, log: log.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "{name} exited with {status} before listening; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if listens_on(proc.child.id(), addr.port()) {
            return proc;
        }
        assert!(Instant::now() < deadline, "{name} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stock `redis-server` with no persistence of its own, on a free port.
pub fn spawn_redis(dir: &Path, extra: &[&str]) -> Proc {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node_dir = dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    cmd.arg("--dir").arg(&node_dir);
    cmd.args(extra);
    spawn_listening(&format!("redis-{port}"), cmd, addr, &node_dir.join("redis.log"))
}

/// A journal node (`memlog journal`) with its data in `dir`, on `port` (0 = a free one).
pub fn spawn_journal(dir: &Path, port: u16) -> Proc {
    spawn_journal_with(dir, port, &[])
}

/// `spawn_journal` with more `memlog journal` arguments (the cluster identity is always given).
pub fn spawn_journal_with(dir: &Path, port: u16, args: &[String]) -> Proc {
    let port = if port == 0 { free_port() } else { port };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(memlog_bin());
    cmd.arg("journal").arg("--dir").arg(dir).arg("--listen").arg(addr.to_string()).args(args);
    cmd.args(cluster_tls::journal_args());
    spawn_listening(&format!("journal-{port}"), cmd, addr, &dir.join("journal.log"))
}
