"""Scripts and functions (EVAL*, SCRIPT, FUNCTION, FCALL*) against the memlog proxy and stock
Redis: the same replies, error texts and RESP3 conversions on both. Proxy-only tests cover what
memlog adds: CROSSSLOT, libraries on every shard, the script cache behind EVALSHA, refused
non-deterministic scripts, and SCRIPT KILL of journaled scripts."""

import hashlib
import threading
import time

import pytest
import redis

from conftest import TARGETS
from harness import key_per_shard, wait_until
from resp import RespMap

LIBRARY = """#!lua name=sclib
redis.register_function('sc_set', function(keys, args) return redis.call('SET', keys[1], args[1]) end)
redis.register_function{function_name='sc_get', callback=function(keys) return redis.call('GET', keys[1]) end,
  flags={'no-writes'}}
"""

BUSY_LOOP = "local i = 0 while true do i = i + 1 end"


def sha1(text):
    return hashlib.sha1(text.encode()).hexdigest()


def error_of(call):
    """The text of the ResponseError `call` raises."""
    with pytest.raises(redis.ResponseError) as raised:
        call()
    return str(raised.value)


def libraries(client, **kwargs):
    """FUNCTION LIST as dicts (redis-py returns RESP2's flat [field, value, …] lists)."""

    def as_dict(flat):
        return flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2]))

    found = []
    for library in client.function_list(**kwargs):
        library = as_dict(library)
        library["functions"] = [as_dict(f) for f in library["functions"]]
        found.append(library)
    return found


@pytest.fixture
def fr(r):
    """`r` with no function libraries loaded (before and after)."""
    r.function_flush()
    yield r
    r.function_flush()


# --- EVAL and EVALSHA -------------------------------------------------------------------------


def test_eval_with_keys_and_args_writes_and_returns(r):
    script = (
        "redis.call('SET', KEYS[1], ARGV[1]) redis.call('RPUSH', KEYS[2], ARGV[2], ARGV[1]) "
        "return {KEYS[1], ARGV[2], redis.call('LLEN', KEYS[2])}"
    )
    assert r.eval(script, 2, "sc:{e}:s", "sc:{e}:l", "one", "two") == ["sc:{e}:s", "two", 2]
    assert r.get("sc:{e}:s") == "one"
    assert r.lrange("sc:{e}:l", 0, -1) == ["two", "one"]
    assert r.eval("return 42", 0) == 42


def test_evalsha_after_script_load_and_noscript(r):
    r.script_flush()
    body = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    sha = r.script_load(body)
    assert sha == sha1(body)
    assert r.script_exists(sha, sha.upper(), "0" * 40) == [True, True, False]
    assert r.evalsha(sha, 1, "sc:counter", 5) == 5
    assert r.evalsha(sha.upper(), 1, "sc:counter", 2) == 7
    assert error_of(lambda: r.evalsha("0" * 40, 0)) == "No matching script. Please use EVAL."
    assert error_of(lambda: r.evalsha("abc", 0)) == "No matching script. Please use EVAL."
    assert r.script_flush() is True
    assert r.script_exists(sha) == [False]
    assert error_of(lambda: r.evalsha(sha, 1, "sc:counter", 1)) == "No matching script. Please use EVAL."
    assert r.get("sc:counter") == "7"


def test_eval_caches_the_script_for_evalsha(r):
    body = "return 'cached by eval ' .. ARGV[1]"
    assert r.eval(body, 0, "x") == "cached by eval x"
    assert r.script_exists(sha1(body)) == [True]
    assert r.evalsha(sha1(body), 0, "y") == "cached by eval y"
    assert r.evalsha_ro(sha1(body), 0, "z") == "cached by eval z"


def test_eval_ro_and_no_writes_scripts_read_but_refuse_writes(r):
    r.set("sc:ro", "v")
    assert r.eval_ro("return redis.call('GET', KEYS[1])", 1, "sc:ro") == "v"
    text = error_of(lambda: r.eval_ro("return redis.call('SET', KEYS[1], 'x')", 1, "sc:ro"))
    assert text.startswith("Write commands are not allowed from read-only scripts. script: "), text
    no_writes = "#!lua flags=no-writes\n"
    assert r.eval(no_writes + "return redis.call('GET', KEYS[1])", 1, "sc:ro") == "v"
    text = error_of(lambda: r.eval(no_writes + "return redis.call('SET', KEYS[1], 'x')", 1, "sc:ro"))
    assert text.startswith("Write commands are not allowed from read-only scripts."), text
    assert r.get("sc:ro") == "v"


