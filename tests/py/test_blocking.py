"""Blocking commands: BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP,
XREAD BLOCK and XREADGROUP BLOCK served at once, parked and woken by another client's write
(first blocked, first served), timeouts, CLIENT UNBLOCK, inside MULTI, and WAIT.

Every wait is bounded: a blocking command carries a timeout of seconds, not 0, unless the
test is about 0, and raw connections time out their reads, so a server that never wakes a
client fails the test instead of hanging the suite. "Blocked" is observed as Redis shows it:
the `b` flag of the client in `CLIENT LIST`.
"""

import select
import time
import uuid

import pytest

from harness import wait_until
from resp import ErrorReply

# Seconds a parked command may wait before its own timeout answers nil: far longer than a
# wake-up takes, far shorter than the suite's per-test timeout.
BLOCK_SECONDS = 10
READ_TIMEOUT = BLOCK_SECONDS + 5
UNBLOCKED_ERROR = "UNBLOCKED client unblocked via CLIENT UNBLOCK"


def blk_keys(*names):
    """Fresh key names sharing one hashtag `{blk-<uuid>}` (one slot, so multi-key blocking
    commands stay on one shard of the proxy)."""
    tag = uuid.uuid4().hex[:12]
    return [f"{{blk-{tag}}}{name}" for name in names]


def bulk(text):
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def array(*items):
    return b"*%d\r\n" % len(items) + b"".join(items)


def score(value, protocol):
    """A sorted-set score on the wire: a bulk string in RESP2, a double in RESP3."""
    return b",%s\r\n" % value.encode() if protocol == 3 else bulk(value)


def null_array(protocol):
    """What a blocking command answers when its timeout expires (RESP2 null array)."""
    return b"*-1\r\n" if protocol == 2 else b"_\r\n"


def client_fields(observer, client_id):
    """The CLIENT LIST fields of `client_id` as a dict, or None once it is not listed."""
    for line in observer.call("CLIENT", "LIST", "ID", client_id).decode().splitlines():
        fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
        if fields.get("id") == str(client_id):
            return fields
    return None


def wait_blocked(observer, client_id, command, timeout=5.0):
    """Waits until the server shows `client_id` blocked in `command` as Redis does: the flag `b`
    in CLIENT LIST. (`cmd=<command>` alone is not enough: a proxy may list the command before
    it has parked the client, and a push or CLIENT UNBLOCK sent then races with the parking.)"""

    def blocked():
        fields = client_fields(observer, client_id) or {}
        return "b" in fields.get("flags", "") and fields.get("cmd") == command.lower()

    wait_until(blocked, timeout, f"client {client_id} is not shown blocked (flags=b, cmd={command.lower()})")


def has_reply(conn, within):
    """True if the server sent `conn` something within `within` seconds (nothing is read)."""
    if conn.pos < len(conn.buf):
        return True
    readable, _, _ = select.select([conn.sock], [], [], within)
    return bool(readable)


class Waiter:
    """A raw connection that sends a blocking command and is then seen blocked."""

    def __init__(self, target, observer, protocol=2):
        self.conn = target.raw(timeout=READ_TIMEOUT)
        if protocol == 3:
            self.conn.call("HELLO", "3")
        self.id = self.conn.call("CLIENT", "ID")
        self.observer = observer

    def block(self, *command):
        self.conn.send(*command)
        wait_blocked(self.observer, self.id, command[0])
        return self

    def reply(self):
        """The reply to the blocking command (fails after READ_TIMEOUT rather than hanging)."""
        value = self.conn.read_reply()
        return value, self.conn.last_raw

    def close(self):
        self.conn.close()


@pytest.fixture
def observer(target):
    """A raw connection that watches CLIENT LIST and writes the data that wakes waiters."""
    with target.raw() as conn:
        yield conn


@pytest.fixture
def waiters(target, observer):
    """Creates Waiters on `target`, closed when the test ends."""
    made = []

    def make(protocol=2):
        waiter = Waiter(target, observer, protocol)
        made.append(waiter)
        return waiter

    yield make
    for waiter in made:
        waiter.close()


# --- data present: served at once ---------------------------------------------------------


