"""Pub/sub through the proxy, held to stock Redis: SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE and their
UNSUBSCRIBEs byte for byte in RESP2 and RESP3, PUBLISH/SPUBLISH receiver counts, RESP2
subscriber mode, PUBSUB introspection, channels and patterns spanning the 3 shards, keyspace
notifications born in every shard, and a slow subscriber cut off at its output limit.

Channel and key names are unique per test: the stock Redis is shared by the whole session.
"""

import json
import socket
import time
import uuid

import pytest

import harness
from conftest import TARGETS
from resp import ErrorReply, Push, RespConn

REFUSAL = (
    "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
)
WAIT = 10.0


def unique(prefix):
    """A channel or key name no other test (nor an earlier run on the shared Redis) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bulk(value):
    """`value` as a RESP bulk string."""
    value = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(value), value)


def frame(proto, *items):
    """A pub/sub frame as Redis writes it: a `*` array in RESP2, a `>` push in RESP3; str and
    bytes items are bulk strings, ints are integers, None is a null."""
    out = [b"%s%d\r\n" % (b"*" if proto == 2 else b">", len(items))]
    for item in items:
        if item is None:
            out.append(b"$-1\r\n" if proto == 2 else b"_\r\n")
        elif isinstance(item, int):
            out.append(b":%d\r\n" % item)
        else:
            out.append(bulk(item))
    return b"".join(out)


def read_raw(conn):
    """The next frame's exact bytes."""
    conn.read_reply()
    return conn.last_raw


def subscriber(target, proto):
    """A raw connection speaking RESP `proto` (2 or 3)."""
    conn = target.raw()
    if proto == 3:
        assert isinstance(conn.call("HELLO", "3"), dict)
    return conn


def numsub(client, channel, sharded=False):
    """How many clients are subscribed to `channel` (PUBSUB NUMSUB / SHARDNUMSUB)."""
    reply = client.execute_command("PUBSUB", "SHARDNUMSUB" if sharded else "NUMSUB", channel)
    return int(reply[1])


# --- SUBSCRIBE / PUBLISH / UNSUBSCRIBE on the wire ---------------------------------------------


@pytest.mark.parametrize("proto", [2, 3])
def test_subscribe_publish_unsubscribe_bytes(target, proto):
    a, b = unique("ps-a"), unique("ps-b")
    with subscriber(target, proto) as sub, target.raw() as pub:
        sub.send("SUBSCRIBE", a, b)
        assert read_raw(sub) == frame(proto, "subscribe", a, 1)
        assert read_raw(sub) == frame(proto, "subscribe", b, 2)
        # Subscribing again to a channel changes nothing but is confirmed.
        sub.send("SUBSCRIBE", a)
        assert read_raw(sub) == frame(proto, "subscribe", a, 2)
        assert pub.call("PUBLISH", a, "hello") == 1
        assert read_raw(sub) == frame(proto, "message", a, "hello")
        assert pub.call("PUBLISH", b, b"bin\x00\r\nary") == 1
        assert read_raw(sub) == frame(proto, "message", b, b"bin\x00\r\nary")
        assert pub.call("PUBLISH", unique("ps-nobody"), "x") == 0
        sub.send("UNSUBSCRIBE", a, unique("ps-never"))
        assert read_raw(sub) == frame(proto, "unsubscribe", a, 1)
        assert sub.read_reply()[2] == 1
        assert pub.call("PUBLISH", a, "gone") == 0
        sub.send("UNSUBSCRIBE")
        assert read_raw(sub) == frame(proto, "unsubscribe", b, 0)
        sub.send("UNSUBSCRIBE")
        assert read_raw(sub) == frame(proto, "unsubscribe", None, 0)
        sub.send("PUNSUBSCRIBE")
        assert read_raw(sub) == frame(proto, "punsubscribe", None, 0)
        sub.send("SUNSUBSCRIBE")
        assert read_raw(sub) == frame(proto, "sunsubscribe", None, 0)
        # Out of subscriber mode: a plain PONG again.
        assert sub.call("PING") == "PONG" and sub.last_raw == b"+PONG\r\n"