@pytest.mark.parametrize(
    "command, error",
    [
        (("EVAL", "return 1", "x"), "ERR value is not an integer or out of range"),
        (("EVAL", "return 1", "-1"), "ERR Number of keys can't be negative"),
        (("EVAL", "return 1", "2", "sc:a"), "ERR Number of keys can't be greater than number of args"),
        (("EVALSHA", "0" * 40, "x"), "ERR value is not an integer or out of range"),
        (("EVALSHA", "abc", "x"), "NOSCRIPT No matching script. Please use EVAL."),
        (("EVAL_RO", "return 1", "3"), "ERR Number of keys can't be greater than number of args"),
        (("FCALL", "nosuch", "x"), "ERR Function not found"),
        (("FCALL", "nosuch", "-2"), "ERR Function not found"),
        (("FCALL", "nosuch", "0"), "ERR Function not found"),
        (("FCALL_RO", "nosuch", "0"), "ERR Function not found"),
        (("SCRIPT", "FLUSH", "LATER"), "ERR SCRIPT FLUSH only support SYNC|ASYNC option"),
        (("FUNCTION", "FLUSH", "LATER"), "ERR FUNCTION FLUSH only supports SYNC|ASYNC option"),
        (("FUNCTION", "DELETE", "sc-nosuch-lib"), "ERR Library not found"),
        (("FUNCTION", "RESTORE", "garbage"), "ERR DUMP payload version or checksum are wrong"),
        (("SCRIPT", "KILL"), "NOTBUSY No scripts in execution right now."),
    ],
    ids=lambda v: "-".join(v).lower()[:40] if isinstance(v, tuple) else None,
)
def test_argument_errors_match_redis(target, command, error):
    with target.raw() as conn:
        assert conn.call(*command) == error
        assert conn.call("PING") == "PONG"


def test_script_errors_are_redis_texts_and_keep_earlier_writes(r):
    boom = "redis.call('SET', KEYS[1], 'written') error('boom')"
    text = error_of(lambda: r.eval(boom, 1, "sc:partial"))
    assert text == f"user_script:1: boom script: {sha1(boom)}, on @user_script:1.", text
    assert r.get("sc:partial") == "written", "Redis keeps a script's writes before its error"
    unknown = "return redis.call('nosuchcommand')"
    assert error_of(lambda: r.eval(unknown, 0)) == (
        f"Unknown Redis command called from script script: {sha1(unknown)}, on @user_script:1."
    )
    text = error_of(lambda: r.eval("this is not lua", 0))
    assert text.startswith("Error compiling script (new function): user_script:1:"), text
    r.set("sc:str", "abc")
    incr = "return redis.call('INCR', KEYS[1])"
    assert error_of(lambda: r.eval(incr, 1, "sc:str")) == (
        f"value is not an integer or out of range script: {sha1(incr)}, on @user_script:1."
    )
    pcall = "local ok, err = pcall(redis.call, 'INCR', KEYS[1]) return {ok and 1 or 0, type(err)}"
    assert r.eval(pcall, 1, "sc:str") == [0, "string"]
    assert error_of(lambda: r.eval("return redis.error_reply('MYERR custom')", 0)) == "MYERR custom"


RATE_LIMIT = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ms - tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ms, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


