//! `cluster.json`: what `memlog up` started in its `--dir` (every process with its role, port
//! and pid), so `memlog status --dir`, scripts and tests can find the cluster without guessing.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name inside `--dir`.
pub const FILE_NAME: &str = "cluster.json";

/// Where the cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// Children are being started; not all may be ready.
    Starting,
    /// Every child was ready and the endpoint was printed.
    Running,
    /// `memlog up` stopped every child and exited.
    Stopped,
}

/// What a process is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// A journal node; its data lives in `DIR/journal-<port>/`, so its port must not change.
    Journal,
    Primary {
        shard: usize,
        slots: String,
    },
    Replica {
        shard: usize,
        replica_of: u16,
    },
    Proxy,
}

/// One process `memlog up` started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    /// What it was started as. A failover changes which Redis node is primary; the proxy knows
    /// that (`memlog status` asks it), this file does not.
    #[serde(flatten)]
    pub role: Role,
    pub port: u16,
    /// Of the current instance: `memlog up` updates it when it restarts the process.
    pub pid: u32,
    pub log: PathBuf,
    /// How often `memlog up` restarted it after it died.
    #[serde(default)]
    pub restarts: u32,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub state: ClusterState,
    /// The `memlog up` process that owns every other one.
    pub up_pid: u32,
    /// The client endpoint, e.g. `redis://127.0.0.1:6380`.
    pub url: String,
    /// The Prometheus endpoint, if metrics are on.
    pub metrics_url: Option<String>,
    pub processes: Vec<ProcessRecord>,
    /// The user `memlog up --user` created, for `memlog status`/`failover --dir` to log in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminRecord>,
}

/// `memlog up --user NAME --password-file FILE`: the name and where its password is (never the
/// password itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    pub user: String,
    pub password_file: PathBuf,
}

impl ClusterFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads `DIR/cluster.json`.
    pub fn read(dir: &Path) -> anyhow::Result<ClusterFile> {
        let path = Self::path(dir);
        let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a memlog cluster file: {e}", path.display()))
    }

    /// Writes `DIR/cluster.json` atomically (temp file + rename), so a reader never sees half of it.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        journal_service::private_fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }

    /// Ports of the journal nodes this file records, in start order: a re-run on the same
    /// `--dir` must find its journal data (`DIR/journal-<port>/`) under the same ports.
    pub fn journal_ports(&self) -> Vec<u16> {
        self.processes.iter().filter(|p| p.role == Role::Journal).map(|p| p.port).collect()
    }

    /// Number of shards this file records (one primary each).
    pub fn shard_count(&self) -> usize {
        self.processes.iter().filter(|p| matches!(p.role, Role::Primary { .. })).count()
    }
}

/// True if `pid` is a live `memlog up`, not just any process: after a `kill -9` the pid in a
/// stale cluster.json may have been reused by something else, which must not block a re-run.
pub fn up_alive(pid: u32) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        // argv is NUL-separated: the program (`…/memlog`), then the subcommand (`up`).
        Ok(cmdline) => {
            let mut argv = cmdline.split(|&b| b == 0);
            let program = argv.next().map(|p| Path::new(std::ffi::OsStr::from_bytes(p)).ends_with("memlog"));
            program == Some(true) && argv.next() == Some(b"up".as_slice())
        }
        // Without /proc, a live pid is assumed to be the owner.
        Err(_) => true,
    }
}

/// True if a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(false),
        // SAFETY: kill(2) with signal 0 only checks for existence.
        Err(_) => unsafe { libc::kill(pid as libc::pid_t, 0) == 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, role: Role, port: u16) -> ProcessRecord {
        ProcessRecord { name: name.into(), role, port, pid: 1, log: PathBuf::from("x.log"), restarts: 0 }
    }

    #[test]
    fn reads_back_journal_ports_and_shard_count() {
        let dir = tempfile::tempdir().unwrap();
        let file = ClusterFile {
            state: ClusterState::Running,
            up_pid: 1,
            url: "redis://127.0.0.1:6380".into(),
            metrics_url: None,
            admin: None,
            processes: vec![
                record("journal-7401", Role::Journal, 7401),
                record("journal-7405", Role::Journal, 7405),
                record("redis-7000", Role::Primary { shard: 0, slots: "0-16383".into() }, 7000),
                record("redis-7001", Role::Replica { shard: 0, replica_of: 7000 }, 7001),
                record("proxy", Role::Proxy, 6380),
            ],
        };
        file.write(dir.path()).unwrap();
        let back = ClusterFile::read(dir.path()).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.journal_ports(), vec![7401, 7405]);
        assert_eq!(back.shard_count(), 1);
        let text = std::fs::read_to_string(ClusterFile::path(dir.path())).unwrap();
        assert!(text.contains("\"role\": \"journal\""), "{text}");
    }

    #[test]
    fn this_test_process_is_not_a_memlog_up() {
        assert!(pid_alive(std::process::id()));
        assert!(!up_alive(std::process::id()));
        assert!(!up_alive(u32::MAX / 2));
    }
}