def _immediate_cases(protocol, l, z, dst, none):
    """name -> (blocking command, expected reply bytes, check command, its expected reply)
    for every blocking pop, over a list l = [a, b, c], a zset z = {a:1, b:2, c:3} and the
    empty keys dst and none."""
    return {
        "blpop": (("BLPOP", none, l, "0"), array(bulk(l), bulk("a")), ("LRANGE", l, "0", "-1"), [b"b", b"c"]),
        "brpop": (("BRPOP", l, none, "0"), array(bulk(l), bulk("c")), ("LRANGE", l, "0", "-1"), [b"a", b"b"]),
        "blmove": (("BLMOVE", l, dst, "LEFT", "RIGHT", "0"), bulk("a"), ("LRANGE", dst, "0", "-1"), [b"a"]),
        "brpoplpush": (("BRPOPLPUSH", l, dst, "0"), bulk("c"), ("LRANGE", dst, "0", "-1"), [b"c"]),
        "blmpop": (
            ("BLMPOP", "0", "2", none, l, "RIGHT", "COUNT", "2"),
            array(bulk(l), array(bulk("c"), bulk("b"))),
            ("LRANGE", l, "0", "-1"),
            [b"a"],
        ),
        "bzpopmin": (("BZPOPMIN", none, z, "0"), array(bulk(z), bulk("a"), score("1", protocol)), ("ZCARD", z), 2),
        "bzpopmax": (("BZPOPMAX", z, "0"), array(bulk(z), bulk("c"), score("3", protocol)), ("ZCARD", z), 2),
        "bzmpop": (
            ("BZMPOP", "0", "2", none, z, "MIN", "COUNT", "2"),
            array(bulk(z), array(array(bulk("a"), score("1", protocol)), array(bulk("b"), score("2", protocol)))),
            ("ZRANGE", z, "0", "-1"),
            [b"c"],
        ),
    }


BLOCKING_POPS = ["blpop", "brpop", "blmove", "brpoplpush", "blmpop", "bzpopmin", "bzpopmax", "bzmpop"]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", BLOCKING_POPS)
def test_blocking_pop_with_data_present_answers_at_once(target, protocol, name):
    l, z, dst, none = blk_keys("l", "z", "dst", "none")
    command, wire, check, expected = _immediate_cases(protocol, l, z, dst, none)[name]
    with target.raw() as conn:
        conn.call("HELLO", protocol)
        assert conn.call("RPUSH", l, "a", "b", "c") == 3
        assert conn.call("ZADD", z, "1", "a", "2", "b", "3", "c") == 3
        conn.call(*command)
        assert conn.last_raw == wire
        assert conn.call(*check) == expected


# --- parked, then woken by another client --------------------------------------------------


def _wake_cases(protocol, src, dst, z):
    """name -> (blocking command, waking command, expected reply bytes, check command, its
    expected reply) over the lists src and dst and the zset z, all empty when it blocks."""
    t = str(BLOCK_SECONDS)
    return {
        "blpop": (("BLPOP", src, t), ("RPUSH", src, "v"), array(bulk(src), bulk("v")), ("EXISTS", src), 0),
        "brpop": (("BRPOP", src, t), ("RPUSH", src, "a", "b"), array(bulk(src), bulk("b")), ("LLEN", src), 1),
        "blmove": (
            ("BLMOVE", src, dst, "RIGHT", "LEFT", t),
            ("LPUSH", src, "v"),
            bulk("v"),
            ("LRANGE", dst, "0", "-1"),
            [b"v"],
        ),
        "brpoplpush": (
            ("BRPOPLPUSH", src, dst, t),
            ("LPUSH", src, "v"),
            bulk("v"),
            ("LRANGE", dst, "0", "-1"),
            [b"v"],
        ),
        "blmpop": (
            ("BLMPOP", t, "1", src, "RIGHT", "COUNT", "2"),
            ("RPUSH", src, "a", "b", "c"),
            array(bulk(src), array(bulk("c"), bulk("b"))),
            ("LRANGE", src, "0", "-1"),
            [b"a"],
        ),
        "bzpopmin": (
            ("BZPOPMIN", z, t),
            ("ZADD", z, "1", "a", "2", "b"),
            array(bulk(z), bulk("a"), score("1", protocol)),
            ("ZRANGE", z, "0", "-1"),
            [b"b"],
        ),
        "bzpopmax": (
            ("BZPOPMAX", z, t),
            ("ZADD", z, "1", "a", "2", "b"),
            array(bulk(z), bulk("b"), score("2", protocol)),
            ("ZRANGE", z, "0", "-1"),
            [b"a"],
        ),
        "bzmpop": (
            ("BZMPOP", t, "1", z, "MAX", "COUNT", "5"),
            ("ZADD", z, "1", "a", "2", "b"),
            array(bulk(z), array(array(bulk("b"), score("2", protocol)), array(bulk("a"), score("1", protocol)))),
            ("EXISTS", z),
            0,
        ),
    }


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", BLOCKING_POPS)
def test_blocked_pop_is_woken_by_another_clients_push(target, observer, waiters, protocol, name):
    src, dst, z = blk_keys("src", "dst", "z")
    command, wake, wire, check, expected = _wake_cases(protocol, src, dst, z)[name]
    waiter = waiters(protocol).block(*command)
    pusher = target.client()
    try:
        pusher.execute_command(*wake)
        _, raw = waiter.reply()
        assert raw == wire
        assert observer.call(*check) == expected
        assert waiter.conn.call("PING") == "PONG"
    finally:
        pusher.close()