def test_scripts_reading_the_clock_and_setting_ttls_behave_as_in_redis(r):
    """memlog pins such scripts' time so that replay reproduces them; clients see Redis."""
    ttls = (
        "redis.call('SET', KEYS[1], 'v', 'EX', 100) redis.call('SETEX', KEYS[2], 50, 'v') "
        "redis.call('PSETEX', KEYS[3], 5000, 'v') redis.call('SET', KEYS[4], 'v') "
        "redis.call('EXPIRE', KEYS[4], 10, 'NX') redis.call('SET', KEYS[5], 'v', 'GET', 'px', 7000) "
        "return redis.call('GETEX', KEYS[5], 'EX', 3)"
    )
    keys = [f"sc:{{ttl}}:{i}" for i in range(5)]
    assert r.eval(ttls, 5, *keys) == "v"
    expected_ms = [100_000, 50_000, 5_000, 10_000, 3_000]
    for key, expected in zip(keys, expected_ms):
        assert expected - 2_000 < r.pttl(key) <= expected, key
    assert r.eval("return redis.call('EXPIRE', KEYS[1], -1)", 1, keys[0]) == 1
    assert r.exists(keys[0]) == 0
    sec, usec = r.eval("return redis.call('TIME')", 0)
    assert abs(int(sec) + int(usec) / 1e6 - time.time()) < 2
    text = error_of(lambda: r.eval("return redis.call('SET', KEYS[1], 'v', 'EX', 0)", 1, keys[0]))
    assert text.startswith("invalid expire time in 'set' command script: "), text
    text = error_of(lambda: r.eval("redis.call('SET', KEYS[1], 'v', 'EX', 10, 'PX', 5)", 1, keys[0]))
    assert text.startswith("syntax error script: "), text
    text = error_of(lambda: r.eval("redis.call('EXPIRE', KEYS[1], 5)\nerror('at line 2')", 1, keys[0]))
    assert text.startswith("user_script:2: at line 2 script: "), text
    limited = [r.eval(RATE_LIMIT, 1, "sc:rate", 60_000, 3, f"req{i}") for i in range(5)]
    assert limited == [1, 1, 1, 0, 0]
    assert 0 < r.pttl("sc:rate") <= 60_000


def test_script_results_in_resp2_and_resp3(target):
    """Lua → RESP conversions, byte for byte, in both protocols (the proxy sends RESP3 clients'
    scripts on RESP3 connections, EVALSHA included)."""
    body = "redis.setresp(3) redis.call('HSET', KEYS[1], 'f', 'v') return redis.call('HGETALL', KEYS[1])"
    cases = [
        (
            "return {1, 'two', {3}, false}",
            b"*4\r\n:1\r\n$3\r\ntwo\r\n*1\r\n:3\r\n$-1\r\n",
            b"*4\r\n:1\r\n$3\r\ntwo\r\n*1\r\n:3\r\n_\r\n",
        ),
        ("return {double=3.5}", b"$3\r\n3.5\r\n", b",3.5\r\n"),
        ("return nil", b"$-1\r\n", b"_\r\n"),
        ("return true", b":1\r\n", b":1\r\n"),
        ("redis.setresp(3) return true", b":1\r\n", b"#t\r\n"),
        ("return redis.status_reply('FINE')", b"+FINE\r\n", b"+FINE\r\n"),
        ("return {map={a=1}}", b"*2\r\n$1\r\na\r\n:1\r\n", b"%1\r\n$1\r\na\r\n:1\r\n"),
    ]
    for protocol in ("2", "3"):
        with target.raw() as conn:
            conn.call("HELLO", protocol)
            conn.call("DEL", "sc:resp:h")
            for script, resp2, resp3 in cases:
                expected = resp2 if protocol == "2" else resp3
                conn.call("EVAL", script, "0")
                assert conn.last_raw == expected, (protocol, script, conn.last_raw)
                conn.call("EVALSHA", sha1(script), "0")
                assert conn.last_raw == expected, ("evalsha", protocol, script, conn.last_raw)
            reply = conn.call("EVAL", body, "1", "sc:resp:h")
            if protocol == "3":
                assert isinstance(reply, RespMap) and reply == {b"f": b"v"}, reply
            else:
                assert reply == [b"f", b"v"], reply


# --- FUNCTION and FCALL -----------------------------------------------------------------------


def test_function_load_fcall_list_delete(fr):
    assert fr.function_load(LIBRARY) == "sclib"
    assert error_of(lambda: fr.function_load(LIBRARY)) == "Library 'sclib' already exists"
    assert fr.function_load(LIBRARY, replace=True) == "sclib"
    assert fr.fcall("sc_set", 1, "sc:f", "value") == "OK"
    assert fr.fcall_ro("sc_get", 1, "sc:f") == "value"
    assert fr.fcall("sc_get", 1, "sc:f") == "value"
    assert error_of(lambda: fr.execute_command("FCALL", "sc_set", "x")) == "Bad number of keys provided"
    assert error_of(lambda: fr.execute_command("FCALL", "sc_set", "-1")) == "Number of keys can't be negative"
    text = error_of(lambda: fr.fcall_ro("sc_set", 1, "sc:f", "x"))
    assert text == "Can not execute a script with write flag using *_ro command.", text
    (library,) = libraries(fr)
    assert library["library_name"] == "sclib"
    assert sorted(f["name"] for f in library["functions"]) == ["sc_get", "sc_set"]
    (with_code,) = libraries(fr, library="sc*", withcode=True)
    assert with_code["library_code"] == LIBRARY
    stats = fr.function_stats()
    assert stats is not None
    assert fr.function_delete("sclib") is True
    assert libraries(fr) == []
    assert error_of(lambda: fr.fcall("sc_set", 1, "sc:f", "x")) == "Function not found"
    assert fr.get("sc:f") == "value"


