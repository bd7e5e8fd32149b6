//! Recovery: how a new writer takes over a stream without losing an acknowledged entry
//! (the argument is in the [module documentation](super)).

use std::net::SocketAddr;

use super::core::{choose_source, fence_quorum, LogEnd};
use super::frame::{self, Kind};
use super::writer::{QuorumWriter, Start};
use super::{QuorumConfig, WriteError};
use crate::entry::StreamTail;
use crate::error::NodeError;
use crate::meta::MetaStore;
use crate::node_client::NodeClient;

/// Takes the next epoch of `shard` in the metadata store (compare-and-set, as `writer_id`),
/// recovers `stream` on `nodes`, and returns a writer whose recovered tail is committed.
///
/// Needs `write_quorum - ack_quorum + 1` nodes to fence and `ack_quorum` nodes to commit the
/// barrier. Fails with `Meta` if another writer claimed the epoch concurrently.
pub async fn recover(
    meta: &MetaStore,
    shard: u32,
    stream: &str,
    nodes: &[SocketAddr],
    cfg: QuorumConfig,
    writer_id: &str,
) -> Result<QuorumWriter, WriteError> {
    cfg.validate(nodes.len())?;
    let current = meta.epoch(shard).await?.epoch;
    let epoch = meta.claim_epoch(shard, current, writer_id).await?;
    recover_at_epoch(stream, epoch, nodes, cfg).await
}

/// Recovery at an epoch the caller already owns (claimed by compare-and-set); see [`recover`].
pub async fn recover_at_epoch(
    stream: &str,
    epoch: u64,
    nodes: &[SocketAddr],
    cfg: QuorumConfig,
) -> Result<QuorumWriter, WriteError> {
    cfg.validate(nodes.len())?;
    let clients: Vec<NodeClient> =
        nodes.iter().map(|a| NodeClient::with_timeout(*a, cfg.transport.clone(), cfg.node_timeout)).collect();
    let needed = fence_quorum(cfg.write_quorum, cfg.ack_quorum);

    // Fence every node at once; each call is queued on its connection before any is awaited.
    let fences: Vec<_> = clients.iter().map(|c| c.fence(stream, epoch)).collect();
    let mut fenced: Vec<(usize, StreamTail)> = Vec::new();
    let mut errors: Vec<(SocketAddr, NodeError)> = Vec::new();
    for (node, fence) in fences.into_iter().enumerate() {
        match fence.await {
            Ok(tail) => fenced.push((node, tail)),
            Err(NodeError::Fenced { fenced_epoch, .. }) => return Err(WriteError::Fenced { epoch: fenced_epoch }),
            Err(e) => errors.push((nodes[node], e)),
        }
    }

    // The origin of each fenced node's last entry decides whose log is adopted.
    let mut ends: Vec<(usize, StreamTail, LogEnd)> = Vec::new();
    for (node, tail) in fenced {
        match last_origin(&clients[node], stream, &tail).await {
            Ok(last_origin) => ends.push((node, tail.clone(), LogEnd { last_lsn: tail.last_lsn, last_origin })),
            Err(e) => errors.push((nodes[node], e)),
        }
    }
    if ends.len() < needed {
        return Err(WriteError::NoQuorum { acked: ends.len(), needed, errors });
    }
    let chosen =
        choose_source(&ends.iter().map(|(_, _, end)| *end).collect::<Vec<_>>()).expect("at least one fenced node");
    let (source, source_tail, _) = &ends[chosen];
    let tail = source_tail.last_lsn;
    let commit_lsn = ends.iter().map(|(_, t, _)| t.commit_lsn).max().unwrap_or(0).min(tail);
    tracing::info!(
        stream, epoch, tail, commit_lsn, source = %nodes[*source], fenced = ends.len(),
        "recovering journal stream"
    );

    let writer = QuorumWriter::start(stream, epoch, cfg, clients, Start { tail, commit_lsn, source: *source });
    // The barrier is this writer's first entry: once it is committed, so is everything below it.
    writer.shared().append(Kind::Barrier, b"").await?;
    Ok(writer)
}

/// Origin epoch of the node's last entry (0 for a node that holds none).
async fn last_origin(client: &NodeClient, stream: &str, tail: &StreamTail) -> Result<u64, NodeError> {
    if tail.last_lsn == 0 || tail.last_lsn < tail.first_lsn {
        return Ok(0);
    }
    let entries = client.read(stream, tail.last_lsn, tail.last_lsn, 1).await?;
    let entry = entries
        .iter()
        .find(|e| e.lsn == tail.last_lsn)
        .ok_or_else(|| NodeError::Protocol(format!("{} did not return its last entry", client.addr())))?;
    frame::decode(&entry.payload)
        .map(|f| f.origin_epoch)
        .map_err(|e| NodeError::Protocol(format!("{} lsn {}: {e}", client.addr(), entry.lsn)))
}
