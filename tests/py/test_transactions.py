"""MULTI/EXEC/DISCARD and WATCH/UNWATCH: the replies byte for byte in RESP2 and RESP3, the
errors Redis gives at queue time and at run time, optimistic locking against other clients,
expiry and FLUSHALL, and redis-py's pipelines and `transaction()` retry loop.

Every test runs against the proxy and stock Redis (which is shared, so keys are unique per
test and share one hashtag: a transaction on the proxy must stay within one slot).
"""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from harness import key_per_shard
from resp import ErrorReply

QUEUED = b"+QUEUED\r\n"
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


@pytest.fixture
def other(target):
    """A second client (redis-py), the other party of a WATCH."""
    client = target.client()
    yield client
    client.close()


def tx_keys(*names):
    """Fresh key names sharing one hashtag `{tx-<uuid>}`, so they live in one slot."""
    tag = uuid.uuid4().hex[:12]
    return [f"{{tx-{tag}}}{name}" for name in names]


def bulk(text):
    """`text` as a RESP bulk string on the wire."""
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def queue(conn, *command):
    """Sends one command inside MULTI and checks it is answered `+QUEUED`, byte for byte."""
    reply = conn.call(*command)
    assert conn.last_raw == QUEUED, (command, reply)


def nil_exec(protocol):
    """The wire form of the nil EXEC reply of an aborted (WATCHed) transaction."""
    return b"*-1\r\n" if protocol == 2 else b"_\r\n"


@pytest.mark.parametrize("protocol", [2, 3])
def test_exec_replies_byte_exact(target, protocol):
    """Each queued command answers +QUEUED and EXEC answers the array of their replies, in
    the protocol's own types (maps, doubles, nulls and sets in RESP3)."""
    k, h, z, missing = tx_keys("k", "h", "z", "missing")
    resp3 = protocol == 3
    steps = [
        (("SET", k, "1"), b"+OK\r\n"),
        (("INCR", k), b":2\r\n"),
        (("GET", k), bulk("2")),
        (("HSET", h, "f", "v"), b":1\r\n"),
        (("HGETALL", h), (b"%1\r\n" if resp3 else b"*2\r\n") + bulk("f") + bulk("v")),
        (("ZADD", z, "1.5", "m"), b":1\r\n"),
        (("ZSCORE", z, "m"), b",1.5\r\n" if resp3 else bulk("1.5")),
        (("GET", missing), b"_\r\n" if resp3 else b"$-1\r\n"),
        (("SMEMBERS", missing), b"~0\r\n" if resp3 else b"*0\r\n"),
        (("PING",), b"+PONG\r\n"),
        (("ECHO", "hi"), bulk("hi")),
    ]
    with target.raw() as conn:
        conn.call("HELLO", protocol)
        assert conn.call("MULTI") == "OK" and conn.last_raw == b"+OK\r\n"
        for command, _ in steps:
            queue(conn, *command)
        conn.call("EXEC")
        assert conn.last_raw == b"*%d\r\n" % len(steps) + b"".join(wire for _, wire in steps)
        assert conn.call("GET", k) == b"2"


@pytest.mark.parametrize("protocol", [2, 3])
def test_commands_whose_outcome_depends_on_earlier_writes_of_the_transaction(target, protocol):
    """SPOP, INCRBYFLOAT, HINCRBYFLOAT, XADD *, a blocking pop and SPOP with a count after
    writes to the same keys inside one MULTI: each answers what Redis answers after those
    writes (memlog works the outcome out on the primary without changing it, then journals it)."""
    s, f, h, x, l, many = tx_keys("s", "f", "h", "x", "l", "many")
    with target.raw() as conn:
        conn.call("HELLO", protocol)
        assert conn.call("MULTI") == "OK"
        for command in [
            ("SADD", s, "only"),
            ("SPOP", s),
            ("SET", f, "1.5"),
            ("INCRBYFLOAT", f, "1"),
            ("INCRBYFLOAT", f, "0.25"),
            ("HSET", h, "n", "10"),
            ("HINCRBYFLOAT", h, "n", "0.5"),
            ("XADD", x, "5-1", "a", "1"),
            ("XADD", x, "*", "b", "2"),
            ("RPUSH", l, "a", "b"),
            ("BLPOP", l, "1"),
            ("SADD", many, "m1", "m2"),
            ("SPOP", many, "5"),
            ("SCARD", many),
        ]:
            queue(conn, *command)
        replies = conn.call("EXEC")
        assert replies[:8] == [1, b"only", "OK", b"2.5", b"2.75", 1, b"10.5", b"5-1"], replies
        assert tuple(map(int, replies[8].decode().split("-"))) > (5, 1), replies[8]
        assert replies[9:12] == [2, [l.encode(), b"a"], 2], replies
        assert sorted(replies[12]) == [b"m1", b"m2"] and replies[13] == 0, replies
        # The transaction's effects are what Redis leaves.
        assert conn.call("EXISTS", s, many) == 0
        assert conn.call("GET", f) == b"2.75"
        assert conn.call("HGET", h, "n") == b"10.5"
        assert conn.call("XLEN", x) == 2
        assert conn.call("LRANGE", l, "0", "-1") == [b"b"]