def test_a_blocked_client_is_flagged_b_in_client_list(target, observer, waiters):
    """Monitoring (and these tests' own waits on Redis) tell a blocked client by the flag `b`."""
    (k,) = blk_keys("k")
    waiter = waiters().block("BLPOP", k, BLOCK_SECONDS)
    wait_until(
        lambda: "b" in client_fields(observer, waiter.id)["flags"],
        5.0,
        "a client blocked in BLPOP has no flag b in CLIENT LIST",
    )
    assert client_fields(observer, waiter.id)["cmd"] == "blpop"
    assert observer.call("RPUSH", k, "x") == 1
    assert waiter.reply()[0] == [k.encode(), b"x"]
    assert "b" not in client_fields(observer, waiter.id)["flags"]


def test_blocked_on_several_keys_is_woken_by_the_key_that_gets_data(target, observer, waiters):
    first, second = blk_keys("first", "second")
    waiter = waiters().block("BLPOP", first, second, BLOCK_SECONDS)
    assert observer.call("RPUSH", second, "x") == 1
    assert waiter.reply()[0] == [second.encode(), b"x"]
    assert observer.call("EXISTS", first, second) == 0


def test_two_clients_blocked_on_one_list_are_served_in_blocking_order(target, observer, waiters):
    """First blocked, first served: one `LPUSH k a b` (list b, a) gives the head `b` to the
    client that blocked first and `a` to the second; a third blocked client gets nothing."""
    (k,) = blk_keys("k")
    first = waiters().block("BLPOP", k, BLOCK_SECONDS)
    second = waiters().block("BLPOP", k, BLOCK_SECONDS)
    third = waiters().block("BLPOP", k, BLOCK_SECONDS)
    pusher = target.client()
    try:
        assert pusher.lpush(k, "a", "b") == 2
    finally:
        pusher.close()
    assert first.reply()[0] == [k.encode(), b"b"]
    assert second.reply()[0] == [k.encode(), b"a"]
    assert observer.call("EXISTS", k) == 0
    # The third client is still parked: the next element is its.
    assert observer.call("RPUSH", k, "c") == 1
    assert third.reply()[0] == [k.encode(), b"c"]


def test_blocked_client_is_woken_by_a_push_inside_another_clients_transaction(target, observer, waiters):
    (k,) = blk_keys("k")
    waiter = waiters().block("BRPOP", k, BLOCK_SECONDS)
    pusher = target.client()
    try:
        with pusher.pipeline(transaction=True) as pipe:
            pipe.rpush(k, "a").rpush(k, "b")
            assert pipe.execute() == [1, 2]
    finally:
        pusher.close()
    assert waiter.reply()[0] == [k.encode(), b"b"]
    assert observer.call("LRANGE", k, "0", "-1") == [b"a"]


