"""Every data type through the clients applications use: redis-py `Redis` (RESP2 and RESP3)
against the proxy and stock Redis, and `RedisCluster` against the proxy and a real Redis
Cluster. Each type's keys land in different shards."""

import pytest

from conftest import TARGETS

CLIENT_KINDS = ["resp2", "resp3", "cluster-resp2", "cluster-resp3"]


@pytest.fixture(params=[(t, c) for t in TARGETS for c in CLIENT_KINDS], ids=lambda p: f"{p[0]}-{p[1]}")
def client(request):
    """A decoding redis-py client of the given kind on an empty keyspace."""
    target_kind, client_kind = request.param
    protocol = 3 if client_kind.endswith("resp3") else 2
    if client_kind.startswith("cluster"):
        endpoint = request.getfixturevalue("memlog_proxy" if target_kind == "proxy" else "redis_cluster")
        endpoint.flushall()
        made = endpoint.cluster_client(protocol=protocol, decode_responses=True)
    else:
        endpoint = request.getfixturevalue("memlog_proxy" if target_kind == "proxy" else "stock_redis")
        endpoint.flushall()
        made = endpoint.client(protocol=protocol, decode_responses=True)
    yield made
    made.close()


def test_strings(client):
    assert client.set("dt:str", "hello") is True
    assert client.get("dt:str") == "hello"
    assert client.append("dt:str", " world") == 11
    assert client.getrange("dt:str", 0, 4) == "hello"
    assert client.strlen("dt:str") == 11
    assert client.set("dt:str", "x", nx=True) is None
    assert client.incrby("dt:counter", 5) == 5
    assert client.incrbyfloat("dt:counter", 0.5) == 5.5
    assert client.setex("dt:ttl", 100, "v") is True
    assert 0 < client.ttl("dt:ttl") <= 100
    assert client.getdel("dt:ttl") == "v" and client.exists("dt:ttl") == 0


def test_lists(client):
    assert client.rpush("dt:list", "a", "b", "c") == 3
    assert client.lpush("dt:list", "z") == 4
    assert client.lrange("dt:list", 0, -1) == ["z", "a", "b", "c"]
    assert client.lpop("dt:list") == "z"
    assert client.rpop("dt:list", 2) == ["c", "b"]
    assert client.llen("dt:list") == 1
    assert client.linsert("dt:list", "BEFORE", "a", "first") == 2
    assert client.lindex("dt:list", 0) == "first"


def test_hashes(client):
    assert client.hset("dt:hash", mapping={"f1": "1", "f2": "two"}) == 2
    assert client.hget("dt:hash", "f2") == "two"
    assert client.hgetall("dt:hash") == {"f1": "1", "f2": "two"}
    assert client.hincrby("dt:hash", "f1", 10) == 11
    assert client.hmget("dt:hash", "f1", "nope") == ["11", None]
    assert sorted(client.hkeys("dt:hash")) == ["f1", "f2"]
    assert client.hdel("dt:hash", "f1", "nope") == 1


def test_sets(client):
    assert client.sadd("dt:set", "a", "b", "c") == 3
    assert client.smembers("dt:set") == {"a", "b", "c"}
    assert client.sismember("dt:set", "b") in (1, True)
    assert client.srem("dt:set", "b") == 1
    assert client.scard("dt:set") == 2
    assert client.sadd("{dt}s1", "x", "y") == 2 and client.sadd("{dt}s2", "y", "z") == 2
    assert client.sinter("{dt}s1", "{dt}s2") == {"y"}


def test_sorted_sets(client):
    assert client.zadd("dt:zset", {"a": 1, "b": 2.5, "c": 3}) == 3
    assert client.zscore("dt:zset", "b") == 2.5
    assert [tuple(p) for p in client.zrange("dt:zset", 0, -1, withscores=True)] == [("a", 1.0), ("b", 2.5), ("c", 3.0)]
    assert client.zincrby("dt:zset", 10, "a") == 11.0
    assert client.zrank("dt:zset", "a") == 2
    assert client.zrangebyscore("dt:zset", 2, 5) == ["b", "c"]
    assert client.zcard("dt:zset") == 3


def test_streams(client):
    first = client.xadd("dt:stream", {"temp": "20"})
    second = client.xadd("dt:stream", {"temp": "21"})
    assert client.xlen("dt:stream") == 2
    entries = [(entry_id, dict(fields)) for entry_id, fields in client.xrange("dt:stream")]
    assert entries == [(first, {"temp": "20"}), (second, {"temp": "21"})]
    assert client.xadd("dt:stream", {"temp": "22"}, id="99999999999999-0") == "99999999999999-0"
    assert [e[0] for e in client.xrevrange("dt:stream", count=1)] == ["99999999999999-0"]


def test_hyperloglog(client):
    assert client.pfadd("dt:hll", *[f"e{i}" for i in range(100)]) == 1
    assert 95 <= client.pfcount("dt:hll") <= 105
    assert client.pfadd("dt:hll", "e1") == 0


def test_bitmaps(client):
    assert client.setbit("dt:bits", 7, 1) == 0
    assert client.setbit("dt:bits", 100, 1) == 0
    assert client.getbit("dt:bits", 7) == 1 and client.getbit("dt:bits", 8) == 0
    assert client.bitcount("dt:bits") == 2
    assert client.bitpos("dt:bits", 1) == 7


def test_geo(client):
    assert client.geoadd("dt:geo", [13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"]) == 2
    assert client.geodist("dt:geo", "Palermo", "Catania", unit="km") == pytest.approx(166.2742, abs=0.01)
    found = client.geosearch("dt:geo", longitude=15, latitude=37, radius=200, unit="km", sort="ASC")
    assert found == ["Catania", "Palermo"]
