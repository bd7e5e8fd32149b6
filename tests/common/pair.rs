//! A stock `redis-server` 7.0 and a one-shard memlog cluster side by side, for the tests that
//! run the same scenario against both and compare the replies. The test client speaks RESP2,
//! whose encoding of a value is unique, so equal parsed replies are equal bytes.

use std::net::SocketAddr;

use super::cluster::{ClusterOptions, DurableCluster, CLIENT_TIMEOUT};
use super::resp::{Conn, Value};
use super::{spawn_redis, Proc};

pub struct Pair {
    pub redis: Proc,
    pub memlog: DurableCluster,
    _dir: tempfile::TempDir,
}

impl Pair {
    pub fn start() -> Pair {
        Pair::start_with(&[])
    }

    /// The stock server started with `redis_args` too.
    pub fn start_with(redis_args: &[&str]) -> Pair {
        Pair::start_as(redis_args, ClusterOptions::default())
    }

    /// A stock server and memlog with `mode = "standalone"`: both are then standalone Redis;
    /// memlog snapshots its shard every `snapshot_every` entries when set.
    pub fn standalone(snapshot_every: Option<u64>) -> Pair {
        Pair::start_as(
            &[],
            ClusterOptions { proxy_extra: "mode = \"standalone\"\n".into(), snapshot_every, ..Default::default() },
        )
    }

    /// The stock server started with `redis_args`, memlog with `options` (one journal node, one
    /// shard).
    fn start_as(redis_args: &[&str], options: ClusterOptions) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let redis = spawn_redis(dir.path(), redis_args);
        let memlog = DurableCluster::start(ClusterOptions { journal_nodes: 1, shards: 1, ..options });
        Pair { redis, memlog, _dir: dir }
    }

    /// The stock server's address, then the proxy's.
    pub fn addrs(&self) -> [SocketAddr; 2] {
        [self.redis.addr, self.memlog.proxy_addr()]
    }

    /// Runs `scenario` against each and checks the replies agree.
    pub fn same(&self, what: &str, scenario: impl Fn(SocketAddr) -> Vec<Value>) {
        let expected = scenario(self.redis.addr);
        let got = scenario(self.memlog.proxy_addr());
        for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
            assert_eq!(g.text(), e.text(), "{what}: reply {i} differs");
            assert_eq!(g, e, "{what}: reply {i} differs");
        }
        assert_eq!(got.len(), expected.len(), "{what}: reply counts differ");
    }
}

pub fn connect(addr: SocketAddr) -> Conn {
    Conn::connect(addr, CLIENT_TIMEOUT).expect("connect")
}

pub fn cmd(conn: &mut Conn, args: &[&str]) -> Value {
    conn.cmd(args).expect("a reply")
}
