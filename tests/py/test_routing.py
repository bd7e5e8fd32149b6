"""Routing keys to shards: single keys everywhere, hashtags, CROSSSLOT, and the multi-key
commands the proxy splits across shards (MGET, DEL, EXISTS, UNLINK, TOUCH)."""

import pytest

from conftest import TARGETS
from harness import THREE_SHARD_RANGES, key_per_shard, key_slot, keys_by_shard, keys_in_range, shard_of_slot
from resp import ErrorReply


def hashtag_in_shard(shard, prefix="tag"):
    """A `{hashtag}` whose slot lies in `shard`."""
    low, high = THREE_SHARD_RANGES[shard]
    return "{" + keys_in_range(prefix, low, high)[0] + "}"


def test_keys_of_every_shard_are_stored_and_read_back(r):
    keys = keys_by_shard("route", 20)
    assert {shard_of_slot(key_slot(k)) for k in keys} == {0, 1, 2}
    for key in keys:
        assert r.set(key, f"v:{key}") is True
    for key in keys:
        assert r.get(key) == f"v:{key}"
    assert r.exists(*keys) == len(keys)


@pytest.mark.parametrize("shard", [0, 1, 2])
def test_multi_key_commands_on_one_hashtag(r, shard):
    tag = hashtag_in_shard(shard)
    a, b, c, dst = (f"{tag}:{name}" for name in ("a", "b", "c", "dst"))
    assert r.mset({a: "1", b: "2"}) is True
    assert r.mget(a, b, c) == ["1", "2", None]
    assert r.rename(a, c) is True
    assert r.get(c) == "1" and r.get(a) is None
    assert r.renamenx(c, b) is False

    s1, s2 = f"{tag}:s1", f"{tag}:s2"
    r.sadd(s1, "x", "y")
    r.sadd(s2, "y", "z")
    assert r.sunionstore(dst, [s1, s2]) == 3
    assert r.smembers(dst) == {"x", "y", "z"}
    assert r.sinterstore(dst, [s1, s2]) == 1
    assert r.smove(s1, s2, "x") is True

    l1, l2 = f"{tag}:l1", f"{tag}:l2"
    r.rpush(l1, "p", "q")
    assert r.lmove(l1, l2, "LEFT", "RIGHT") == "p"
    assert r.lrange(l2, 0, -1) == ["p"]
    assert r.copy(l1, f"{tag}:l3") is True
    assert r.lrange(f"{tag}:l3", 0, -1) == ["q"]


@pytest.mark.parametrize(
    "command",
    [
        ("SUNIONSTORE", "{a}", "{b}"),
        ("RENAME", "{a}", "{b}"),
        ("MSET", "{a}", "1", "{b}", "2"),
        ("SMOVE", "{a}", "{b}", "member"),
        ("LMOVE", "{a}", "{b}", "LEFT", "RIGHT"),
        ("ZUNIONSTORE", "{a}", "2", "{a}", "{b}"),
    ],
    ids=lambda cmd: cmd[0],
)
def test_keys_in_different_shards_are_crossslot(clean_cluster_target, command):
    """Proxy (cluster_compat off) and a real Redis Cluster agree: keys of one command that
    live in different shards are refused with CROSSSLOT, and nothing is written."""
    a, b = key_per_shard("xs")[:2]
    command = [a if arg == "{a}" else b if arg == "{b}" else arg for arg in command]
    with clean_cluster_target.conn_for_key(a) as conn:
        reply = conn.call(*command)
        assert isinstance(reply, ErrorReply) and reply.startswith("CROSSSLOT"), reply
        assert conn.call("PING") == "PONG"
    for key in (a, b):
        with clean_cluster_target.conn_for_key(key) as conn:
            assert conn.call("EXISTS", key) == 0


def test_mget_across_shards_returns_values_in_key_order(r):
    keys = keys_by_shard("mget", 3)
    missing = keys.pop(4)
    for key in keys:
        r.set(key, f"v:{key}")
    order = keys[::-1] + [missing] + keys[:2]
    expected = [None if k == missing else f"v:{k}" for k in order]
    assert r.mget(order) == expected


def test_del_exists_unlink_touch_count_across_shards(r):
    keys = keys_by_shard("count", 3)
    for key in keys:
        r.set(key, "x")
    missing = "count:missing"
    # EXISTS and TOUCH count a key named twice twice; DEL and UNLINK remove it once.
    assert r.exists(*keys, missing, keys[0]) == len(keys) + 1
    assert r.touch(*keys, missing, keys[1]) == len(keys) + 1
    assert r.unlink(keys[0], keys[1], keys[2], keys[0], missing) == 3
    assert r.delete(*keys, missing) == len(keys) - 3
    assert r.exists(*keys) == 0
    assert r.delete(*keys) == 0


@pytest.fixture(params=TARGETS)
def compat_target(request, spawn):
    """A proxy with cluster_compat = true (one shard, so keys of different slots share it), or
    a real Redis Cluster, which enforces the same rule."""
    if request.param == "proxy":
        return spawn.proxy(shards=1, cluster_compat=True)
    return request.getfixturevalue("redis_cluster")


def test_cluster_compat_refuses_different_slots_of_one_shard(compat_target):
    low, high = THREE_SHARD_RANGES[0]
    a, b = keys_in_range("compat", low, high, 2)
    assert key_slot(a) != key_slot(b)
    with compat_target.conn_for_key(a) as conn:
        for command in (("MGET", a, b), ("MSET", a, 1, b, 2), ("DEL", a, b), ("EXISTS", a, b), ("SUNIONSTORE", a, b)):
            reply = conn.call(*command)
            assert isinstance(reply, ErrorReply) and reply.startswith("CROSSSLOT"), (command, reply)
        tag = "{" + a + "}"
        assert conn.call("MSET", f"{tag}1", "x", f"{tag}2", "y") == "OK"
        assert conn.call("MGET", f"{tag}1", f"{tag}2", f"{tag}3") == [b"x", b"y", None]
        assert conn.call("DEL", f"{tag}1", f"{tag}2", f"{tag}3") == 2
