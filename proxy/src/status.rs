//! What `MEMLOG TOPOLOGY` reports of each shard: its nodes as its failover controller last saw
//! them. Plain data, kept by the controller and read by everyone else.

use std::sync::Mutex;

use serde::Serialize;

/// One node in `MEMLOG TOPOLOGY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NodeStatus {
    pub addr: String,
    /// Its `__memlog:lsn` at the last check it answered; unknown before.
    pub lsn: Option<u64>,
    /// Whether it answered the last check.
    pub up: bool,
}

/// One shard in `MEMLOG TOPOLOGY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ShardView {
    pub id: usize,
    pub slots: String,
    /// The topology version in the metadata store when this shard last changed (start-up,
    /// failover); counted from the start without a metadata store.
    pub epoch: u64,
    /// Reads and writes are held: the shard is failing over, or waits for a node to return.
    pub held: bool,
    pub primary: NodeStatus,
    pub replicas: Vec<NodeStatus>,
    /// Why the shard does not serve: its primary's data was refused at start-up
    /// (docs/adoption.md); absent while it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The live view of a shard, kept by its controller.
pub(crate) struct ShardStatus(Mutex<ShardView>);

impl ShardStatus {
    pub(crate) fn new(view: ShardView) -> ShardStatus {
        ShardStatus(Mutex::new(view))
    }

    pub(crate) fn view(&self) -> ShardView {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut ShardView)) {
        change(&mut self.0.lock().unwrap());
    }
}

/// `MEMLOG TOPOLOGY`'s JSON: `{"shards":[…]}`.
pub(crate) fn topology_json(shards: &[ShardView]) -> String {
    #[derive(Serialize)]
    struct Topology<'a> {
        shards: &'a [ShardView],
    }
    serde_json::to_string(&Topology { shards }).unwrap_or_default()
}

/// `"0-5460,6000-6100"`
pub(crate) fn slots_text(ranges: &[(u16, u16)]) -> String {
    ranges.iter().map(|(lo, hi)| format!("{lo}-{hi}")).collect::<Vec<_>>().join(",")
}

/// The addresses of the shard's nodes other than `primary`, as `status` last saw them.
pub(crate) fn replicas_besides(status: &ShardStatus, primary: &str) -> Vec<String> {
    let view = status.view();
    std::iter::once(view.primary).chain(view.replicas).map(|n| n.addr).filter(|a| a != primary).collect()
}
