//! The proxy's administration commands, as a client sees them: `MEMLOG TOPOLOGY` (the shards
//! with their primary, replicas, LSNs and epochs, as a JSON bulk string) and
//! `MEMLOG FAILOVER <shard> [TO <host:port>]` (a graceful, zero-loss switchover; `+OK` once done).

use serde::Deserialize;

use crate::deployment::reply_text;
use crate::probe::{ProbeError, Reply, Session};

/// The topology the proxy's failover controller serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProxyTopology {
    pub shards: Vec<ProxyShard>,
}

/// One shard as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProxyShard {
    pub id: u32,
    pub slots: String,
    pub epoch: u64,
    pub primary: ProxyNode,
    #[serde(default)]
    pub replicas: Vec<ProxyNode>,
    /// Why the shard does not serve (its primary's data refused at start-up); absent while it
    /// serves.
    #[serde(default)]
    pub refused: Option<String>,
}

/// One Redis node as the proxy last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProxyNode {
    pub addr: String,
    #[serde(default)]
    pub lsn: Option<u64>,
    #[serde(default)]
    pub up: Option<bool>,
}

/// Why an admin command did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Probe(#[from] ProbeError),
    #[error("the proxy refused: {0}")]
    Refused(String),
    #[error("unexpected reply from the proxy: {0}")]
    Unexpected(String),
}

/// Asks the proxy for its topology.
pub async fn topology(session: &mut Session) -> Result<ProxyTopology, AdminError> {
    match session.call(&["MEMLOG", "TOPOLOGY"]).await? {
        Reply::Bulk(Some(json)) => serde_json::from_slice(&json)
            .map_err(|e| AdminError::Unexpected(format!("MEMLOG TOPOLOGY is not the expected JSON: {e}"))),
        Reply::Error(message) => Err(AdminError::Refused(message)),
        other => Err(AdminError::Unexpected(reply_text(&other))),
    }
}

/// Asks the proxy to switch shard `shard` over to `to` (or to the replica it picks); returns
/// once the proxy reports the switchover done.
pub async fn failover(session: &mut Session, shard: u32, to: Option<&str>) -> Result<(), AdminError> {
    let shard = shard.to_string();
    let mut args = vec!["MEMLOG", "FAILOVER", &shard];
    if let Some(to) = to {
        args.extend(["TO", to]);
    }
    match session.call(&args).await? {
        Reply::Simple(ok) if ok.eq_ignore_ascii_case("OK") => Ok(()),
        Reply::Error(message) => Err(AdminError::Refused(message)),
        other => Err(AdminError::Unexpected(reply_text(&other))),
    }
}

impl ProxyShard {
    /// One line for people: `shard 0 (slots 0-5460) epoch 3: primary 127.0.0.1:7001 lsn 42,
    /// replicas 127.0.0.1:7002 lsn 42`.
    pub fn describe(&self) -> String {
        let node = |n: &ProxyNode| {
            let lsn = n.lsn.map_or("lsn ?".to_string(), |l| format!("lsn {l}"));
            let down = if n.up == Some(false) { " DOWN" } else { "" };
            format!("{} {lsn}{down}", n.addr)
        };
        let replicas = match self.replicas.as_slice() {
            [] => "no replicas".to_string(),
            nodes => format!("replicas {}", nodes.iter().map(node).collect::<Vec<_>>().join(", ")),
        };
        format!(
            "shard {} (slots {}) epoch {}: primary {}, {replicas}",
            self.id,
            self.slots,
            self.epoch,
            node(&self.primary)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{Credentials, Deployment, SessionError};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stand-in proxy on a free port: answers each request with the next of `replies` and
    /// hands back every request it got (raw RESP) when the client hangs up.
    async fn fake_proxy(replies: Vec<String>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut replies = replies.into_iter();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    return String::from_utf8(seen).unwrap();
                }
                seen.extend_from_slice(&buf[..n]);
                if let Some(reply) = replies.next() {
                    stream.write_all(reply.as_bytes()).await.unwrap();
                }
            }
        });
        (addr, served)
    }

    #[tokio::test]
    async fn authenticates_then_asks_for_the_topology_and_a_switchover() {
        let json = r#"{"shards":[{"id":0,"slots":"0-16383","epoch":1,"primary":{"addr":"a:1"},"replicas":[]}]}"#;
        let bulk = format!("${}\r\n{json}\r\n", json.len());
        let (addr, served) = fake_proxy(vec!["+OK\r\n".into(), bulk, "+OK\r\n".into()]).await;
        let mut deployment = Deployment::from_proxy(&addr);
        deployment.credentials = Some(Credentials { user: "ops".into(), password: "pw".into() });
        let mut session = deployment.admin_session(Duration::from_secs(5)).await.unwrap();
        let topology = topology(&mut session).await.unwrap();
        assert_eq!(topology.shards[0].primary.addr, "a:1");
        failover(&mut session, 0, Some("b:2")).await.unwrap();
        drop(session);
        let seen = served.await.unwrap();
        assert_eq!(
            seen,
            "*3\r\n$4\r\nAUTH\r\n$3\r\nops\r\n$2\r\npw\r\n\
             *2\r\n$6\r\nMEMLOG\r\n$8\r\nTOPOLOGY\r\n\
             *5\r\n$6\r\nMEMLOG\r\n$8\r\nFAILOVER\r\n$1\r\n0\r\n$2\r\nTO\r\n$3\r\nb:2\r\n"
        );
    }

    #[tokio::test]
    async fn a_refused_auth_or_failover_is_an_error_with_the_proxy_s_words() {
        let (addr, _served) = fake_proxy(vec!["-WRONGPASS invalid username-password pair\r\n".into()]).await;
        let mut deployment = Deployment::from_proxy(&addr);
        deployment.credentials = Some(Credentials { user: "ops".into(), password: "bad".into() });
        let err = deployment.admin_session(Duration::from_secs(5)).await.err().unwrap();
        assert!(matches!(&err, SessionError::AuthRefused { user, .. } if user == "ops"), "{err}");
        assert!(err.to_string().contains("WRONGPASS"), "{err}");

        let (addr, _served) = fake_proxy(vec!["-ERR memlog: no replica is caught up\r\n".into()]).await;
        let mut session = Deployment::from_proxy(&addr).admin_session(Duration::from_secs(5)).await.unwrap();
        let err = failover(&mut session, 3, None).await.unwrap_err();
        assert_eq!(err.to_string(), "the proxy refused: ERR memlog: no replica is caught up");
    }

    #[test]
    fn reads_the_topology_json_the_proxy_serves() {
        let json = r#"{"shards":[{"id":0,"slots":"0-5460","epoch":3,
            "primary":{"addr":"127.0.0.1:7001","lsn":42,"up":true},
            "replicas":[{"addr":"127.0.0.1:7002","lsn":40,"up":false}]}]}"#;
        let topology: ProxyTopology = serde_json::from_str(json).unwrap();
        let shard = &topology.shards[0];
        assert_eq!((shard.id, shard.epoch, shard.primary.lsn), (0, 3, Some(42)));
        assert_eq!(
            shard.describe(),
            "shard 0 (slots 0-5460) epoch 3: primary 127.0.0.1:7001 lsn 42, replicas 127.0.0.1:7002 lsn 40 DOWN"
        );
    }
}