def test_function_dump_restore_flush(fr):
    fr.function_load(LIBRARY)
    dump = fr.function_dump()
    assert fr.function_flush() is True
    assert libraries(fr) == []
    assert fr.function_restore(dump) is True
    assert [lib["library_name"] for lib in libraries(fr)] == ["sclib"]
    assert error_of(lambda: fr.function_restore(dump)) == "Library sclib already exists"
    assert fr.function_restore(dump, "REPLACE") is True
    assert fr.fcall("sc_set", 1, "sc:restored", "yes") == "OK"
    assert fr.get("sc:restored") == "yes"


def test_fcall_over_resp3(target):
    target.client().function_flush()
    with target.raw() as conn:
        conn.call("HELLO", "3")
        assert conn.call("FUNCTION", "LOAD", LIBRARY) == b"sclib"
        assert conn.call("FCALL", "sc_set", "1", "sc:f3", "v3") == "OK"
        assert conn.call("FCALL_RO", "sc_get", "1", "sc:f3") == b"v3"
        assert conn.call("FCALL_RO", "sc_get", "1", "sc:f3-missing") is None
        assert conn.last_raw == b"_\r\n"
        listing = conn.call("FUNCTION", "LIST")
        assert isinstance(listing[0], RespMap) and listing[0][b"library_name"] == b"sclib", listing
    target.client().function_flush()


# --- SCRIPT KILL ------------------------------------------------------------------------------


def busy_after(nodes, ms):
    """Lowers busy-reply-threshold on the Redis nodes themselves, so a busy script can be killed
    after `ms` instead of 5 s; returns a function that restores it."""
    clients = [node.client() for node in nodes]
    for client in clients:
        client.config_set("busy-reply-threshold", ms)

    def restore():
        for client in clients:
            client.config_set("busy-reply-threshold", 5000)
            client.close()

    return restore


@pytest.fixture(params=TARGETS)
def busy_target(request, spawn):
    """Stock Redis, or a proxy of its own without replicas: a shard kept busy by a script
    stops answering its failover controller's checks, and this test is not about failover."""
    if request.param == "redis":
        return request.getfixturevalue("stock_redis")
    return spawn.proxy(shards=2, replicas=0)


def test_script_kill_stops_a_busy_read_only_script(busy_target):
    target = busy_target
    restore = busy_after(target.backends, 100)
    outcome = {}
    busy = target.client(socket_timeout=20)

    def run():
        try:
            busy.eval_ro(BUSY_LOOP, 1, "sc:busy")
        except redis.ResponseError as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        killer = target.client()
        # Until the script runs, SCRIPT KILL answers NOTBUSY; once it runs, OK.
        wait_until(lambda: _try_kill(killer), 10, "SCRIPT KILL never found the busy script")
        thread.join(10)
        assert not thread.is_alive()
        assert "Script killed by user with SCRIPT KILL" in outcome["error"], outcome
        assert killer.get("sc:busy") is None
    finally:
        restore()
        busy.close()


def _try_kill(client):
    try:
        return client.script_kill() is True
    except redis.ResponseError as e:
        assert "No scripts in execution right now" in str(e), e
        return False


# --- memlog only ------------------------------------------------------------------------------


def test_keys_of_several_slots_are_crossslot(proxy):
    client = proxy.client(decode_responses=True)
    a, b, c = key_per_shard("sc:cross")
    for command in (
        lambda: client.eval("return 1", 2, "sc:{x}1", "sc:{y}1"),
        lambda: client.eval("return 1", 2, a, b),
        lambda: client.evalsha(client.script_load("return 2"), 2, b, c),
        lambda: client.fcall("f", 2, a, c),
        lambda: client.eval_ro("return 1", 2, "sc:{x}1", "sc:{y}1"),
    ):
        assert error_of(command) == "CROSSSLOT Keys in request don't hash to the same slot"
    assert client.eval("return redis.call('SET', KEYS[2], 'ok')", 2, "sc:{x}1", "sc:{x}2") == "OK"
    client.close()