def test_time_inside_multi_is_the_servers_clock(target):
    """TIME may be queued like any read; EXEC answers seconds and microseconds of now."""
    (k,) = tx_keys("k")
    with target.raw() as conn:
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", k, "1")
        queue(conn, "TIME")
        ok, (seconds, micros) = conn.call("EXEC")
        assert ok == "OK"
        assert abs(int(seconds) - time.time()) < 60 and 0 <= int(micros) < 1_000_000


def test_empty_transaction_and_exec_or_discard_without_multi(target):
    with target.raw() as conn:
        assert conn.call("EXEC") == "ERR EXEC without MULTI"
        assert conn.call("DISCARD") == "ERR DISCARD without MULTI"
        assert conn.call("MULTI") == "OK"
        assert conn.call("EXEC") == [] and conn.last_raw == b"*0\r\n"
        assert conn.call("EXEC") == "ERR EXEC without MULTI"


def test_discard_drops_the_queued_commands(target):
    (k,) = tx_keys("k")
    with target.raw() as conn:
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", k, "queued")
        assert conn.call("DISCARD") == "OK" and conn.last_raw == b"+OK\r\n"
        assert conn.call("GET", k) is None
        assert conn.call("EXEC") == "ERR EXEC without MULTI"
        assert conn.call("DISCARD") == "ERR DISCARD without MULTI"


def test_nested_multi_is_an_error_that_does_not_abort_the_transaction(target):
    (k,) = tx_keys("k")
    with target.raw() as conn:
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", k, "v")
        assert conn.call("MULTI") == "ERR MULTI calls can not be nested"
        assert conn.last_raw == b"-ERR MULTI calls can not be nested\r\n"
        assert conn.call("EXEC") == ["OK"]
        assert conn.call("GET", k) == b"v"


@pytest.mark.parametrize("protocol", [2, 3])
def test_runtime_error_sits_in_the_exec_array_and_the_other_commands_apply(target, protocol):
    """A command that fails when it runs (WRONGTYPE) does not roll back the transaction:
    its error takes its place in the EXEC array and every other command is applied."""
    s, counter, after = tx_keys("string", "counter", "after")
    with target.raw() as conn:
        conn.call("HELLO", protocol)
        assert conn.call("SET", s, "text") == "OK"
        assert conn.call("MULTI") == "OK"
        queue(conn, "INCR", counter)
        queue(conn, "LPUSH", s, "x")
        queue(conn, "SET", after, "applied")
        queue(conn, "GET", s)
        reply = conn.call("EXEC")
        assert conn.last_raw == b"*4\r\n:1\r\n-" + WRONGTYPE.encode() + b"\r\n+OK\r\n" + bulk("text")
        assert isinstance(reply[1], ErrorReply)
        assert conn.call("GET", counter) == b"1"
        assert conn.call("GET", after) == b"applied"
        assert conn.call("TYPE", s) == "string"


@pytest.mark.parametrize(
    "bad_command, error",
    [
        (("NOSUCHCOMMAND", "x"), "ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' "),
        (("GET",), "ERR wrong number of arguments for 'get' command"),
        (("SET", "only-a-key"), "ERR wrong number of arguments for 'set' command"),
    ],
    ids=["unknown", "arity-get", "arity-set"],
)
def test_queue_time_error_aborts_the_whole_transaction(target, bad_command, error):
    """An unknown command or a wrong arity is refused when queued, and EXEC then discards
    everything (EXECABORT) without applying the commands that were queued fine."""
    before, after = tx_keys("before", "after")
    with target.raw() as conn:
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", before, "1")
        assert conn.call(*bad_command) == error
        queue(conn, "SET", after, "1")
        assert conn.call("EXEC") == EXECABORT
        assert conn.last_raw == b"-" + EXECABORT.encode() + b"\r\n"
        assert conn.call("EXISTS", before, after) == 0
        # The transaction is over: the connection is back to normal.
        assert conn.call("EXEC") == "ERR EXEC without MULTI"
        assert conn.call("SET", before, "2") == "OK"