def test_blmove_into_a_list_wakes_the_client_blocked_on_that_list(target, observer, waiters):
    src, dst = blk_keys("src", "dst")
    mover = waiters().block("BLMOVE", src, dst, "LEFT", "RIGHT", BLOCK_SECONDS)
    popper = waiters().block("BLPOP", dst, BLOCK_SECONDS)
    assert observer.call("RPUSH", src, "x") == 1
    assert mover.reply()[0] == b"x"
    assert popper.reply()[0] == [dst.encode(), b"x"]
    assert observer.call("EXISTS", src, dst) == 0


def test_a_blocked_client_that_disconnects_takes_no_element(target, observer, waiters):
    """The element pushed after a blocked client went away stays in the list."""
    (k,) = blk_keys("k")
    waiter = waiters().block("BLPOP", k, BLOCK_SECONDS)
    waiter.close()
    wait_until(lambda: client_fields(observer, waiter.id) is None, 5.0, "the closed client is still listed")
    assert observer.call("RPUSH", k, "kept") == 1
    assert observer.call("LRANGE", k, "0", "-1") == [b"kept"]


# --- timeouts -------------------------------------------------------------------------------


def _timeout_command(name, timeout, l, dst, z, s):
    """The blocking command `name` over empty keys with `timeout` (seconds; XREAD's BLOCK is
    given the same text, which it reads as milliseconds)."""
    return {
        "blpop": ("BLPOP", l, timeout),
        "brpop": ("BRPOP", l, timeout),
        "blmove": ("BLMOVE", l, dst, "LEFT", "RIGHT", timeout),
        "brpoplpush": ("BRPOPLPUSH", l, dst, timeout),
        "blmpop": ("BLMPOP", timeout, "1", l, "LEFT"),
        "bzpopmin": ("BZPOPMIN", z, timeout),
        "bzpopmax": ("BZPOPMAX", z, timeout),
        "bzmpop": ("BZMPOP", timeout, "1", z, "MIN"),
        "xread": ("XREAD", "BLOCK", timeout, "STREAMS", s, "$"),
    }[name]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", [*BLOCKING_POPS, "xread"])
def test_timeout_answers_nil_after_the_timeout(target, protocol, name):
    keys = blk_keys("l", "dst", "z", "s")
    timeout = "300" if name == "xread" else "0.3"
    with target.raw(timeout=READ_TIMEOUT) as conn:
        conn.call("HELLO", protocol)
        started = time.monotonic()
        assert conn.call(*_timeout_command(name, timeout, *keys)) is None
        elapsed = time.monotonic() - started
        assert conn.last_raw == null_array(protocol)
        assert 0.25 <= elapsed < 3.0, f"answered after {elapsed:.2f}s for a 0.3s timeout"
        assert conn.call("PING") == "PONG"


def test_timeout_0_blocks_until_data_arrives(target, observer, waiters):
    """0 means forever: still blocked, with nothing sent, well past any default; then woken."""
    (k,) = blk_keys("k")
    waiter = waiters().block("BLPOP", k, "0")
    assert not has_reply(waiter.conn, within=1.5), "BLPOP with timeout 0 answered without data"
    assert observer.call("RPUSH", k, "late") == 1
    assert waiter.reply()[0] == [k.encode(), b"late"]


@pytest.mark.parametrize(
    "name, timeout, error",
    [
        ("blpop", "-1", "ERR timeout is negative"),
        ("brpoplpush", "-0.5", "ERR timeout is negative"),
        ("blmove", "-1", "ERR timeout is negative"),
        ("blmpop", "-1", "ERR timeout is negative"),
        ("bzpopmin", "-1", "ERR timeout is negative"),
        ("bzmpop", "-1", "ERR timeout is negative"),
        ("blpop", "soon", "ERR timeout is not a float or out of range"),
        ("bzpopmax", "1x", "ERR timeout is not a float or out of range"),
        ("xread", "-1", "ERR timeout is negative"),
        ("xread", "soon", "ERR timeout is not an integer or out of range"),
    ],
)
def test_negative_or_invalid_timeout_is_an_error(target, name, timeout, error):
    l, dst, z, s = blk_keys("l", "dst", "z", "s")
    with target.raw() as conn:
        assert conn.call("RPUSH", l, "untouched") == 1
        assert conn.call(*_timeout_command(name, timeout, l, dst, z, s)) == error
        assert conn.call("LRANGE", l, "0", "-1") == [b"untouched"]
        assert conn.call("PING") == "PONG"


