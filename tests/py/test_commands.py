"""Which commands the proxy serves, refuses, or does not know, and the exact errors it says."""

import pytest

from resp import ErrorReply

# Commands that would let a client reconfigure, stop, persist or re-topologize a Redis node
# behind the proxy's back: the proxy refuses them (stock Redis accepts them, so proxy-only).
REFUSED = [
    ("CONFIG", "SET", "save", ""),
    ("CONFIG", "SET", "replicaof", "127.0.0.1 1"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("REPLICAOF", "NO", "ONE"),
    ("SLAVEOF", "NO", "ONE"),
    ("SYNC",),
    ("PSYNC", "?", "-1"),
    ("MODULE", "LOAD", "/nonexistent/module.so"),
    ("SAVE",),
    ("BGSAVE",),
    ("BGREWRITEAOF",),
    ("MIGRATE", "127.0.0.1", "1", "k", "0", "1000"),
    ("FAILOVER",),
    ("CLUSTER", "ADDSLOTS", "1"),
    ("CLUSTER", "DELSLOTS", "1"),
    ("CLUSTER", "FAILOVER"),
    ("CLUSTER", "RESET"),
    ("CLUSTER", "SETSLOT", "1", "STABLE"),
    ("CLUSTER", "MEET", "127.0.0.1", "1"),
    ("CLUSTER", "FORGET", "0" * 40),
    ("CLUSTER", "REPLICATE", "0" * 40),
]


def assert_shards_untouched(proxy):
    """Every data node still answers, primaries are primaries, replicas still follow them and
    no setting was changed: a refused command must never reach Redis."""
    for node in proxy.backends:
        client = node.client(decode_responses=True)
        assert client.execute_command("ROLE")[0] == "master"
        assert client.config_get("maxmemory") == {"maxmemory": "0"}
    primaries = {node.port for node in proxy.backends}
    for node in proxy.replicas:
        role = node.client(decode_responses=True).execute_command("ROLE")
        assert role[0] == "slave" and role[2] in primaries, role


@pytest.mark.parametrize("command", REFUSED, ids=lambda cmd: "_".join(cmd[:2]).lower())
def test_admin_command_is_refused_and_the_connection_stays_usable(proxy, command):
    with proxy.raw() as conn:
        reply = conn.call(*command)
        assert isinstance(reply, ErrorReply) and reply.startswith("ERR"), reply
        assert command[0].lower() in reply.lower(), reply
        if command[0] == "CLUSTER":
            assert command[1].lower() in reply.lower(), reply
        assert conn.call("PING") == "PONG"
    assert_shards_untouched(proxy)


def test_unknown_command_error_matches_redis(target):
    with target.raw() as conn:
        assert conn.call("FOO", "a", "b") == "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        assert conn.call("nosuchcmd") == "ERR unknown command 'nosuchcmd', with args beginning with: "
        assert conn.call("CLIENT", "FOO") == "ERR unknown subcommand 'FOO'. Try CLIENT HELP."
        assert conn.call("PING") == "PONG"


@pytest.mark.parametrize(
    "command, name",
    [
        (("GET",), "get"),
        (("SET", "k"), "set"),
        (("HSET", "k", "f"), "hset"),
        (("MGET",), "mget"),
        (("CLIENT", "SETNAME"), "client|setname"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_wrong_arity_error_matches_redis(target, command, name):
    with target.raw() as conn:
        assert conn.call(*command) == f"ERR wrong number of arguments for '{name}' command"
        assert conn.call("PING") == "PONG"


@pytest.mark.parametrize("protocol", ["2", "3"])
def test_command_introspection(target, protocol):
    """COMMAND, COMMAND INFO and COMMAND COUNT, which cluster clients (redis-py RedisCluster)
    read at start-up to find the keys of each command, in RESP2 and RESP3."""
    with target.raw() as conn:
        conn.call("HELLO", protocol)
        count = conn.call("COMMAND", "COUNT")
        assert isinstance(count, int) and count > 200
        reply = conn.call("COMMAND", "INFO", "get")
        assert isinstance(reply, list) and len(reply) == 1, reply
        info = reply[0]
        assert info[0] == b"get" and info[1] == 2 and info[3:6] == [1, 1, 1], info
        everything = conn.call("COMMAND")
        assert isinstance(everything, list) and len(everything) == count, everything
        assert {entry[0] for entry in everything} >= {b"get", b"set", b"mget", b"cluster", b"client"}
        assert conn.call("COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == [b"a", b"b"]
