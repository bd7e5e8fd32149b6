//! The nodes a source or target is read through: one node, or each primary of a Redis Cluster
//! (`CLUSTER SLOTS`) with the slot map to send a key's commands to its owner.

use bytes::Bytes;
use memlog_proxy::router::key_slot;
use redis_protocol::resp2::types::BytesFrame;

use super::conn::{Conn, ConnError};
use super::endpoint::Endpoint;

pub struct Nodes {
    pub endpoints: Vec<Endpoint>,
    /// Index into `endpoints` of each slot's owner; empty for a single node.
    owner: Vec<usize>,
}

impl Nodes {
    pub fn single(endpoint: Endpoint) -> Nodes {
        Nodes { endpoints: vec![endpoint], owner: Vec::new() }
    }

    /// The primaries of the cluster `seed` belongs to, with their slots.
    pub async fn cluster(seed: Endpoint) -> anyhow::Result<Nodes> {
        let mut conn = Conn::connect(&seed).await?;
        let BytesFrame::Array(ranges) = conn.call(&[b"CLUSTER", b"SLOTS"]).await? else {
            anyhow::bail!("{}: CLUSTER SLOTS is not an array", seed.addr());
        };
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut owner = vec![usize::MAX; 16384];
        for range in ranges {
            let malformed = || anyhow::anyhow!("{}: unexpected CLUSTER SLOTS entry", seed.addr());
            let BytesFrame::Array(range) = range else { return Err(malformed()) };
            let (Some(BytesFrame::Integer(start)), Some(BytesFrame::Integer(end)), Some(BytesFrame::Array(primary))) =
                (range.first(), range.get(1), range.get(2))
            else {
                return Err(malformed());
            };
            let host = match primary.first() {
                Some(BytesFrame::BulkString(h)) if !h.is_empty() => String::from_utf8_lossy(h).into_owned(),
                _ => seed.host.clone(),
            };
            let Some(BytesFrame::Integer(port)) = primary.get(1) else { return Err(malformed()) };
            let port = u16::try_from(*port).map_err(|_| malformed())?;
            let index = match endpoints.iter().position(|e| e.host == host && e.port == port) {
                Some(i) => i,
                None => {
                    endpoints.push(seed.at(&host, port));
                    endpoints.len() - 1
                }
            };
            // Clamped to 0..=16383 first, so the slot is a valid index.
            for slot in (*start).clamp(0, 16383)..=(*end).min(16383) {
                owner[usize::try_from(slot).expect("clamped to a slot")] = index;
            }
        }
        if let Some(slot) = owner.iter().position(|&o| o == usize::MAX) {
            anyhow::bail!("{}: slot {slot} has no primary: the cluster is not whole", seed.addr());
        }
        Ok(Nodes { endpoints, owner })
    }

    /// Which node holds `key`.
    pub fn node_of(&self, key: &[u8]) -> usize {
        if self.owner.is_empty() {
            0
        } else {
            self.owner[key_slot(key) as usize]
        }
    }

    pub async fn connect_all(&self) -> Result<Vec<Conn>, ConnError> {
        let mut conns = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            conns.push(Conn::connect(endpoint).await?);
        }
        Ok(conns)
    }
}

/// Every key of one node, by SCAN.
pub async fn scan_all(conn: &mut Conn) -> anyhow::Result<Vec<Bytes>> {
    let mut keys = Vec::new();
    let mut cursor = Bytes::from_static(b"0");
    loop {
        let reply = conn.call(&[b"SCAN", &cursor, b"COUNT", b"1000"]).await?;
        let (next, page) = scan_page(conn.addr(), reply)?;
        keys.extend(page);
        if &next[..] == b"0" {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The next cursor and the keys of one SCAN reply.
pub fn scan_page(addr: &str, reply: BytesFrame) -> anyhow::Result<(Bytes, Vec<Bytes>)> {
    let malformed = || anyhow::anyhow!("{addr}: SCAN reply is not [cursor, [keys]]");
    let BytesFrame::Array(mut parts) = reply else { return Err(malformed()) };
    if parts.len() != 2 {
        return Err(malformed());
    }
    let (BytesFrame::BulkString(cursor), BytesFrame::Array(keys)) = (parts.remove(0), parts.remove(0)) else {
        return Err(malformed());
    };
    let keys = keys
        .into_iter()
        .map(|k| match k {
            BytesFrame::BulkString(k) => Ok(k),
            _ => Err(malformed()),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((cursor, keys))
}
