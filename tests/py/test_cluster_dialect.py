"""The Redis Cluster dialect, held to a real 3-node Redis Cluster: cluster-aware clients
(redis-py RedisCluster, `redis-cli -c`) and the CLUSTER introspection commands."""

import re
import subprocess

import pytest

from harness import SLOTS, key_per_shard, key_slot
from resp import ErrorReply


def _coverage(ranges):
    """How many times each slot is covered by the (low, high) ranges."""
    covered = [0] * SLOTS
    for low, high in ranges:
        for slot in range(low, high + 1):
            covered[slot] += 1
    return covered


def _pairs(flat):
    """A RESP2 flat [k1, v1, k2, v2, …] array as a dict with str keys."""
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in zip(flat[0::2], flat[1::2])}


def test_redis_py_cluster_client_set_get_mget_across_slots(rc):
    keys = [f"rc:{i}" for i in range(60)]
    for key in keys:
        assert rc.set(key, f"v:{key}") is True
    for key in keys:
        assert rc.get(key) == f"v:{key}"
    order = keys[::-1] + ["rc:missing"]
    assert rc.mget_nonatomic(order) == [f"v:{k}" for k in keys[::-1]] + [None]
    same_slot = ["{rc}a", "{rc}b"]
    assert rc.mset({same_slot[0]: "1", same_slot[1]: "2"}) is True
    assert rc.mget(same_slot) == ["1", "2"]
    assert rc.delete(*keys[:5]) == 5
    assert rc.exists(keys[0]) == 0


def test_redis_cli_in_cluster_mode_sets_and_gets_keys_of_every_shard(clean_cluster_target):
    def cli(*args):
        out = subprocess.run(
            ["redis-cli", "-c", "-h", clean_cluster_target.host, "-p", str(clean_cluster_target.port), *args],
            capture_output=True,
            timeout=15,
            check=True,
        )
        return out.stdout.decode().strip()

    keys = key_per_shard("cli")
    for key in keys:
        assert cli("SET", key, f"cli-{key}") == "OK"
    for key in keys:
        assert cli("GET", key) == f"cli-{key}"
        with clean_cluster_target.conn_for_key(key) as conn:
            assert conn.call("GET", key) == f"cli-{key}".encode()


def test_cluster_slots_covers_every_slot_once(cluster_target):
    with cluster_target.raw() as conn:
        entries = conn.call("CLUSTER", "SLOTS")
    assert isinstance(entries, list) and entries, entries
    assert _coverage((e[0], e[1]) for e in entries) == [1] * SLOTS
    for _low, _high, primary, *replicas in entries:
        assert re.fullmatch(rb"[0-9a-f]{40}", primary[2]), primary
        endpoints = {(node[0].decode(), node[1]) for node in [primary, *replicas]}
        if cluster_target.kind == "proxy":
            # Every slot is served at the proxy's own address: clients never bypass it.
            assert endpoints == {(cluster_target.host, cluster_target.port)}, entries
        else:
            assert (primary[0].decode(), primary[1]) in {(b.host, b.port) for b in cluster_target.backends}


def test_cluster_shards_cover_every_slot_once(cluster_target):
    with cluster_target.raw() as conn:
        shards = [_pairs(s) for s in conn.call("CLUSTER", "SHARDS")]
    ranges = []
    for shard in shards:
        slots = shard["slots"]
        ranges += list(zip(slots[0::2], slots[1::2]))
        nodes = [_pairs(n) for n in shard["nodes"]]
        assert any(n["role"] == b"master" for n in nodes), nodes
        for node in nodes:
            assert re.fullmatch(rb"[0-9a-f]{40}", node["id"]), node
            if cluster_target.kind == "proxy":
                assert node["port"] == cluster_target.port, node
    assert _coverage(ranges) == [1] * SLOTS


def _parse_cluster_nodes(text):
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        ranges = []
        for token in fields[8:]:
            if token.startswith("["):
                continue  # a slot being migrated or imported
            low, _, high = token.partition("-")
            ranges.append((int(low), int(high or low)))
        nodes.append(
            {"id": fields[0], "addr": fields[1].split("@")[0], "flags": fields[2].split(","), "ranges": ranges}
        )
    return nodes


def test_cluster_nodes_lists_myself_and_every_slot(cluster_target):
    with cluster_target.raw() as conn:
        nodes = _parse_cluster_nodes(conn.call("CLUSTER", "NODES").decode())
        myid = conn.call("CLUSTER", "MYID").decode()
    assert re.fullmatch(r"[0-9a-f]{40}", myid)
    myself = [n for n in nodes if "myself" in n["flags"]]
    assert len(myself) == 1 and myself[0]["id"] == myid
    assert myself[0]["addr"] == cluster_target.addr
    masters = [n for n in nodes if "master" in n["flags"]]
    assert _coverage(r for n in masters for r in n["ranges"]) == [1] * SLOTS
    if cluster_target.kind == "proxy":
        assert {n["addr"] for n in nodes} == {cluster_target.addr}


def test_cluster_info_reports_a_healthy_cluster(cluster_target):
    with cluster_target.raw() as conn:
        info = dict(line.split(":", 1) for line in conn.call("CLUSTER", "INFO").decode().split() if ":" in line)
    assert info["cluster_state"] == "ok"
    assert info["cluster_slots_assigned"] == "16384"
    assert info["cluster_slots_ok"] == "16384"


@pytest.mark.parametrize("key", ["foo", "bar", "{user1000}.following", "{}foo", "foo{}{bar}", "foo{{bar}}zap", "a{b}c"])
def test_cluster_keyslot(cluster_target, key):
    with cluster_target.raw() as conn:
        assert conn.call("CLUSTER", "KEYSLOT", key) == key_slot(key)


def test_cluster_keyslot_of_foo_is_12182(cluster_target):
    with cluster_target.raw() as conn:
        assert conn.call("CLUSTER", "KEYSLOT", "foo") == 12182


def test_countkeysinslot_and_getkeysinslot_in_every_shard(clean_cluster_target):
    for tag in key_per_shard("slotkeys"):
        keys = [f"{{{tag}}}:{n}" for n in ("a", "b", "c")]
        slot = key_slot(keys[0])
        with clean_cluster_target.conn_for_key(keys[0]) as conn:
            for key in keys:
                assert conn.call("SET", key, "x") == "OK"
            assert conn.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 3
            assert sorted(conn.call("CLUSTER", "GETKEYSINSLOT", slot, 10)) == sorted(k.encode() for k in keys)
            assert len(conn.call("CLUSTER", "GETKEYSINSLOT", slot, 2)) == 2
            empty_slot = (slot + 1) % SLOTS
            assert conn.call("CLUSTER", "COUNTKEYSINSLOT", empty_slot) == 0


def test_select_0_is_allowed_and_other_databases_are_not(cluster_target):
    with cluster_target.raw() as conn:
        assert conn.call("SELECT", "0") == "OK"
        reply = conn.call("SELECT", "1")
        assert isinstance(reply, ErrorReply) and reply == "ERR SELECT is not allowed in cluster mode", reply
        assert conn.call("PING") == "PONG"


def test_readonly_and_readwrite_are_accepted(cluster_target):
    with cluster_target.raw() as conn:
        assert conn.call("READONLY") == "OK"
        assert conn.call("READWRITE") == "OK"