@pytest.mark.parametrize("protocol", [2, 3])
def test_watch_aborted_by_another_clients_write(target, other, protocol):
    k, out = tx_keys("k", "out")
    with target.raw() as conn:
        conn.call("HELLO", protocol)
        assert conn.call("SET", k, "0") == "OK"
        assert conn.call("WATCH", k) == "OK" and conn.last_raw == b"+OK\r\n"
        assert other.set(k, "theirs")
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "mine")
        queue(conn, "SET", k, "mine")
        assert conn.call("EXEC") is None
        assert conn.last_raw == nil_exec(protocol)
        assert conn.call("GET", k) == b"theirs"
        assert conn.call("EXISTS", out) == 0


def test_watch_of_a_missing_key_aborted_when_another_client_creates_it(target, other):
    k, out = tx_keys("k", "out")
    with target.raw() as conn:
        assert conn.call("WATCH", k) == "OK"
        assert other.lpush(k, "x") == 1
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "1")
        assert conn.call("EXEC") is None
        assert conn.call("EXISTS", out) == 0


def test_watch_aborted_by_the_clients_own_write_to_the_watched_key(target):
    """Redis aborts even when the write to the watched key came from the watching client."""
    k, out = tx_keys("k", "out")
    with target.raw() as conn:
        assert conn.call("WATCH", k) == "OK"
        assert conn.call("SET", k, "own") == "OK"
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "1")
        assert conn.call("EXEC") is None
        assert conn.call("EXISTS", out) == 0


@pytest.mark.parametrize("protocol", [2, 3])
def test_watch_aborted_by_expiry(target, protocol):
    """A watched key that expires before EXEC aborts the transaction, although no client
    touched it: nobody reads the key in between (a read would delete it, which is a write)."""
    k, out = tx_keys("k", "out")
    with target.raw() as conn:
        conn.call("HELLO", protocol)
        assert conn.call("SET", k, "v", "PX", "2000") == "OK"
        assert conn.call("WATCH", k) == "OK"
        remaining_ms = conn.call("PTTL", k)
        assert remaining_ms > 0, f"{k} already expired when WATCHed ({remaining_ms}): the server is too slow"
        # Only time can make the key expire; wait until it certainly has (no key access).
        time.sleep(remaining_ms / 1000 + 0.1)
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "1")
        assert conn.call("EXEC") is None
        assert conn.last_raw == nil_exec(protocol)
        assert conn.call("EXISTS", k, out) == 0


def test_watch_aborted_by_flushall(target, other):
    k, out = tx_keys("k", "out")
    with target.raw() as conn:
        assert conn.call("SET", k, "v") == "OK"
        assert conn.call("WATCH", k) == "OK"
        assert other.flushall()
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "1")
        assert conn.call("EXEC") is None
        assert conn.call("EXISTS", out) == 0


def test_watch_not_aborted_by_own_reads_or_writes_to_other_keys(target, other):
    """Reads of the watched key (by anyone) and writes to other keys (by anyone, even in the
    same slot) leave a WATCH intact."""
    k, neighbour, out = tx_keys("k", "neighbour", "out")
    with target.raw() as conn:
        assert conn.call("SET", k, "v") == "OK"
        assert conn.call("WATCH", k) == "OK"
        assert conn.call("GET", k) == b"v"
        assert conn.call("EXISTS", k) == 1
        assert other.get(k) == b"v"
        assert conn.call("SET", neighbour, "own") == "OK"
        assert other.set(neighbour, "theirs")
        assert other.incr(out + ":unrelated") == 1
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "1")
        queue(conn, "GET", k)
        assert conn.call("EXEC") == ["OK", b"v"]
        assert conn.call("GET", out) == b"1"


def test_unwatch_exec_and_discard_forget_the_watched_keys(target, other):
    k, out = tx_keys("k", "out")
    with target.raw() as conn:
        # UNWATCH: a later write no longer aborts.
        assert conn.call("WATCH", k) == "OK"
        assert conn.call("UNWATCH") == "OK" and conn.last_raw == b"+OK\r\n"
        assert other.set(k, "1")
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "a")
        assert conn.call("EXEC") == ["OK"]
        # EXEC (even an aborted one) unwatches everything.
        assert conn.call("WATCH", k) == "OK"
        assert other.set(k, "2")
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "b")
        assert conn.call("EXEC") is None
        assert other.set(k, "3")
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "c")
        assert conn.call("EXEC") == ["OK"]
        # DISCARD unwatches too.
        assert conn.call("WATCH", k) == "OK"
        assert conn.call("MULTI") == "OK"
        assert conn.call("DISCARD") == "OK"
        assert other.set(k, "4")
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", out, "d")
        assert conn.call("EXEC") == ["OK"]
        assert conn.call("GET", out) == b"d"
        # UNWATCH without any WATCH is fine.
        assert conn.call("UNWATCH") == "OK"