def test_resp3_subscriber_runs_any_command_between_pushes(target):
    channel, key = unique("ps-r3"), unique("ps-r3-key")
    with subscriber(target, 3) as sub:
        sub.send("SUBSCRIBE", channel)
        assert isinstance(sub.read_reply(), Push)
        assert sub.call("SET", key, "v") == "OK"
        assert sub.call("GET", key) == b"v"
        assert sub.call("PING") == "PONG"
        # Its own PUBLISH: the message is pushed before the receiver count, as Redis orders them.
        sub.send("PUBLISH", channel, "self")
        assert read_raw(sub) == frame(3, "message", channel, "self")
        assert sub.read_reply() == 1
        assert sub.call("DEL", key) == 1


def test_patterns_and_counts(target):
    prefix = unique("ps-pat")
    channel = f"{prefix}.news"
    with target.raw() as sub, target.raw() as pub:
        sub.send("SUBSCRIBE", channel)
        assert sub.read_reply() == [b"subscribe", channel.encode(), 1]
        sub.send("PSUBSCRIBE", f"{prefix}.*", f"{prefix}.*", f"{prefix}.n?ws")
        assert read_raw(sub) == frame(2, "psubscribe", f"{prefix}.*", 2)
        assert read_raw(sub) == frame(2, "psubscribe", f"{prefix}.*", 2)
        assert read_raw(sub) == frame(2, "psubscribe", f"{prefix}.n?ws", 3)
        # The channel subscription first, then one pmessage per matching pattern.
        assert pub.call("PUBLISH", channel, "m") == 3
        assert read_raw(sub) == frame(2, "message", channel, "m")
        pmessages = sorted(sub.read_replies(2))
        assert pmessages == [
            [b"pmessage", f"{prefix}.*".encode(), channel.encode(), b"m"],
            [b"pmessage", f"{prefix}.n?ws".encode(), channel.encode(), b"m"],
        ]
        assert pub.call("PUBLISH", f"{prefix}.other", "o") == 1
        assert read_raw(sub) == frame(2, "pmessage", f"{prefix}.*", f"{prefix}.other", "o")
        sub.send("PUNSUBSCRIBE")
        assert read_raw(sub) == frame(2, "punsubscribe", f"{prefix}.*", 2)
        assert read_raw(sub) == frame(2, "punsubscribe", f"{prefix}.n?ws", 1)
        sub.send("UNSUBSCRIBE")
        assert read_raw(sub) == frame(2, "unsubscribe", channel, 0)


def test_shard_channels_count_apart(target):
    prefix = unique("ps-count")
    with target.raw() as sub:
        sub.send("SSUBSCRIBE", f"{{{prefix}}}x", f"{{{prefix}}}y")
        assert [r[2] for r in sub.read_replies(2)] == [1, 2]
        sub.send("SUBSCRIBE", f"{prefix}c")
        assert read_raw(sub) == frame(2, "subscribe", f"{prefix}c", 1)
        sub.send("SUNSUBSCRIBE", f"{{{prefix}}}x")
        assert read_raw(sub) == frame(2, "sunsubscribe", f"{{{prefix}}}x", 1)
        sub.send("SUNSUBSCRIBE")
        assert read_raw(sub) == frame(2, "sunsubscribe", f"{{{prefix}}}y", 0)
        # Still subscribed to a channel: still in subscriber mode.
        assert sub.call("GET", "k") == REFUSAL.format("get")
        sub.send("UNSUBSCRIBE")
        assert read_raw(sub) == frame(2, "unsubscribe", f"{prefix}c", 0)
        assert sub.call("GET", unique("ps-count-key")) is None


def test_messages_published_before_an_unsubscribe_come_before_its_confirmation(target):
    channel = unique("ps-order")
    with target.raw() as sub, target.raw() as pub:
        sub.send("SUBSCRIBE", channel)
        sub.read_reply()
        for i in range(50):
            assert pub.call("PUBLISH", channel, str(i)) == 1
        sub.send("UNSUBSCRIBE", channel)
        assert sub.read_replies(50) == [[b"message", channel.encode(), str(i).encode()] for i in range(50)]
        assert read_raw(sub) == frame(2, "unsubscribe", channel, 0)
        assert pub.call("PUBLISH", channel, "late") == 0
        assert sub.call("PING") == "PONG"