def test_libraries_are_loaded_on_every_shard(proxy):
    client = proxy.client(decode_responses=True)
    client.function_flush()
    client.function_load(LIBRARY)
    for node in proxy.backends:
        direct = node.client(decode_responses=True)
        assert [lib["library_name"] for lib in libraries(direct)] == ["sclib"], node.port
        direct.close()
    for node in proxy.replicas:  # by Redis replication, ready for a failover
        direct = node.client(decode_responses=True)
        wait_until(lambda direct=direct: len(libraries(direct)) == 1, 10, f"replica {node.port} lacks the library")
        direct.close()
    for key in key_per_shard("sc:everywhere"):
        assert client.fcall("sc_set", 1, key, key) == "OK"
        assert client.fcall_ro("sc_get", 1, key) == key
    client.function_flush()
    for node in proxy.backends:
        assert node.client().function_list() == []
    client.close()


def test_evalsha_does_not_depend_on_the_nodes_script_cache(proxy):
    """EVALSHA is sent as EVAL with the body the proxy cached, so a node whose cache was
    emptied (restarted, new primary) still runs it."""
    client = proxy.client(decode_responses=True)
    body = "return redis.call('SET', KEYS[1], ARGV[1])"
    sha = client.script_load(body)
    for node in proxy.backends:
        node.client().script_flush()
    for key in key_per_shard("sc:nodecache"):
        assert client.evalsha(sha, 1, key, "v") == "OK"
        assert client.get(key) == "v"
    client.close()


def test_nondeterministic_writing_scripts_are_refused(proxy):
    client = proxy.client(decode_responses=True)
    for body in (
        "return redis.call('RANDOMKEY')",
        "return redis.call('SPOP', KEYS[1])",
        "local m = redis.call('SRANDMEMBER', KEYS[1]) return redis.call('SET', 'x', m)",
        "redis.set_repl(redis.REPL_NONE) return redis.call('SET', KEYS[1], 1)",
    ):
        text = error_of(lambda body=body: client.eval(body, 1, "sc:nd"))
        assert text.startswith("memlog: this script "), text
        assert "deterministic" in text, text
    library = "#!lua name=sctime\nredis.register_function('t', function() return redis.call('TIME') end)"
    assert "this library calls TIME" in error_of(lambda: client.function_load(library))
    # Reads may: they are not journaled.
    assert len(client.eval_ro("return redis.call('TIME')", 0)) == 2
    assert len(client.eval("#!lua flags=no-writes\nreturn redis.call('TIME')", 0)) == 2
    # A refused script is not run: nothing was written.
    assert client.exists("sc:nd", "x") == 0
    client.close()


@pytest.mark.proxy_only
def test_script_kill_refuses_a_journaled_script(spawn):
    """A journaled script killed before it wrote would still run whole when the journal is
    replayed: the proxy refuses to kill it. (A proxy of its own without replicas: the busy shard
    stops answering its failover controller.)"""
    proxy = spawn.proxy(shards=2, replicas=0)
    restore = busy_after(proxy.backends, 100)
    busy = proxy.client(socket_timeout=30)
    finished = {}
    body = "local i = 0 while i < 150000000 do i = i + 1 end return redis.call('SET', KEYS[1], i)"

    def run():
        finished["reply"] = busy.eval(body, 1, "sc:journaled")

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        killer = proxy.client(decode_responses=True)
        wait_until(lambda: _is_busy(killer, "sc:journaled"), 20, "the script never made its shard busy")
        text = error_of(killer.script_kill)
        assert text.startswith("UNKILLABLE memlog: the running script may be a journaled write"), text
        thread.join(30)
        assert finished["reply"] == b"OK"
        assert killer.get("sc:journaled") == "150000000"
    finally:
        restore()
        busy.close()


def _is_busy(client, key):
    try:
        client.get(key)
        return False
    except redis.ResponseError as e:
        assert "busy running a script" in str(e), e
        return True