# --- streams --------------------------------------------------------------------------------


def _stream_reply(stream, entry_id, field, value, protocol):
    """XREAD/XREADGROUP's reply with one entry: an array of [stream, entries] in RESP2, a map
    stream -> entries in RESP3."""
    entries = array(array(bulk(entry_id), array(bulk(field), bulk(value))))
    if protocol == 3:
        return b"%1\r\n" + bulk(stream) + entries
    return array(array(bulk(stream), entries))


@pytest.mark.parametrize("protocol", [2, 3])
def test_xread_block_dollar_is_woken_by_xadd_with_only_the_new_entry(target, observer, waiters, protocol):
    (s,) = blk_keys("s")
    assert observer.call("XADD", s, "*", "old", "1")
    waiter = waiters(protocol).block("XREAD", "COUNT", "10", "BLOCK", BLOCK_SECONDS * 1000, "STREAMS", s, "$")
    pusher = target.client()
    try:
        new_id = pusher.xadd(s, {"f": "v"}).decode()
    finally:
        pusher.close()
    _, raw = waiter.reply()
    assert raw == _stream_reply(s, new_id, "f", "v", protocol)


@pytest.mark.parametrize("protocol", [2, 3])
def test_xreadgroup_block_new_entries_is_woken_and_the_entry_is_pending(target, observer, waiters, protocol):
    (s,) = blk_keys("s")
    assert observer.call("XADD", s, "*", "before", "group")
    assert observer.call("XGROUP", "CREATE", s, "g", "$") == "OK"
    waiter = waiters(protocol).block("XREADGROUP", "GROUP", "g", "c1", "BLOCK", BLOCK_SECONDS * 1000, "STREAMS", s, ">")
    new_id = observer.call("XADD", s, "*", "f", "w").decode()
    _, raw = waiter.reply()
    assert raw == _stream_reply(s, new_id, "f", "w", protocol)
    assert observer.call("XPENDING", s, "g") == [1, new_id.encode(), new_id.encode(), [[b"c1", b"1"]]]


# --- CLIENT UNBLOCK -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("reason", [None, "TIMEOUT", "ERROR"])
def test_client_unblock(target, observer, waiters, protocol, reason):
    """CLIENT UNBLOCK answers 1 and the blocked client gets its timeout reply (nil) or, with
    ERROR, the -UNBLOCKED error; it takes no element pushed afterwards."""
    (k,) = blk_keys("k")
    waiter = waiters(protocol).block("BLPOP", k, BLOCK_SECONDS)
    reason_args = () if reason is None else (reason,)
    assert observer.call("CLIENT", "UNBLOCK", waiter.id, *reason_args) == 1
    assert observer.last_raw == b":1\r\n"
    value, raw = waiter.reply()
    if reason == "ERROR":
        assert raw == b"-" + UNBLOCKED_ERROR.encode() + b"\r\n"
        assert isinstance(value, ErrorReply)
    else:
        assert raw == null_array(protocol)
    assert waiter.conn.call("PING") == "PONG"
    assert observer.call("RPUSH", k, "kept") == 1
    assert observer.call("LRANGE", k, "0", "-1") == [b"kept"]


def test_client_unblock_of_a_blocked_xread(target, observer, waiters):
    (s,) = blk_keys("s")
    waiter = waiters().block("XREAD", "BLOCK", BLOCK_SECONDS * 1000, "STREAMS", s, "$")
    assert observer.call("CLIENT", "UNBLOCK", waiter.id, "ERROR") == 1
    assert waiter.reply()[0] == UNBLOCKED_ERROR