def test_client_kill_of_a_subscriber_ends_its_subscriptions(target):
    channel = unique("ps-kill")
    client = target.client()
    with target.raw() as sub:
        subscriber_id = sub.call("CLIENT", "ID")
        sub.send("SUBSCRIBE", channel)
        sub.read_reply()
        assert client.client_kill_filter(_id=subscriber_id) == 1
        assert sub.is_closed_by_peer()
    harness.wait_until(lambda: numsub(client, channel) == 0, WAIT, "a killed subscriber stayed subscribed")
    assert client.publish(channel, "x") == 0
    client.close()


# --- RESP2 subscriber mode ------------------------------------------------------------------------


def test_resp2_subscriber_mode_refusals(target):
    channel = unique("ps-mode")
    with target.raw() as sub:
        sub.send("SUBSCRIBE", channel)
        sub.read_reply()
        assert sub.call("GET", "k") == REFUSAL.format("get")
        assert sub.call("client", "LIST") == REFUSAL.format("client|list")
        assert sub.call("PUBSUB", "CHANNELS") == REFUSAL.format("pubsub|channels")
        assert sub.call("PUBLISH", channel, "x") == REFUSAL.format("publish")
        assert sub.call("HELLO", "3") == REFUSAL.format("hello")
        # Errors Redis checks first still come first.
        assert sub.call("GET") == "ERR wrong number of arguments for 'get' command"
        assert isinstance(sub.call("NOSUCHCOMMAND"), ErrorReply)
        sub.send("PING")
        assert read_raw(sub) == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        sub.send("PING", "hi")
        assert read_raw(sub) == b"*2\r\n$4\r\npong\r\n$2\r\nhi\r\n"
        sub.send("PSUBSCRIBE", f"{channel}*")
        assert read_raw(sub) == frame(2, "psubscribe", f"{channel}*", 2)
        # RESET leaves every subscription silently.
        assert sub.call("RESET") == "RESET"
        assert sub.call("PING") == "PONG"
        assert sub.call("PUBSUB", "NUMSUB", channel) == [channel.encode(), 0]
        assert sub.call("PUBLISH", channel, "x") == 0


def test_quit_in_subscriber_mode(target):
    channel = unique("ps-quit")
    with target.raw() as sub:
        sub.send("SUBSCRIBE", channel)
        sub.read_reply()
        assert sub.call("QUIT") == "OK"
        assert sub.is_closed_by_peer()


# --- channels and patterns across the shards ------------------------------------------------------


def test_channels_and_patterns_in_every_shard(target):
    prefix = unique("ps-shards")
    channels = harness.key_per_shard(prefix)
    assert {harness.shard_of_slot(harness.key_slot(c)) for c in channels} == {0, 1, 2}
    client = target.client()
    by_pattern = client.pubsub()
    by_pattern.psubscribe(f"{prefix}:*")
    assert by_pattern.get_message(timeout=WAIT)["type"] == "psubscribe"
    by_channel = client.pubsub()
    by_channel.subscribe(*channels)
    for _ in channels:
        assert by_channel.get_message(timeout=WAIT)["type"] == "subscribe"
    try:
        for i, channel in enumerate(channels):
            assert client.publish(channel, f"m{i}") == 2
            got = by_pattern.get_message(timeout=WAIT)
            assert got == {
                "type": "pmessage",
                "pattern": f"{prefix}:*".encode(),
                "channel": channel.encode(),
                "data": f"m{i}".encode(),
            }
            got = by_channel.get_message(timeout=WAIT)
            assert got == {"type": "message", "pattern": None, "channel": channel.encode(), "data": f"m{i}".encode()}
        listed = client.pubsub_channels(f"{prefix}:*")
        assert sorted(listed) == sorted(c.encode() for c in channels)
        assert client.pubsub_numsub(*channels) == [(c.encode(), 1) for c in channels]
    finally:
        by_pattern.close()
        by_channel.close()
        client.close()


