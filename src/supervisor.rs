//! Supervision of the children of `memlog up`: a child that dies while the cluster runs is
//! started again on its same port, after a bounded exponential backoff, and never takes
//! `memlog up` down with it.
//!
//! What a restart means depends on the child. A journal node keeps its data dir (it is durable
//! state). A Redis node comes back empty, like a replacement machine would, and without
//! `--replicaof`: the proxy's failover controller decides what it becomes (a replica of the
//! shard's current primary, or a primary rebuilt from the journal when nothing else is left),
//! since only the controller knows which node is primary now. The proxy restarts with its
//! config and recovers every shard from the journal before it serves.
//!
//! Restarts are forked from the thread that drives `memlog up` (see [`Children::spawn`]), so a
//! restarted child still dies with `memlog up`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::children::{ChildExit, ChildSpec, Children};

/// Delay before the first restart of a child that has been running stably.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between two restarts of a child that keeps dying.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A child that ran this long before it died is restarted as promptly as a first failure.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How to bring one child back.
#[derive(Debug, Clone)]
pub struct RestartPlan {
    /// What to run (for a replica, its first-start spec minus `--replicaof`).
    pub spec: ChildSpec,
    /// What to do to its files first.
    pub prepare: Prepare,
}

/// The file work before a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepare {
    /// Keep everything (journal nodes, the proxy).
    Nothing,
    /// Empty this Redis node dir but for the child's log, so the node starts with no data at all.
    EmptyRedisDir(PathBuf),
}

/// A child brought back: its name, its new pid and how its previous instance ended.
#[derive(Debug, Clone)]
pub struct Restarted {
    pub name: String,
    pub pid: u32,
    pub after: ExitStatus,
}

/// Restart bookkeeping of one child.
#[derive(Debug)]
struct Tracked {
    plan: RestartPlan,
    /// When its current (or last) instance started.
    started_at: Instant,
    /// Deaths in a row, each within `STABLE_AFTER` of its start.
    consecutive: u32,
    /// A restart is scheduled: at this time, after an instance that ended with this status.
    due: Option<(Instant, ExitStatus)>,
}

/// Every supervised child and its pending restart.
pub struct Supervisor {
    tracked: HashMap<String, Tracked>,
}

impl Supervisor {
    /// Supervises the children named by `plans`, all counted as started at `now`.
    pub fn new(plans: impl IntoIterator<Item = RestartPlan>, now: Instant) -> Supervisor {
        let tracked = plans
            .into_iter()
            .map(|plan| {
                let name = plan.spec.name.clone();
                (name, Tracked { plan, started_at: now, consecutive: 0, due: None })
            })
            .collect();
        Supervisor { tracked }
    }

    /// Schedules the restart of the child that exited; returns the delay, or `None` for an
    /// exit that needs nothing (an unsupervised child, or an earlier instance's late report).
    pub fn child_exited(&mut self, exit: &ChildExit, children: &Children, now: Instant) -> Option<Duration> {
        let current_pid = children.get(&exit.name).map(|c| c.pid);
        let tracked = self.tracked.get_mut(&exit.name).filter(|_| current_pid == Some(exit.pid))?;
        let ran_for = now.saturating_duration_since(tracked.started_at);
        tracked.consecutive = if ran_for >= STABLE_AFTER { 0 } else { tracked.consecutive + 1 };
        let delay = backoff(tracked.consecutive);
        tracked.due = Some((now + delay, exit.status));
        Some(delay)
    }

    /// When the earliest scheduled restart is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.tracked.values().filter_map(|t| t.due.map(|(at, _)| at)).min()
    }

    /// Restarts every child whose time has come. A restart that fails (its files cannot be
    /// prepared, or the program cannot be executed) counts as another death and is retried
    /// after a longer delay; the error is returned alongside so the caller can log it.
    pub fn restart_due(&mut self, children: &mut Children, now: Instant) -> Vec<Result<Restarted, RestartError>> {
        let mut outcomes = Vec::new();
        for (name, tracked) in &mut self.tracked {
            let Some((_, after)) = tracked.due.filter(|(at, _)| *at <= now) else { continue };
            tracked.due = None;
            let banner = format!("memlog up: restarting {name} after it exited with {after}");
            let started = prepare(&tracked.plan)
                .and_then(|()| children.respawn(&tracked.plan.spec, &banner).map(|child| child.pid));
            match started {
                Ok(pid) => {
                    tracked.started_at = now;
                    outcomes.push(Ok(Restarted { name: name.clone(), pid, after }));
                }
                Err(source) => {
                    tracked.consecutive += 1;
                    let retry_in = backoff(tracked.consecutive);
                    tracked.due = Some((now + retry_in, after));
                    outcomes.push(Err(RestartError { name: name.clone(), retry_in, source }));
                }
            }
        }
        outcomes
    }
}