def test_client_unblock_of_a_client_that_is_not_blocked(target, observer):
    with target.raw() as idle:
        idle_id = idle.call("CLIENT", "ID")
        assert observer.call("CLIENT", "UNBLOCK", idle_id) == 0
        assert observer.call("CLIENT", "UNBLOCK", idle_id, "ERROR") == 0
        assert observer.call("CLIENT", "UNBLOCK", 987654321) == 0
        assert observer.call("CLIENT", "UNBLOCK", idle_id, "SOON") == (
            "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"
        )
        assert observer.call("CLIENT", "UNBLOCK", "nobody") == "ERR value is not an integer or out of range"
        assert idle.call("PING") == "PONG"


# --- inside MULTI ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_blocking_commands_inside_multi_do_not_block(target, protocol):
    """Inside a transaction a blocking command runs as its non-blocking form, even with
    timeout 0: empty keys give nil at once, a list with data is popped."""
    full, empty, dst, z, s = blk_keys("full", "empty", "dst", "z", "s")
    nil = b"_\r\n" if protocol == 3 else None
    with target.raw(timeout=READ_TIMEOUT) as conn:
        conn.call("HELLO", protocol)
        assert conn.call("RPUSH", full, "x") == 1
        assert conn.call("MULTI") == "OK"
        commands = [
            ("BLPOP", empty, "0"),
            ("BLMOVE", empty, dst, "LEFT", "RIGHT", "0"),
            ("BLMPOP", "0", "1", empty, "LEFT"),
            ("BZPOPMIN", z, "0"),
            ("BZMPOP", "0", "1", z, "MIN"),
            ("XREAD", "BLOCK", "0", "STREAMS", s, "$"),
            ("BRPOP", full, "0"),
        ]
        for command in commands:
            assert conn.call(*command) == "QUEUED"
        started = time.monotonic()
        conn.call("EXEC")
        assert time.monotonic() - started < 2.0
        # BLMOVE's empty answer is LMOVE's null bulk string ($-1), the others' a null array.
        nils = [
            nil or b"*-1\r\n",
            nil or b"$-1\r\n",
            nil or b"*-1\r\n",
            nil or b"*-1\r\n",
            nil or b"*-1\r\n",
            nil or b"*-1\r\n",
        ]
        assert conn.last_raw == array(*nils, array(bulk(full), bulk("x")))
        assert conn.call("EXISTS", full, dst) == 0


# --- WAIT -----------------------------------------------------------------------------------


def test_wait_answers_an_integer_without_hanging(target):
    """WAIT's count depends on the deployment (replicas of stock Redis, journal nodes of
    memlog); it is an integer, answered within its timeout, and a negative timeout is refused."""
    (k,) = blk_keys("k")
    with target.raw() as conn:
        assert conn.call("SET", k, "v") == "OK"
        assert isinstance(conn.call("WAIT", "0", "0"), int)
        started = time.monotonic()
        acknowledged = conn.call("WAIT", "5", "200")
        assert isinstance(acknowledged, int) and acknowledged >= 0
        assert time.monotonic() - started < 3.0
        assert conn.call("WAIT", "1", "-1") == "ERR timeout is negative"
        assert conn.call("WAIT") == "ERR wrong number of arguments for 'wait' command"


def test_wait_counts_the_journal_nodes_that_acknowledged(proxy):
    """Proxy-only: WAIT answers how many journal nodes hold the client's last write; with all
    three healthy that is all three, and at least the ack quorum at once."""
    assert len(proxy.journal_nodes) == 3, "the shared proxy runs with 3 journal nodes"
    (k,) = blk_keys("k")
    with proxy.raw() as conn:
        assert conn.call("SET", k, "v") == "OK"
        assert conn.call("WAIT", "3", "5000") == 3
        assert conn.call("WAIT", "2", "1000") in (2, 3)


@pytest.mark.proxy_only
def test_wait_with_a_journal_node_down_counts_the_others(spawn):
    """Proxy-only: with one of three journal nodes killed, a write still commits (ack quorum
    2) and WAIT 3 gives up after its timeout, answering 2."""
    proxy = spawn.proxy(shards=1, replicas=0)
    proxy.journal_nodes[2].proc.kill9()
    (k,) = blk_keys("k")
    with proxy.raw() as conn:
        assert conn.call("SET", k, "v") == "OK"
        started = time.monotonic()
        assert conn.call("WAIT", "3", "500") == 2
        assert 0.4 <= time.monotonic() - started < 5.0