def test_glob_patterns_match_as_redis(target):
    """PUBSUB CHANNELS <pattern> over channels chosen to exercise every glob rule."""
    p = unique("ps-glob")
    names = ["hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "ha", "he", "h]llo", "h-llo"]
    expected = {
        "h?llo": {"hello", "hallo", "hxllo", "h*llo", "h]llo", "h-llo"},
        "h*llo": {"hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "h]llo", "h-llo"},
        "h**llo": {"hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "h]llo", "h-llo"},
        "h[ae]llo": {"hello", "hallo"},
        "h[^e]llo": {"hallo", "hxllo", "h*llo", "h]llo", "h-llo"},
        "h[b-a]llo": {"hallo"},
        "h[\\]]llo": {"h]llo"},
        # A range ending in `]` leaves the class open to the end of the pattern.
        "h[a-]llo": {"ha"},
        "h\\*llo": {"h*llo"},
        "h[ae": {"ha", "he"},
        "h*": set(names),
        "*e": {"he"},
    }
    with target.raw() as sub, target.raw() as probe:
        sub.send("SUBSCRIBE", *[f"{p}:{n}" for n in names])
        sub.read_replies(len(names))
        for pattern, want in expected.items():
            got = probe.call("PUBSUB", "CHANNELS", f"{p}:{pattern}")
            assert sorted(got) == sorted(f"{p}:{n}".encode() for n in want), pattern


def test_sharded_pubsub_across_shards(target):
    prefix = unique("ps-sharded")
    channels = harness.key_per_shard(prefix)
    subs = [target.raw() for _ in channels]
    try:
        for sub, channel in zip(subs, channels):
            sub.send("SSUBSCRIBE", channel)
            assert read_raw(sub) == frame(2, "ssubscribe", channel, 1)
        with target.raw() as watcher, target.raw() as pub:
            # Patterns never receive shard messages.
            watcher.send("PSUBSCRIBE", f"{prefix}*")
            watcher.read_reply()
            for i, (sub, channel) in enumerate(zip(subs, channels)):
                assert pub.call("SPUBLISH", channel, f"s{i}") == 1
                assert read_raw(sub) == frame(2, "smessage", channel, f"s{i}")
            assert pub.call("PUBSUB", "SHARDNUMSUB", *channels) == [x for c in channels for x in (c.encode(), 1)]
            assert sorted(pub.call("PUBSUB", "SHARDCHANNELS", f"{prefix}*")) == sorted(c.encode() for c in channels)
            assert pub.call("PUBSUB", "CHANNELS", f"{prefix}*") == []
            assert pub.call("PUBLISH", channels[0], "plain") == 1
            assert read_raw(watcher) == frame(2, "pmessage", f"{prefix}*", channels[0], "plain")
        # Several shard channels of one slot in one SSUBSCRIBE.
        tagged = [f"{{{prefix}}}:a", f"{{{prefix}}}:b"]
        subs[0].send("SSUBSCRIBE", *tagged)
        assert [r[2] for r in subs[0].read_replies(2)] == [2, 3]
    finally:
        for sub in subs:
            sub.close()


def test_ssubscribe_across_slots_is_crossslot(cluster_target):
    prefix = unique("ps-cross")
    a, b = harness.key_per_shard(prefix)[:2]
    host, port = cluster_target.node_for_slot(harness.key_slot(a))
    with RespConn(host, port) as conn:
        assert conn.call("SSUBSCRIBE", a, b) == "CROSSSLOT Keys in request don't hash to the same slot"
        assert conn.call("SPUBLISH", a, "x") == 0
        assert conn.call("PING") == "PONG"


# --- PUBSUB introspection -------------------------------------------------------------------------


