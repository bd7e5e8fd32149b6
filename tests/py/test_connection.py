"""Connection-level commands (CLIENT …, PING, ECHO, TIME, QUIT, RESET) and authentication
(AUTH, HELLO … AUTH) with ACL users."""

import re
import time
import uuid

import pytest
import redis

from conftest import TARGETS
from harness import wait_until
from resp import ErrorReply, RespMap


def client_fields(line):
    """One CLIENT LIST / CLIENT INFO line as a dict."""
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def test_client_id_setname_getname_info_and_list(target):
    with target.raw() as a, target.raw() as b:
        id_a, id_b = a.call("CLIENT", "ID"), b.call("CLIENT", "ID")
        assert isinstance(id_a, int) and isinstance(id_b, int) and id_a != id_b
        assert a.call("CLIENT", "GETNAME") is None
        assert a.call("CLIENT", "SETNAME", "conn-a") == "OK"
        assert a.call("CLIENT", "GETNAME") == b"conn-a"
        reply = a.call("CLIENT", "SETNAME", "bad name")
        assert isinstance(reply, ErrorReply) and reply.startswith("ERR Client names cannot contain spaces")

        info = client_fields(a.call("CLIENT", "INFO").decode())
        assert info["id"] == str(id_a) and info["name"] == "conn-a" and info["resp"] == "2"

        listed = {fields["id"]: fields for fields in map(client_fields, b.call("CLIENT", "LIST").decode().splitlines())}
        assert {str(id_a), str(id_b)} <= set(listed)
        assert listed[str(id_a)]["name"] == "conn-a"
        only_a = a.call("CLIENT", "LIST", "ID", id_a).decode().splitlines()
        assert [client_fields(line)["id"] for line in only_a] == [str(id_a)]


def test_client_kill_by_id_closes_that_connection(target):
    with target.raw() as killer, target.raw() as victim, target.raw() as bystander:
        victim_id = victim.call("CLIENT", "ID")
        assert killer.call("CLIENT", "KILL", "ID", victim_id) == 1
        assert victim.is_closed_by_peer(timeout=5)
        assert killer.call("CLIENT", "KILL", "ID", 987654321) == 0
        assert killer.call("PING") == "PONG"
        assert bystander.call("PING") == "PONG"

        def victim_unlisted():
            listed = killer.call("CLIENT", "LIST").decode().splitlines()
            return str(victim_id) not in [client_fields(line)["id"] for line in listed]

        wait_until(victim_unlisted, 5.0, "the killed client is still in CLIENT LIST")


def test_ping_echo_time(target):
    with target.raw() as conn:
        assert conn.call("PING") == "PONG" and conn.last_raw == b"+PONG\r\n"
        assert conn.call("PING", "hello") == b"hello" and conn.last_raw == b"$5\r\nhello\r\n"
        assert conn.call("ECHO", "x y\r\nz") == b"x y\r\nz"
        seconds, micros = conn.call("TIME")
        assert abs(int(seconds) - time.time()) < 5 and 0 <= int(micros) < 1_000_000


def test_quit_replies_ok_and_closes(target):
    with target.raw() as conn:
        assert conn.call("QUIT") == "OK"
        assert conn.is_closed_by_peer(timeout=5)


def test_reset_restores_a_fresh_connection(target):
    with target.raw() as conn:
        conn.call("HELLO", "3", "SETNAME", "before-reset")
        assert conn.call("RESET") == "RESET" and conn.last_raw == b"+RESET\r\n"
        assert conn.call("CLIENT", "GETNAME") is None
        conn.call("HELLO")  # HELLO without a version reports the current one: RESP2 after RESET
        assert conn.last_raw.startswith(b"*14\r\n")


def test_hello_auth_as_default_user_without_passwords(target):
    """With no users configured, the default user has no password, so any password works."""
    with target.raw() as conn:
        reply = conn.call("HELLO", "3", "AUTH", "default", "anything")
        assert isinstance(reply, RespMap) and reply[b"proto"] == 3


USER, PASSWORD = "app", "s3cret"


@pytest.fixture(params=TARGETS)
def auth_target(request, spawn):
    """A proxy with one ACL user, or a stock Redis with the same user and the default user off."""
    if request.param == "proxy":
        return spawn.proxy(shards=1, users=[(USER, PASSWORD)])
    return spawn.redis(["--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off"])


def test_commands_need_authentication(auth_target):
    with auth_target.raw() as conn:
        reply = conn.call("GET", "k")
        assert isinstance(reply, ErrorReply) and reply.startswith("NOAUTH"), reply
        reply = conn.call("HELLO", "3")
        assert isinstance(reply, ErrorReply) and reply.startswith("NOAUTH"), reply
        reply = conn.call("AUTH", USER, "wrong")
        assert isinstance(reply, ErrorReply) and reply.startswith("WRONGPASS"), reply
        reply = conn.call("HELLO", "3", "AUTH", USER, "wrong")
        assert isinstance(reply, ErrorReply) and reply.startswith("WRONGPASS"), reply
        reply = conn.call("GET", "k")
        assert isinstance(reply, ErrorReply) and reply.startswith("NOAUTH"), reply


