//! `cluster.json`: what `memlog up` started in its `--dir` (every process with its role, port
//! and pid), so `memlog status --dir`, scripts and tests can find the cluster without guessing.

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

/// What a process is for. New kinds (journal nodes) are new variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    Primary { shard: usize, slots: String },
    Replica { shard: usize, replica_of: u16 },
    Proxy,
}

/// One process `memlog up` started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    #[serde(flatten)]
    pub role: Role,
    pub port: u16,
    pub pid: u32,
    pub log: PathBuf,
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
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
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
