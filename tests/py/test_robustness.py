"""Bad clients, limits and faults: garbage bytes, oversized requests, maxclients, a Redis
shard killed under the proxy, and a SIGTERM while a pipeline is in flight."""

import random
import signal
import socket
import time

import pytest

import harness
from conftest import MAX_MULTIBULK_LEN, PROTO_MAX_BULK_LEN, TARGETS
from harness import even_ranges, keys_in_range, wait_until
from resp import ConnectionClosed, ErrorReply, encode, encode_many


def assert_still_serving(endpoint, bystander):
    """A connection opened before the incident, and a new one, both still work."""
    assert bystander.call("PING") == "PONG"
    assert bystander.call("SET", "robust:bystander", "ok") == "OK"
    with endpoint.raw() as fresh:
        assert fresh.call("GET", "robust:bystander") == b"ok"


GARBAGE = {
    "bad_multibulk_length": b"*abc\r\n",
    "negative_bulk_length": b"*1\r\n$-5\r\n",
    "integer_instead_of_bulk": b"*2\r\n$3\r\nGET\r\n:12\r\n",
    "binary_junk_in_multibulk": b"*1\r\n\xff\xfe\xfd\xfc\x01\r\n",
    "bulk_length_not_a_number": b"*1\r\n$x1\r\nGET\r\n",
    "unbalanced_quotes_inline": b'SET "robust:k v\r\n',
}


@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_gets_a_protocol_error_and_only_that_connection_is_closed(target, payload):
    with target.raw() as bystander, target.raw() as bad:
        assert bystander.call("PING") == "PONG"
        bad.send_raw(payload)
        reply = bad.read_reply()
        assert isinstance(reply, ErrorReply) and reply.startswith("ERR Protocol error"), reply
        assert bad.is_closed_by_peer(timeout=5)
        assert_still_serving(target, bystander)