/// A restart that could not happen now; it is retried after `retry_in`.
#[derive(Debug, thiserror::Error)]
#[error("cannot restart {name} (retrying in {retry_in:?}): {source}")]
pub struct RestartError {
    pub name: String,
    pub retry_in: Duration,
    pub source: io::Error,
}

/// The delay before restart number `consecutive` (1 for the first death in a row):
/// `FIRST_DELAY`, doubling each time, never above `MAX_DELAY`.
fn backoff(consecutive: u32) -> Duration {
    let doublings = consecutive.saturating_sub(1).min(16);
    (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY)
}

/// Does the file work `plan` asks for before its child starts again.
fn prepare(plan: &RestartPlan) -> io::Result<()> {
    match &plan.prepare {
        Prepare::Nothing => Ok(()),
        Prepare::EmptyRedisDir(dir) => empty_redis_dir(dir, &plan.spec.log),
    }
}

/// Removes everything in a Redis node's `dir` but the file `keep` (its log): RDB files of a
/// replica's last full sync, an AOF dir, temp files; so the node starts as empty as a new machine.
pub fn empty_redis_dir(dir: &Path, keep: &Path) -> io::Result<()> {
    journal_service::private_fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path == keep {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_bound() {
        assert_eq!(backoff(1), FIRST_DELAY);
        assert_eq!(backoff(2), FIRST_DELAY * 2);
        assert_eq!(backoff(4), FIRST_DELAY * 8);
        assert_eq!(backoff(7), MAX_DELAY);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn emptying_a_redis_dir_keeps_only_its_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dump.rdb"), b"old").unwrap();
        std::fs::write(dir.path().join("temp-123.rdb"), b"old").unwrap();
        std::fs::create_dir(dir.path().join("appendonlydir")).unwrap();
        std::fs::write(dir.path().join("appendonlydir/a.aof"), b"old").unwrap();
        std::fs::write(dir.path().join("redis.log"), b"log").unwrap();
        empty_redis_dir(dir.path(), &dir.path().join("redis.log")).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("redis.log")]);
    }

    /// A real child (`sh -c 'exit 3'`) dies at once, again and again: each death schedules a
    /// restart with a longer delay, and a restart gets a new pid.
    #[tokio::test]
    async fn a_dying_child_is_restarted_with_growing_delays_and_a_new_pid() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ChildSpec {
            name: "dies".into(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), "exit 3".into()],
            log: dir.path().join("dies.log"),
        };
        let mut children = Children::new();
        let first_pid = children.spawn(&spec).unwrap().pid;
        let start = Instant::now();
        let mut supervisor = Supervisor::new([RestartPlan { spec, prepare: Prepare::Nothing }], start);
        let exit = children.next_exit().await;
        assert_eq!((exit.name.as_str(), exit.pid, exit.status.code()), ("dies", first_pid, Some(3)));
        assert_eq!(supervisor.child_exited(&exit, &children, start), Some(FIRST_DELAY));
        assert!(supervisor.restart_due(&mut children, start).is_empty(), "not due yet");
        let restarted = supervisor.restart_due(&mut children, start + FIRST_DELAY);
        let pid = match restarted.as_slice() {
            [Ok(r)] => r.pid,
            other => panic!("{other:?}"),
        };
        assert_ne!(pid, first_pid);
        // The earlier instance's report, should it come late, schedules nothing.
        assert_eq!(supervisor.child_exited(&exit, &children, start), None);
        let exit = children.next_exit().await;
        assert_eq!(exit.pid, pid);
        assert_eq!(supervisor.child_exited(&exit, &children, start + FIRST_DELAY), Some(FIRST_DELAY * 2));
        let log = std::fs::read_to_string(dir.path().join("dies.log")).unwrap();
        assert!(log.contains("memlog up: restarting dies after it exited with exit status: 3"), "{log}");
    }
}
