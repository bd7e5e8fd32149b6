//! Child processes owned by `memlog up`: each one is started in its own process group (so a
//! Ctrl-C in the terminal reaches only `memlog up`, which then stops the children in order) and,
//! on Linux, with `PR_SET_PDEATHSIG(SIGKILL)`, so even a `kill -9` of `memlog up` takes every
//! child down with it. Nothing daemonizes and nothing is left behind.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// How to start one child: the program, its arguments, and the file its stdout and stderr go to.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// A short name for logs and errors, e.g. `redis-7001` or `proxy`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Truncated at start, so its tail explains a failure of this run.
    pub log: PathBuf,
}

/// A child that exited while it was supposed to run.
#[derive(Debug, Clone)]
pub struct ChildExit {
    pub name: String,
    /// The pid that exited: a restarted child has a new one, so a late report of an earlier
    /// instance can be told apart.
    pub pid: u32,
    pub status: ExitStatus,
}

/// A started child: its pid, and a view of its exit status (a reaper task owns the process).
pub struct RunningChild {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl RunningChild {
    /// The exit status once the child has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until the child exits, or `timeout` passes (then `None`).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        // Err: timed out, or the reaper task is gone (then the current value is all there is).
        let _ = tokio::time::timeout(timeout, self.exit.wait_for(Option::is_some)).await;
        self.exit_status()
    }

    /// Sends `signal` unless the child has already been reaped (its pid may then belong to
    /// someone else, so it must not be signalled).
    fn signal(&self, signal: libc::c_int) {
        if self.exit_status().is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGTERM, then SIGKILL if the child has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_exit(grace).await {
            return Some(status);
        }
        tracing::warn!(child = %self.name, "did not exit {grace:?} after SIGTERM; sending SIGKILL");
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(5)).await
    }

    /// The last `lines` lines of the child's log, to explain why it failed.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every child `memlog up` started, in start order. Stopping goes in reverse order (the proxy
/// before the Redis nodes it writes to); dropping kills whatever still runs.
pub struct Children {
    started: Vec<RunningChild>,
    exits_tx: mpsc::UnboundedSender<ChildExit>,
    exits_rx: mpsc::UnboundedReceiver<ChildExit>,
}

impl Children {
    pub fn new() -> Children {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Children { started: Vec::new(), exits_tx, exits_rx }
    }

    pub fn get(&self, name: &str) -> Option<&RunningChild> {
        self.started.iter().find(|c| c.name == name)
    }

    /// Starts `spec` as a child of this process, its log truncated.
    ///
    /// Must be called on the thread that stays alive for as long as `memlog up` runs (the
    /// thread driving `block_on`): Linux delivers the parent-death signal when the thread that
    /// forked the child exits, not only when the whole process does.
    pub fn spawn(&mut self, spec: &ChildSpec) -> io::Result<&RunningChild> {
        self.start(spec, journal_service::private_fs::create(&spec.log)?)
    }

    /// Starts `spec` again in place of its exited instance (same name, same place in the stop
    /// order), appending to its log after `banner` so the earlier instance's last words stay.
    /// Same thread rule as [`Children::spawn`].
    pub fn respawn(&mut self, spec: &ChildSpec, banner: &str) -> io::Result<&RunningChild> {
        if let Some(running) = self.get(&spec.name).filter(|c| c.exit_status().is_none()) {
            return Err(io::Error::other(format!("{} still runs as pid {}", spec.name, running.pid)));
        }
        let mut log = journal_service::private_fs::open_options().create(true).append(true).open(&spec.log)?;
        writeln!(log, "--- {banner} ---")?;
        self.start(spec, log)
    }

    /// Forks and execs `spec` with `log` as its stdout and stderr, and starts its reaper;
    /// replaces an exited child of the same name, else appends.
    fn start(&mut self, spec: &ChildSpec, log: File) -> io::Result<&RunningChild> {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or_else(|| io::Error::other(format!("{} exited at once", spec.name)))?;
        let (exit_tx, exit) = watch::channel(None);
        let exits = self.exits_tx.clone();
        let name = spec.name.clone();
        tokio::spawn(async move {
            // wait() only fails if the child was already reaped, which only this task does.
            if let Ok(status) = child.wait().await {
                let _ = exit_tx.send(Some(status));
                let _ = exits.send(ChildExit { name, pid, status });
            }
        });
        let running = RunningChild { name: spec.name.clone(), pid, log: spec.log.clone(), exit };
        let slot = match self.started.iter().position(|c| c.name == spec.name) {
            Some(index) => {
                self.started[index] = running;
                index
            }
            None => {
                self.started.push(running);
                self.started.len() - 1
            }
        };
        Ok(&self.started[slot])
    }

    /// The next child to exit (in any order). Pending forever if none does.
    pub async fn next_exit(&mut self) -> ChildExit {
        match self.exits_rx.recv().await {
            Some(exit) => exit,
            // Unreachable while `self` holds a sender; pend rather than spin.
            None => std::future::pending().await,
        }
    }

    /// Stops every child, newest first, each with SIGTERM then SIGKILL after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        for child in self.started.iter_mut().rev() {
            match child.stop(grace).await {
                Some(status) => tracing::info!(child = %child.name, %status, "stopped"),
                None => tracing::error!(child = %child.name, pid = child.pid, "could not be stopped"),
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &self.started {
            child.signal(libc::SIGKILL);
        }
    }
}

/// Makes the kernel SIGKILL the child when its parent dies, however the parent dies.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere, children are still stopped on SIGTERM/Ctrl-C, but not on `kill -9` of the parent.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut tokio::process::Command) {}
