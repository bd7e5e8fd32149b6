"""Whole-keyspace commands, which the proxy answers by combining every shard: DBSIZE, KEYS,
SCAN, RANDOMKEY, FLUSHALL/FLUSHDB and INFO; and the journal's `__memlog:lsn` key, which no
client may see."""

import collections

from harness import key_slot, keys_by_shard, shard_of_slot, wait_until_no_rehash

LSN_KEY = "__memlog:lsn"


def scan_all(client, **kwargs):
    """Every key one full SCAN iteration returns (with repeats), and how many calls it took."""
    seen, cursor, calls = collections.Counter(), 0, 0
    while True:
        cursor, keys = client.scan(cursor, **kwargs)
        seen.update(keys)
        calls += 1
        if cursor == 0:
            return seen, calls


def user_keys_on_backends(endpoint):
    """Every key stored on the data nodes, except the proxy's own `__memlog:lsn`."""
    keys = set()
    for node in endpoint.backends:
        keys |= {k.decode() for k in node.client().keys("*")} - {LSN_KEY}
    return keys


def keyspace_line(conn):
    """The `db0:…` line of INFO keyspace as a dict, or None when the server prints none."""
    for line in conn.call("INFO", "keyspace").decode().splitlines():
        if line.startswith("db0:"):
            return dict(field.split("=") for field in line[4:].split(","))
    return None


def test_dbsize_and_keys_cover_every_shard(r):
    keys = keys_by_shard("ks", 10)
    for key in keys:
        r.set(key, "v")
    assert r.dbsize() == 30
    assert sorted(r.keys("*")) == sorted(keys)
    assert sorted(r.keys("ks:s1*")) == sorted(k for k in keys if k.startswith("ks:s1"))
    assert r.keys("nothing:*") == []


def test_scan_visits_every_key_of_every_shard_exactly_once(r, target):
    strings = [f"scan:str:{i}" for i in range(1000)]
    hashes = [f"scan:hash:{i}" for i in range(30)]
    lists = [f"scan:list:{i}" for i in range(30)]
    pipe = r.pipeline(transaction=False)
    for key in strings:
        pipe.set(key, "v")
    for key in hashes:
        pipe.hset(key, "f", "v")
    for key in lists:
        pipe.rpush(key, "v")
    pipe.execute()
    assert {shard_of_slot(key_slot(k)) for k in strings} == {0, 1, 2}
    wait_until_no_rehash(target)

    seen, calls = scan_all(r, count=10)
    assert set(seen) == set(strings + hashes + lists)
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:10]
    assert calls > 10  # COUNT 10 really pages

    seen, _ = scan_all(r, match="scan:str:*", count=10)
    assert set(seen) == set(strings) and max(seen.values()) == 1
    seen, _ = scan_all(r, _type="hash", count=10)
    assert set(seen) == set(hashes) and max(seen.values()) == 1
    seen, _ = scan_all(r, match="scan:list:1*", _type="list", count=10)
    assert set(seen) == {k for k in lists if k.startswith("scan:list:1")}


def test_randomkey(r):
    assert r.randomkey() is None
    only = keys_by_shard("rk", 1)[2]  # one key, in the last shard: the others are empty
    r.set(only, "v")
    assert {r.randomkey() for _ in range(20)} == {only}
    keys = keys_by_shard("rk", 5)
    for key in keys:
        r.set(key, "v")
    assert {r.randomkey() for _ in range(30)} <= set(keys)


def test_flushdb_and_flushall_empty_every_shard(r, target):
    for flush in (r.flushdb, r.flushall, lambda: r.flushall(asynchronous=True)):
        keys = keys_by_shard("flush", 5)
        for key in keys:
            r.set(key, "v")
        assert user_keys_on_backends(target) == set(keys)
        assert flush() is True
        assert r.dbsize() == 0
        assert r.keys("*") == []
        assert all(r.get(key) is None for key in keys)
        assert user_keys_on_backends(target) == set()


def test_info_aggregates_the_keyspace_and_has_a_server_section(r, target):
    keys = keys_by_shard("info", 7)
    for key in keys:
        r.set(key, "v")
    for key in keys[:4]:
        r.expire(key, 1000)
    with target.raw() as conn:
        db0 = keyspace_line(conn)
        assert db0 is not None and db0["keys"] == "21" and db0["expires"] == "4", db0
        server = conn.call("INFO", "server").decode()
        assert server.startswith("# Server") and "redis_version:" in server
        everything = conn.call("INFO").decode()
        assert "# Server" in everything and "# Keyspace" in everything
        r.flushall()
        assert keyspace_line(conn) is None  # Redis prints no db0 line for an empty keyspace


def test_memlog_lsn_key_is_hidden_from_clients(proxy):
    """Proxy-only: the journal position `__memlog:lsn` that the proxy keeps on every Redis node
    never shows in KEYS, SCAN, DBSIZE, RANDOMKEY or INFO keyspace."""
    client = proxy.client(decode_responses=True)
    client.flushall()
    for node in proxy.backends:  # the sequencer writes it; make sure every shard has one
        backend = node.client()
        if not backend.exists(LSN_KEY):
            backend.set(LSN_KEY, "0")
    assert client.dbsize() == 0
    assert client.keys("*") == []
    assert client.randomkey() is None
    assert scan_all(client, count=10)[0] == {}

    keys = keys_by_shard("visible", 2)
    for key in keys:
        client.set(key, "v")
    assert client.dbsize() == len(keys)
    assert sorted(client.keys("*")) == sorted(keys)
    assert LSN_KEY not in client.keys("__memlog*")
    assert set(scan_all(client, count=10)[0]) == set(keys)
    assert set(scan_all(client, match="__*")[0]) == set()
    assert {client.randomkey() for _ in range(50)} <= set(keys)
    with proxy.raw() as conn:
        assert keyspace_line(conn)["keys"] == str(len(keys))
    client.close()