def test_watch_inside_multi_is_an_error_that_does_not_abort_the_transaction(target, other):
    k, out = tx_keys("k", "out")
    with target.raw() as conn:
        assert conn.call("MULTI") == "OK"
        assert conn.call("WATCH", k) == "ERR WATCH inside MULTI is not allowed"
        queue(conn, "SET", out, "1")
        # The refused WATCH watches nothing.
        assert other.set(k, "x")
        assert conn.call("EXEC") == ["OK"]


def test_keys_of_several_shards_in_one_transaction_are_refused_with_crossslot(proxy):
    """Proxy-only (stock Redis has one keyspace; a Redis Cluster node answers MOVED instead): a
    transaction may only touch one shard, so the first command that reaches another shard is
    refused at queue time, and EXEC then discards the whole transaction."""
    first, second, _ = key_per_shard(f"tx-{uuid.uuid4().hex[:12]}")
    with proxy.raw() as conn:
        assert conn.call("MULTI") == "OK"
        queue(conn, "SET", first, "1")
        reply = conn.call("SET", second, "1")
        assert isinstance(reply, ErrorReply) and reply.startswith("CROSSSLOT"), reply
        assert conn.call("EXEC") == EXECABORT
        # One command that spans shards on its own is refused the same way.
        assert conn.call("MULTI") == "OK"
        reply = conn.call("MSET", first, "2", second, "2")
        assert isinstance(reply, ErrorReply) and reply.startswith("CROSSSLOT"), reply
        assert conn.call("EXEC") == EXECABORT
        assert conn.call("EXISTS", first) == 0
        assert conn.call("EXISTS", second) == 0


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_transactional_pipeline(target, protocol):
    """redis-py's `pipeline(transaction=True)` sends MULTI … EXEC in one write and maps the
    EXEC array back to the commands, runtime errors included."""
    k, h, s = tx_keys("k", "h", "s")
    client = target.client(protocol=protocol, decode_responses=True)
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.set(k, "1").incrby(k, 41).hset(h, mapping={"a": "1", "b": "2"}).hgetall(h)
            pipe.sadd(s, "x", "y").scard(s).get(k)
            assert pipe.execute() == [True, 42, 2, {"a": "1", "b": "2"}, 2, 2, "42"]
        with client.pipeline(transaction=True) as pipe:
            pipe.incr(k).lpush(k, "wrong").get(k)
            results = pipe.execute(raise_on_error=False)
            assert results[0] == 43 and results[2] == "43"
            assert isinstance(results[1], redis.ResponseError) and str(results[1]).startswith("WRONGTYPE"), results
        with client.pipeline(transaction=True) as pipe:
            pipe.set(k, "0").lpush(k, "wrong")
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                pipe.execute()
        assert client.get(k) == "0"
    finally:
        client.close()


def test_transaction_helper_retries_under_contention_and_loses_no_increment(target):
    """4 threads increment one counter with GET + SET inside redis-py's `transaction()` (WATCH,
    retry on abort). All threads read the same value before their first EXEC, so at least 3
    of them must be aborted and retry; the final count is exact."""
    (counter,) = tx_keys("counter")
    threads, increments = 4, 50
    barrier = threading.Barrier(threads, timeout=20)
    attempts = []
    attempts_lock = threading.Lock()

    def worker():
        client = target.client()
        first_attempt = [True]

        def increment(pipe):
            with attempts_lock:
                attempts.append(1)
            value = int(pipe.get(counter) or 0)
            if first_attempt[0]:
                first_attempt[0] = False
                barrier.wait()
            pipe.multi()
            pipe.set(counter, value + 1)

        try:
            for _ in range(increments):
                client.transaction(increment, counter)
        finally:
            client.close()

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        for future in futures:
            future.result(timeout=80)
    check = target.client()
    try:
        assert int(check.get(counter)) == threads * increments
    finally:
        check.close()
    retries = len(attempts) - threads * increments
    assert retries >= threads - 1, f"only {retries} aborted attempts: WATCH did not abort concurrent EXECs"