def test_hello_3_auth_and_setname(auth_target):
    with auth_target.raw() as conn:
        reply = conn.call("HELLO", "3", "AUTH", USER, PASSWORD, "SETNAME", "authed")
        assert isinstance(reply, RespMap) and reply[b"proto"] == 3, reply
        assert conn.call("CLIENT", "GETNAME") == b"authed"
        assert conn.call("SET", "auth:k", "v") == "OK"
        assert conn.call("GET", "auth:k") == b"v"
    with auth_target.raw() as conn:
        assert conn.call("AUTH", USER, PASSWORD) == "OK"
        assert conn.call("GET", "auth:k") == b"v"


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_with_username_and_password(auth_target, protocol):
    client = auth_target.client(username=USER, password=PASSWORD, protocol=protocol, decode_responses=True)
    assert client.set("auth:py", "v") is True
    assert client.get("auth:py") == "v"
    client.close()
    with pytest.raises(redis.AuthenticationError):
        auth_target.client(username=USER, password="wrong", protocol=protocol).ping()


MONITOR_LINE = re.compile(r"^(\d+)\.(\d{6}) \[0 ([0-9.]+):(\d+)\] (.*)$")


def monitor_lines_about(mon, marker, count):
    """The next `count` MONITOR lines that mention `marker`, parsed (other clients of the shared
    target, and the harness, may show up in between)."""
    found = []
    while len(found) < count:
        line = mon.read_reply()
        assert mon.last_raw.startswith(b"+") and mon.last_raw.endswith(b"\r\n"), mon.last_raw
        if marker in line:
            match = MONITOR_LINE.match(line)
            assert match, line
            found.append(match.groups())
    return found


def test_monitor_streams_every_clients_commands_in_redis_format(target):
    """MONITOR answers +OK, then shows each command another client runs, as Redis prints it:
    the time, db 0 and the client's address, every argument quoted and escaped; AUTH's
    arguments redacted; the monitoring client stays usable after RESET."""
    key = f"monitor-{uuid.uuid4().hex[:12]}"
    with target.raw() as mon, target.raw() as other:
        assert mon.call("MONITOR") == "OK"
        other_port = other.sock.getsockname()[1]
        before = time.time()
        assert other.call("SET", key, 'a "quoted"\nline') == "OK"
        assert other.call("GET", key) == b'a "quoted"\nline'
        assert isinstance(other.call("AUTH", key, "wrong-password"), ErrorReply)
        lines = monitor_lines_about(mon, key, 2)
        for seconds, micros, _, port, _ in lines:
            assert abs(int(seconds) + int(micros) / 1e6 - before) < 30
            assert int(port) == other_port
        assert lines[0][4] == f'"SET" "{key}" "a \\"quoted\\"\\nline"'
        assert lines[1][4] == f'"GET" "{key}"'
        # AUTH's arguments never reach a monitor: the line shows neither the user nor the password.
        auth = mon.read_reply()
        while not auth.endswith('"AUTH" "(redacted)" "(redacted)"'):
            auth = mon.read_reply()
        assert key not in auth
        mon.send("RESET")
        while mon.read_reply() != "RESET":
            pass  # MONITOR lines queued before the RESET reply
        other.call("SET", key, "after-reset")
        assert mon.call("PING") == "PONG", "no MONITOR line after RESET"


def test_acl_reads_the_users_clients_authenticate_as(target):
    """Without configured users, the proxy's ACL view is a stock Redis's: the default user,
    with no password and every permission; categories come from Redis."""
    with target.raw() as conn:
        assert conn.call("ACL", "WHOAMI") == b"default"
        assert conn.call("ACL", "USERS") == [b"default"]
        assert conn.call("ACL", "LIST") == [b"user default on nopass ~* &* +@all"]
        assert b"keyspace" in conn.call("ACL", "CAT")
        assert len(conn.call("ACL", "GENPASS")) == 64


def test_acl_users_are_managed_at_run_time(proxy):
    # Exact replies are compared with stock Redis in tests/acl.rs; this checks the client's view.
    with proxy.raw() as conn:
        assert conn.call("ACL", "SETUSER", "eve", "on", ">pw", "~*", "+get") == "OK"
        assert sorted(conn.call("ACL", "USERS")) == [b"default", b"eve"]
        assert conn.call("ACL", "DELUSER", "eve") == 1
        assert conn.call("ACL", "SAVE") == "OK"
        assert conn.call("ACL", "USERS") == [b"default"]
