"""RESP2/RESP3 on the wire, HELLO, inline commands and pipelining: the bytes a client sees."""

import collections

import pytest

from harness import key_per_shard, key_slot, shard_of_slot
from resp import ErrorReply, RespMap, RespSet, encode_many

HELLO_FIELDS = {b"server", b"version", b"proto", b"id", b"mode", b"role", b"modules"}


def test_hello_3_replies_with_a_map_of_the_server_fields(target):
    with target.raw() as conn:
        reply = conn.call("HELLO", "3")
        assert conn.last_raw.startswith(b"%7\r\n"), conn.last_raw
        assert isinstance(reply, RespMap)
        assert set(reply) == HELLO_FIELDS
        assert reply[b"proto"] == 3
        assert reply[b"role"] == b"master"
        assert isinstance(reply[b"modules"], list)
        assert reply[b"id"] == conn.call("CLIENT", "ID")


def test_hello_2_replies_with_a_flat_array(target):
    with target.raw() as conn:
        reply = conn.call("HELLO", "2")
        assert conn.last_raw.startswith(b"*14\r\n"), conn.last_raw
        fields = dict(zip(reply[0::2], reply[1::2]))
        assert set(fields) == HELLO_FIELDS
        assert fields[b"proto"] == 2


def test_hello_with_an_unsupported_version_is_refused(target):
    with target.raw() as conn:
        reply = conn.call("HELLO", "4")
        assert isinstance(reply, ErrorReply) and reply.startswith("NOPROTO"), reply
        assert conn.call("PING") == "PONG"


def _fill_typed_keys(r):
    """A hash, a set and a sorted set, each in a different shard."""
    h, s, z = key_per_shard("resp3")
    r.hset(h, mapping={"f1": "v1", "f2": "v2"})
    r.sadd(s, "a", "b")
    r.zadd(z, {"m": 1.5})
    return h, s, z


def test_resp3_types_from_data_commands_on_the_wire(r, target):
    h, s, z = _fill_typed_keys(r)
    with target.raw() as conn:
        conn.call("HELLO", "3")
        assert conn.call("HGETALL", h) == {b"f1": b"v1", b"f2": b"v2"}
        assert conn.last_raw.startswith(b"%2\r\n"), conn.last_raw
        members = conn.call("SMEMBERS", s)
        assert isinstance(members, RespSet) and sorted(members) == [b"a", b"b"]
        assert conn.last_raw.startswith(b"~2\r\n"), conn.last_raw
        assert conn.call("ZSCORE", z, "m") == 1.5
        assert conn.last_raw == b",1.5\r\n"
        assert conn.call("GET", "resp3:missing") is None
        assert conn.last_raw == b"_\r\n"

        # HELLO 2 on the same connection switches every reply back to RESP2.
        conn.call("HELLO", "2")
        assert conn.call("HGETALL", h) is not None and conn.last_raw.startswith(b"*4\r\n")
        conn.call("SMEMBERS", s)
        assert conn.last_raw.startswith(b"*2\r\n")
        conn.call("ZSCORE", z, "m")
        assert conn.last_raw == b"$3\r\n1.5\r\n"
        conn.call("GET", "resp3:missing")
        assert conn.last_raw == b"$-1\r\n"


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_decodes_data_commands(r, target, protocol):
    h, s, z = _fill_typed_keys(r)
    client = target.client(protocol=protocol, decode_responses=True)
    try:
        assert f"resp={protocol}" in client.execute_command("CLIENT", "INFO")
        assert client.hgetall(h) == {"f1": "v1", "f2": "v2"}
        assert client.smembers(s) == {"a", "b"}
        assert client.zscore(z, "m") == 1.5
        assert [tuple(p) for p in client.zrange(z, 0, -1, withscores=True)] == [("m", 1.5)]
        assert client.get("resp3:missing") is None
    finally:
        client.close()


def test_hello_setname_names_the_connection(target):
    with target.raw() as conn:
        reply = conn.call("HELLO", "3", "SETNAME", "hello-named")
        assert isinstance(reply, RespMap) and reply[b"proto"] == 3
        assert conn.call("CLIENT", "GETNAME") == b"hello-named"
        assert conn.last_raw == b"$11\r\nhello-named\r\n"


def test_inline_commands(r, target):
    keys = key_per_shard("inline")
    with target.raw() as conn:
        conn.send_raw(b"PING\r\n")
        assert conn.read_reply() == "PONG" and conn.last_raw == b"+PONG\r\n"
        for key in keys:
            conn.send_raw(f"SET {key} value-of-{key}\r\n".encode())
            assert conn.read_reply() == "OK"
        for key in keys:
            conn.send_raw(f"GET {key}\r\n".encode())
            assert conn.read_reply() == f"value-of-{key}".encode()
        # Several inline commands in one write, with a quoted argument holding a space.
        conn.send_raw(b'SET "inline:quoted key" "a b"\r\nGET "inline:quoted key"\r\nECHO hi\r\n')
        assert conn.read_replies(3) == ["OK", b"a b", b"hi"]
    assert r.get("inline:quoted key") == "a b"


def test_ten_thousand_pipelined_commands_in_one_write(r, target):
    commands, expected = [], []
    counts = collections.Counter()
    for i in range(2500):
        key, counter = f"pipe:{i}", f"pipe:counter:{i % 30}"
        counts[counter] += 1
        commands += [("SET", key, f"v{i}"), ("GET", key), ("INCR", counter), ("GET", counter)]
        expected += ["OK", f"v{i}".encode(), counts[counter], str(counts[counter]).encode()]
    assert len(commands) == 10_000
    assert {shard_of_slot(key_slot(cmd[1])) for cmd in commands} == {0, 1, 2}

    with target.raw(timeout=60) as conn:
        sender = conn.send_in_background(encode_many(commands))
        replies = conn.read_replies(len(commands))
        sender.join(timeout=30)
        assert sender.error is None
    assert replies == expected


def test_pipeline_reads_see_the_same_clients_earlier_writes_on_every_shard(r, target):
    keys = key_per_shard("ryw")
    commands, expected = [], []
    for round_ in range(50):
        for key in keys:  # interleave the shards: each step touches all three
            commands += [
                ("SET", key, round_),
                ("INCRBY", key, 5),
                ("GET", key),
                ("APPEND", key, "x"),
                ("GET", key),
                ("RPUSH", f"{key}:list", round_),
                ("LINDEX", f"{key}:list", -1),
                ("DEL", key),
                ("EXISTS", key),
                ("GET", key),
            ]
            value = str(round_ + 5)
            expected += ["OK", round_ + 5, value.encode(), len(value) + 1, (value + "x").encode()]
            expected += [round_ + 1, str(round_).encode(), 1, 0, None]
    with target.raw(timeout=60) as conn:
        sender = conn.send_in_background(encode_many(commands))
        replies = conn.read_replies(len(commands))
        sender.join(timeout=30)
        assert sender.error is None
    assert replies == expected