def test_pubsub_introspection(target):
    prefix = unique("ps-intro")
    client = target.client()
    before = client.pubsub_numpat()
    subs = [target.raw() for _ in range(3)]
    try:
        subs[0].send("SUBSCRIBE", f"{prefix}:a", f"{prefix}:b")
        subs[1].send("SUBSCRIBE", f"{prefix}:a")
        subs[2].send("PSUBSCRIBE", f"{prefix}:*", f"{prefix}:?")
        for sub, n in zip(subs, [2, 1, 2]):
            sub.read_replies(n)
        assert client.execute_command("PUBSUB", "NUMSUB", f"{prefix}:a", f"{prefix}:b", f"{prefix}:c") == [
            f"{prefix}:a".encode(),
            2,
            f"{prefix}:b".encode(),
            1,
            f"{prefix}:c".encode(),
            0,
        ]
        assert client.execute_command("PUBSUB", "NUMSUB") == []
        assert client.pubsub_numpat() == before + 2
        assert sorted(client.pubsub_channels(f"{prefix}:*")) == [f"{prefix}:a".encode(), f"{prefix}:b".encode()]
        assert f"{prefix}:a".encode() in client.pubsub_channels()
        with target.raw() as conn:
            msg = "ERR unknown subcommand or wrong number of arguments for 'channels'. Try PUBSUB HELP."
            assert conn.call("PUBSUB", "channels", "a", "b") == msg
            assert conn.call("PUBSUB", "NUMPAT", "x") == "ERR wrong number of arguments for 'pubsub|numpat' command"
            help_lines = conn.call("PUBSUB", "HELP")
            assert help_lines[0].startswith("PUBSUB <subcommand>") and "NUMSUB [<channel> ...]" in help_lines
            conn.call("HELLO", "3")
            assert conn.call("PUBSUB", "NUMSUB", f"{prefix}:b") == [f"{prefix}:b".encode(), 1]
            assert conn.last_raw.startswith(b"*2\r\n")
    finally:
        for sub in subs:
            sub.close()
    # A closed connection's subscriptions go with it.
    harness.wait_until(lambda: numsub(client, f"{prefix}:a") == 0, WAIT, "subscriptions outlived their connection")
    harness.wait_until(
        lambda: client.pubsub_numpat() == before, WAIT, "pattern subscriptions outlived their connection"
    )
    client.close()


def test_publish_follows_the_publishers_earlier_write(target):
    """A subscriber that reads the key named in a message sees the write made before it."""
    channel, key = unique("ps-causal"), unique("ps-causal-key")
    client = target.client()
    with target.raw() as sub, target.raw() as pub:
        sub.send("SUBSCRIBE", channel)
        sub.read_reply()
        for i in range(20):
            pub.send_raw(
                b"".join(
                    [
                        b"*3\r\n$3\r\nSET\r\n" + bulk(key) + bulk(str(i)),
                        b"*3\r\n$7\r\nPUBLISH\r\n" + bulk(channel) + bulk(str(i)),
                    ]
                )
            )
            assert sub.read_reply() == [b"message", channel.encode(), str(i).encode()]
            assert client.get(key) == str(i).encode()
            assert pub.read_replies(2) == ["OK", 1]
    client.delete(key)
    client.close()


# --- keyspace notifications -----------------------------------------------------------------------


@pytest.fixture
def keyspace_events(target):
    """Keyspace notifications enabled through the target (on every shard behind a proxy),
    switched off again afterwards."""
    client = target.client()
    assert client.config_set("notify-keyspace-events", "KEA")
    yield client
    client.config_set("notify-keyspace-events", "")
    client.close()


def test_config_set_notify_keyspace_events_errors_as_redis(target):
    with target.raw() as conn:
        reply = conn.call("CONFIG", "SET", "notify-keyspace-events", "Q")
        assert reply.startswith("ERR CONFIG SET failed (possibly related to argument 'notify-keyspace-events')"), reply
        assert conn.call("CONFIG", "GET", "notify-keyspace-events") == [b"notify-keyspace-events", b""]


