//! The shards' topology in the metadata store: read at start-up (after a failover the recorded
//! primary wins over the configured one) and written on every change; the new topology version
//! is the shard's epoch.

use journal_service::meta::{MetaError, MetaStore, ShardTopology, Topology};

use crate::config::ShardConfig;

/// Most compare-and-set attempts before giving up (other shards' controllers record too).
const ATTEMPTS: usize = 20;

/// The primary a shard starts with: the recorded one if it is still one of the configured
/// nodes, else the configured primary.
pub(crate) fn starting_primary(config: &ShardConfig, recorded: Option<&ShardTopology>) -> String {
    let configured = |addr: &str| addr == config.primary || config.replicas.iter().any(|r| r == addr);
    match recorded {
        Some(shard) if configured(&shard.primary) => shard.primary.clone(),
        _ => config.primary.clone(),
    }
}

/// The recorded entry of shard `id`, if any.
pub(crate) fn recorded_shard(topology: Option<&Topology>, id: usize) -> Option<&ShardTopology> {
    topology?.shards.iter().find(|s| s.id as usize == id)
}

/// Replaces the entries of `shards` in the stored topology (compare-and-set, retried when
/// another writer got in first); returns the new version.
pub(crate) async fn record(meta: &MetaStore, shards: &[ShardTopology]) -> Result<u64, MetaError> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (version, mut topology) = meta.get_topology().await?.unwrap_or_default();
        for shard in shards {
            match topology.shards.iter_mut().find(|s| s.id == shard.id) {
                Some(entry) => *entry = shard.clone(),
                None => topology.shards.push(shard.clone()),
            }
        }
        topology.shards.sort_by_key(|s| s.id);
        match meta.put_topology(version, &topology).await {
            Ok(version) => return Ok(version),
            Err(e @ MetaError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(MetaError::Conflict { current: 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(primary: &str, replicas: &[&str]) -> ShardConfig {
        ShardConfig {
            slots: "0-16383".into(),
            primary: primary.into(),
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn recorded(primary: &str) -> ShardTopology {
        ShardTopology { id: 0, slots: vec![(0, 16383)], primary: primary.into(), replicas: vec![] }
    }

    #[test]
    fn the_recorded_primary_wins_while_it_is_a_configured_node() {
        let config = shard("a:1", &["b:2"]);
        assert_eq!(starting_primary(&config, None), "a:1");
        assert_eq!(starting_primary(&config, Some(&recorded("b:2"))), "b:2");
        assert_eq!(starting_primary(&config, Some(&recorded("z:9"))), "a:1", "a node no longer configured");
    }

    #[tokio::test]
    async fn records_merge_per_shard_and_bump_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(&format!("file:{}", dir.path().join("meta.json").display())).await.unwrap();
        let first = record(&meta, &[recorded("a:1"), ShardTopology { id: 1, ..recorded("c:3") }]).await.unwrap();
        let second = record(&meta, &[recorded("b:2")]).await.unwrap();
        assert!(second > first);
        let (version, topology) = meta.get_topology().await.unwrap().unwrap();
        assert_eq!(version, second);
        assert_eq!(recorded_shard(Some(&topology), 0).unwrap().primary, "b:2");
        assert_eq!(recorded_shard(Some(&topology), 1).unwrap().primary, "c:3");
    }
}