def _send_oversized(conn, head, tail):
    """Sends an oversized request's header, then (if the server has not answered within a
    second) the rest; a server may refuse on the header alone, as Redis does."""
    conn.send_raw(head)
    if conn.is_closed_by_peer(timeout=1.0) is False and len(conn.buf) == conn.pos:
        try:
            conn.send_raw(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_bulk_longer_than_proto_max_bulk_len_is_refused(target):
    size = PROTO_MAX_BULK_LEN + 1
    with target.raw() as bystander, target.raw() as big:
        assert bystander.call("PING") == "PONG"
        head = b"*3\r\n" + encode("SET", "robust:big")[len(b"*2\r\n") :] + b"$%d\r\n" % size
        _send_oversized(big, head, b"x" * size + b"\r\n")
        reply = big.read_reply()
        assert reply == "ERR Protocol error: invalid bulk length", reply
        assert big.is_closed_by_peer(timeout=5)
        assert_still_serving(target, bystander)
        assert bystander.call("EXISTS", "robust:big") == 0


def test_bulk_at_proto_max_bulk_len_is_accepted(target):
    with target.raw() as conn:
        value = b"y" * PROTO_MAX_BULK_LEN
        conn.send_raw(encode("SET", "robust:max", value))
        assert conn.read_reply() == "OK"
        assert conn.call("STRLEN", "robust:max") == PROTO_MAX_BULK_LEN


def test_more_arguments_than_max_multibulk_len_are_refused(proxy):
    """Proxy-only: stock Redis has no such setting (its limit is INT_MAX arguments)."""
    count = MAX_MULTIBULK_LEN + 1
    with proxy.raw() as bystander, proxy.raw() as big:
        assert bystander.call("PING") == "PONG"
        args = [b"MGET"] + [b"robust:%d" % i for i in range(count - 1)]
        request = encode(*args)
        head_end = request.index(b"\r\n") + 2
        _send_oversized(big, request[:head_end], request[head_end:])
        reply = big.read_reply()
        assert isinstance(reply, ErrorReply) and reply.startswith("ERR Protocol error"), reply
        # Whether the server closes the connection or skips the request, it must not
        # misread the arguments as commands: the next thing it says is not a stray reply.
        if not big.is_closed_by_peer(timeout=1.0):
            assert big.call("PING") == "PONG"
        assert_still_serving(proxy, bystander)


@pytest.fixture(params=TARGETS)
def limited_target(request, spawn):
    """A proxy or a stock Redis that serves at most 5 clients."""
    if request.param == "proxy":
        return spawn.proxy(shards=1, maxclients=5)
    return spawn.redis(["--maxclients", "5"])


def _served_connection(endpoint, timeout=5.0):
    """A new connection that PINGs successfully; retried while an earlier, closed connection
    may still hold its slot on the server."""

    def attempt():
        conn = endpoint.raw()
        try:
            if conn.call("PING") == "PONG":
                return conn
        except (ConnectionClosed, OSError):
            pass
        conn.close()
        return None

    return wait_until(attempt, timeout, "no client slot became free")


def test_maxclients_refuses_the_next_connection(limited_target):
    conns = [_served_connection(limited_target) for _ in range(5)]
    try:
        with limited_target.raw() as extra:
            reply = extra.read_reply()
            assert reply == "ERR max number of clients reached"
            assert extra.is_closed_by_peer(timeout=5)
        assert all(conn.call("PING") == "PONG" for conn in conns)
        conns.pop().close()
        conns.append(_served_connection(limited_target))
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.proxy_only
def test_killed_shard_fails_fast_other_shards_serve_and_it_recovers(spawn):
    """Proxy-only: kill -9 one shard's Redis (no replica to fail over to); its commands wait
    for the hold time and then get an error (no hang), the other shard is unaffected, and once
    Redis is back on its port the proxy reconnects by itself (and rebuilds it from the journal)."""
    proxy = spawn.proxy(
        shards=2,
        replicas=0,
        backend_timeout_ms=1000,
        connect_timeout_ms=200,
        failover={"hold_ms": 1000},
        journal={"write_wait_ms": 1000},
    )
    (low0, high0), (low1, high1) = even_ranges(2)
    doomed_key = keys_in_range("fault:a", low0, high0)[0]
    healthy_key = keys_in_range("fault:b", low1, high1)[0]
    doomed = proxy.backends[0]
    with proxy.raw() as conn:
        assert conn.call("SET", doomed_key, "1") == "OK"
        assert conn.call("SET", healthy_key, "2") == "OK"
        doomed.proc.kill9()
        for command in (("GET", doomed_key), ("SET", doomed_key, "x"), ("GET", doomed_key)):
            started = time.monotonic()
            reply = conn.call(*command)
            assert isinstance(reply, ErrorReply), (command, reply)
            assert time.monotonic() - started < 3.0, f"{command} took {time.monotonic() - started:.1f}s"
            assert conn.call("GET", healthy_key) == b"2"
            if command[0] == "SET":
                # What the rebuild below must restore: "1" if this write was refused, "x" if the
                # proxy says it is committed in the journal (and will be applied from there).
                if reply.startswith("TRYAGAIN"):
                    expected = b"1"
                elif reply.startswith("ERR memlog: the write is committed in the journal"):
                    expected = b"x"
                else:
                    raise AssertionError(f"SET during the outage answered {reply!r}")
        with proxy.raw() as fresh:
            assert fresh.call("GET", healthy_key) == b"2"

        restarted = harness.restart_redis(spawn.processes, doomed)
        assert restarted.port == doomed.port

        def serves_again():
            reply = conn.call("GET", doomed_key)
            return None if isinstance(reply, ErrorReply) else [reply]

        # The restarted Redis is empty: the first value the shard serves must be the one written
        # before the restart, rebuilt from the journal.
        [restored] = wait_until(serves_again, 15.0, "the proxy did not reconnect to the restarted shard", interval=0.1)
        assert restored == expected, (restored, expected)
        assert conn.call("SET", doomed_key, "back") == "OK"
        assert conn.call("GET", doomed_key) == b"back"
        assert conn.call("GET", healthy_key) == b"2"


def _tcp_queues(local_port, remote_port=None):
    """(send queue, receive queue) bytes summed over the established loopback TCP sockets
    with this local port (and remote port), from /proc/net/tcp: how much a peer has not yet
    acknowledged, and how much the owning process has not yet read."""
    tx = rx = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = (int(addr.split(":")[1], 16) for addr in fields[1:3])
            if local == local_port and fields[3] == "01" and remote_port in (None, remote):
                queued_tx, queued_rx = (int(n, 16) for n in fields[4].split(":"))
                tx, rx = tx + queued_tx, rx + queued_rx
    return tx, rx


def _not_serving(endpoint):
    """True when a new client cannot get a PONG: refused, closed, an error, or no answer."""
    try:
        with endpoint.raw(timeout=1.0) as conn:
            return conn.call("PING") != "PONG"
    except (OSError, ConnectionClosed):
        return True


@pytest.mark.proxy_only
def test_sigterm_drains_a_pipeline_in_flight_then_exits_0(spawn):
    """Proxy-only: the Redis behind the proxy is frozen (SIGSTOP), so when SIGTERM arrives the
    pipeline has provably been read by the proxy (nothing left in the client's send queue or
    the proxy's receive queue) and is partly forwarded but unanswered; the client still gets
    every reply, then the proxy exits with status 0."""
    proxy = spawn.proxy(shards=1, replicas=0, backend_timeout_ms=30_000, shutdown_grace_ms=20_000)
    backend = proxy.backends[0]
    commands, expected = [], []
    for i in range(1000):
        commands += [("SET", f"drain:{i}", i), ("GET", f"drain:{i}")]
        expected += ["OK", str(i).encode()]
    with proxy.raw(timeout=30) as conn:
        assert conn.call("PING") == "PONG"
        backend.proc.signal(signal.SIGSTOP)
        try:
            conn.send_raw(encode_many(commands))
            client_port = conn.sock.getsockname()[1]

            def in_flight_inside_the_proxy():
                unsent, _ = _tcp_queues(client_port, proxy.port)
                _, unread = _tcp_queues(proxy.port, client_port)
                _, forwarded = _tcp_queues(backend.port)
                return unsent == 0 and unread == 0 and forwarded > 0

            wait_until(in_flight_inside_the_proxy, 10.0, "the proxy did not read and forward the pipeline")
            proxy.proc.signal(signal.SIGTERM)
            wait_until(lambda: _not_serving(proxy), 10.0, "the proxy still serves new clients after SIGTERM")
            assert proxy.proc.alive(), "the proxy exited with requests in flight"
        finally:
            backend.proc.signal(signal.SIGCONT)
        assert conn.read_replies(len(commands)) == expected
    assert proxy.proc.wait_exit(timeout=25) == 0, proxy.proc.log_tail()
    # Nothing a client was told about was lost on the way out.
    assert backend.client().get("drain:999") == b"999"


@pytest.mark.proxy_only
def test_frozen_shard_times_out_without_blocking_other_shards(spawn):
    """Proxy-only: a SIGSTOPped Redis (open sockets, no answers: a gray failure) makes its own
    commands time out with an error, while the other shard keeps answering promptly."""
    proxy = spawn.proxy(shards=2, replicas=0, backend_timeout_ms=1000)
    (low0, high0), (low1, high1) = even_ranges(2)
    frozen_key = keys_in_range("gray:a", low0, high0)[0]
    healthy_key = keys_in_range("gray:b", low1, high1)[0]
    frozen = proxy.backends[0]
    with proxy.raw() as slow, proxy.raw() as fast:
        assert fast.call("SET", healthy_key, "v") == "OK"
        frozen.proc.signal(signal.SIGSTOP)
        try:
            slow.send("GET", frozen_key)
            started = time.monotonic()
            for _ in range(20):
                assert fast.call("GET", healthy_key) == b"v"
            assert time.monotonic() - started < 1.0
            reply = slow.read_reply()
            assert isinstance(reply, ErrorReply), reply
            assert time.monotonic() - started < 3.0
        finally:
            frozen.proc.signal(signal.SIGCONT)
        wait_until(lambda: slow.call("GET", frozen_key) is None, 10.0, "the shard did not come back after SIGCONT")


def test_client_vanishing_mid_request_disturbs_nothing(target):
    """A client that vanishes mid-request (half a command, then close) does not disturb the
    server: the next client is served normally."""
    sock = socket.create_connection((target.host, target.port), timeout=5)
    sock.sendall(b"*3\r\n$3\r\nSET\r\n$10\r\nrobust:cut\r\n$100\r\nonly-part")
    sock.close()
    with target.raw() as conn:
        assert conn.call("PING") == "PONG"
        assert conn.call("EXISTS", "robust:cut") == 0


def test_random_bytes_never_bring_the_server_down(target):
    """200 connections each send seeded random bytes (some shaped like RESP headers) and hang
    up; the server survives and serves the next client."""
    rng = random.Random(20261122)
    prefixes = [b"", b"*", b"*2\r\n", b"*2\r\n$", b"*1\r\n$3\r\nGET\r\n", b"$", b"%", b">"]
    with target.raw() as bystander:
        assert bystander.call("PING") == "PONG"
        for _ in range(200):
            junk = rng.choice(prefixes) + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            with socket.create_connection((target.host, target.port), timeout=5) as sock:
                sock.sendall(junk)
        assert target.proc.alive()
        assert_still_serving(target, bystander)