def test_keyspace_notifications_from_every_shard(target, keyspace_events):
    prefix = unique("ps-ks")
    keys = harness.key_per_shard(prefix)
    client = keyspace_events
    with target.raw() as sub:
        sub.send("SUBSCRIBE", *[f"__keyspace@0__:{k}" for k in keys])
        sub.read_replies(len(keys))
        sub.send("PSUBSCRIBE", f"__keyspace@0__:{prefix}:*")
        sub.read_reply()
        for key in keys:
            assert client.set(key, "v")
        got = sorted(tuple(m) for m in sub.read_replies(2 * len(keys)))
        want = sorted(
            [(b"message", f"__keyspace@0__:{k}".encode(), b"set") for k in keys]
            + [
                (b"pmessage", f"__keyspace@0__:{prefix}:*".encode(), f"__keyspace@0__:{k}".encode(), b"set")
                for k in keys
            ]
        )
        assert got == want
        # Key events: which keys were deleted, from all shards, and nothing else.
        sub.send("UNSUBSCRIBE")
        sub.read_replies(len(keys))
        sub.send("PUNSUBSCRIBE")
        sub.read_reply()
        sub.send("SUBSCRIBE", "__keyevent@0__:del")
        sub.read_reply()
        assert client.delete(*keys) == len(keys)
        got = sorted(tuple(m) for m in sub.read_replies(len(keys)))
        assert got == sorted((b"message", b"__keyevent@0__:del", k.encode()) for k in keys)


def test_keyspace_pattern_sees_no_internal_keys(target, keyspace_events):
    """A subscriber to every set event sees exactly the client's keys (the proxy's own
    bookkeeping key, written with every batch, is never shown)."""
    prefix = unique("ps-ks-all")
    keys = harness.keys_by_shard(prefix, 2)
    client = keyspace_events
    with target.raw() as sub:
        sub.send("PSUBSCRIBE", "__keyevent@0__:*")
        sub.read_reply()
        for key in keys:
            client.set(key, "v")
        got = [sub.read_reply() for _ in keys]
        assert sorted(m[3] for m in got) == sorted(k.encode() for k in keys)
        assert {m[2] for m in got} == {b"__keyevent@0__:set"}
        # The next event is ours again, not a hidden one.
        client.delete(keys[0])
        assert sub.read_reply() == [b"pmessage", b"__keyevent@0__:*", b"__keyevent@0__:del", keys[0].encode()]
    client.delete(*keys)


def test_keyspace_relay_follows_interest(proxy):
    """The proxy listens to the shards only while someone may receive their notifications."""

    def relay_subscriptions():
        total = 0
        for node in proxy.backends:
            with RespConn(node.host, node.port) as conn:
                total += conn.call("CLIENT", "LIST").decode().count(" psub=1 ")
        return total

    # Earlier tests' subscribers may still be on their way out.
    harness.wait_until(lambda: relay_subscriptions() == 0, WAIT, "a relay is running with no subscriber")
    with proxy.raw() as sub:
        sub.send("SUBSCRIBE", unique("ps-plain"))
        sub.read_reply()
        assert relay_subscriptions() == 0
        sub.send("PSUBSCRIBE", "__keyspace@0__:*")
        sub.read_reply()
        # Confirmed only once every shard is followed.
        assert relay_subscriptions() == len(proxy.backends)
    harness.wait_until(lambda: relay_subscriptions() == 0, WAIT, "the relay outlived its last subscriber")


# --- redis-py in RESP3 ----------------------------------------------------------------------------


def test_redis_py_resp3_pubsub(target):
    channel = unique("ps-py3")
    client = target.client(protocol=3)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=WAIT)["type"] == "subscribe"
        assert client.publish(channel, "three") == 1
        msg = pubsub.get_message(timeout=WAIT)
        assert (msg["type"], msg["channel"], msg["data"]) == ("message", channel.encode(), b"three")
        pubsub.unsubscribe(channel)
        assert pubsub.get_message(timeout=WAIT)["type"] == "unsubscribe"
    finally:
        pubsub.close()
        client.close()


# --- a slow subscriber ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["proxy", "redis"])
def test_slow_subscriber_is_disconnected(spawn, kind):
    """A subscriber that stops reading is cut off at its output limit (Redis: the pubsub class
    of client-output-buffer-limit; the proxy: client_output_buffer_limit), and the publisher
    carries on."""
    if kind not in TARGETS:
        pytest.skip(f"MEMLOG_TEST_TARGET excludes {kind}")
    limit = 256 * 1024
    if kind == "proxy":
        endpoint = spawn.proxy(shards=1, replicas=0, journal_nodes=0, client_output_buffer_limit=limit)
    else:
        endpoint = spawn.redis(["--client-output-buffer-limit", f"pubsub {limit} 0 0"])
    channel = unique("ps-slow")
    sub = socket.create_connection((endpoint.host, endpoint.port), timeout=WAIT)
    sub.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n" + bulk(channel))
    assert sub.recv(4096).startswith(b"*3\r\n$9\r\nsubscribe\r\n")
    publisher = endpoint.client()
    payload = b"x" * (64 * 1024)
    deadline = time.monotonic() + 30
    published = 0
    while numsub(publisher, channel) > 0:
        assert time.monotonic() < deadline, f"still subscribed after {published} messages"
        for _ in range(16):
            publisher.publish(channel, payload)
            published += 1
    assert published * len(payload) > limit
    # The subscriber finds its connection closed once it reads what was sent before.
    sub.settimeout(WAIT)
    try:
        while sub.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    sub.close()
    assert publisher.ping()
    publisher.close()


@pytest.mark.proxy_only
def test_keyspace_notifications_follow_a_failover(spawn):
    """kill -9 of a shard's primary: the replica that takes over already has the flags set
    through the proxy, and the relay follows it, so notifications resume (only the new primary
    can send them: the old one is dead)."""
    proxy = spawn.proxy(shards=1, replicas=1)
    old, replica = proxy.backends[0], proxy.replicas[0]
    client = proxy.client()
    assert client.config_set("notify-keyspace-events", "KA")
    with RespConn(replica.host, replica.port) as conn:
        assert sorted(conn.call("CONFIG", "GET", "notify-keyspace-events")[1].decode()) == sorted("AK")
    prefix = unique("ps-fo")
    with proxy.raw() as sub:
        sub.send("PSUBSCRIBE", f"__keyspace@0__:{prefix}:*")
        sub.read_reply()
        assert client.set(f"{prefix}:before", "v")
        assert sub.read_reply()[2] == f"__keyspace@0__:{prefix}:before".encode()
        old.proc.kill9()

        def primary():
            topology = json.loads(client.execute_command("MEMLOG", "TOPOLOGY"))
            return topology["shards"][0]["primary"]["addr"]

        harness.wait_until(lambda: primary() == replica.addr, 30, "the replica did not take over")
        sub.settimeout(0.5)

        attempts = iter(range(10_000))

        def notified():
            key = f"{prefix}:after:{next(attempts)}"
            client.set(key, "v")
            try:
                return sub.read_reply()[2] == f"__keyspace@0__:{key}".encode()
            except TimeoutError:
                return False

        harness.wait_until(notified, 30, "no keyspace notification from the new primary")
    client.close()


def test_cluster_client_pubsub(cluster_target):
    """redis-py's RedisCluster pub/sub (channels and shard channels) works against the proxy as
    against a real Redis Cluster (where a PUBLISH counts only its node's receivers, so only
    the delivery is compared)."""
    channel, shard_channel = unique("ps-rc"), unique("ps-rc-shard")
    rc = cluster_target.cluster_client()
    pubsub = rc.pubsub()
    try:
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=WAIT)["type"] == "subscribe"
        rc.publish(channel, "hi")
        msg = pubsub.get_message(timeout=WAIT)
        assert (msg["type"], msg["channel"], msg["data"]) == ("message", channel.encode(), b"hi")

        # redis-py's get_sharded_message ignores its timeout when no node is named: poll it.
        def sharded_message():
            return harness.wait_until(pubsub.get_sharded_message, WAIT, "no shard channel message")

        pubsub.ssubscribe(shard_channel)
        assert sharded_message()["type"] == "ssubscribe"
        assert rc.spublish(shard_channel, "s") == 1
        msg = sharded_message()
        assert (msg["type"], msg["channel"], msg["data"]) == ("smessage", shard_channel.encode(), b"s")
    finally:
        pubsub.close()
        rc.close()
