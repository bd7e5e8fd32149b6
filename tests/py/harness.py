"""Real processes for the client-level tests: stock redis-server nodes, a real Redis Cluster,
and `memlog proxy` in front of Redis shards, each on a free loopback port in its own
directory, killed by pid (never by name) when the test session or fixture ends.

Why a module apart from conftest: the fixtures stay short and the process plumbing
(ports, config files, readiness, logs) lives in one place.
"""

import os
import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.cluster

from resp import RespConn

REPO_ROOT = Path(__file__).resolve().parents[2]
SLOTS = 16384
THREE_SHARD_RANGES = [(0, 5460), (5461, 10921), (10922, 16383)]
START_TIMEOUT = 20.0
CLIENT_TIMEOUT = 10.0


# --- slots ---------------------------------------------------------------------------------


def _crc16(data):
    """CRC16-XMODEM, the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def key_slot(key):
    """The Redis Cluster slot of `key`, honouring `{hashtag}`s."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return _crc16(key) % SLOTS


def shard_of_slot(slot, ranges=THREE_SHARD_RANGES):
    for index, (low, high) in enumerate(ranges):
        if low <= slot <= high:
            return index
    raise ValueError(f"slot {slot} is in no range")


def keys_in_range(prefix, low, high, count=1):
    """`count` distinct keys named `prefix…` whose slots fall in [low, high]."""
    found, i = [], 0
    while len(found) < count:
        key = f"{prefix}:{i}"
        if low <= key_slot(key) <= high:
            found.append(key)
        i += 1
    return found


def keys_by_shard(prefix, per_shard, ranges=THREE_SHARD_RANGES):
    """`per_shard` keys in each shard, interleaved shard 0, 1, 2, 0, 1, 2, …"""
    columns = [keys_in_range(f"{prefix}:s{i}", low, high, per_shard) for i, (low, high) in enumerate(ranges)]
    return [key for row in zip(*columns) for key in row]


def key_per_shard(prefix, ranges=THREE_SHARD_RANGES):
    """One key in each shard, in shard order."""
    return [keys_in_range(f"{prefix}:s{index}", low, high)[0] for index, (low, high) in enumerate(ranges)]


# --- processes -----------------------------------------------------------------------------


def _ephemeral_low():
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT = set()
_PORTS = random.Random(os.getpid() ^ time.time_ns())


def _bindable(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(with_cluster_bus=False):
    """A loopback port that is free now and was never handed out before by this process;
    with_cluster_bus also needs port+10000 free (Redis Cluster's bus).

    Ports come from below the kernel's ephemeral range: a port bind(0) offers lies inside it,
    and any outgoing connection may take it as its local port before the server binds it."""
    high = _ephemeral_low()
    low = max(1024, high - 20000)
    if with_cluster_bus:
        high -= 10000
    for _ in range(1000):
        port = _PORTS.randrange(low, high)
        wanted = [port, port + 10000] if with_cluster_bus else [port]
        if _HANDED_OUT.isdisjoint(wanted) and all(_bindable(p) for p in wanted):
            _HANDED_OUT.update(wanted)
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


class Proc:
    """A child process with its output in `log`; stopped by pid only."""

    def __init__(self, name, argv, log, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = Path(log)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def kill9(self):
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=10)

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait_exit(self, timeout):
        """The exit code, or None if still running after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, limit=4000):
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


class ProcessGroup:
    """Every process a fixture started, so its finalizer kills them all by pid."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def kill_all(self):
        for proc in reversed(self.procs):
            proc.kill9()
        self.procs.clear()


def wait_ready(host, port, proc, timeout=START_TIMEOUT):
    """Polls PING until the server answers PONG (or NOAUTH, when it requires a login); fails
    with the log if the process died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; log:\n{proc.log_tail()}")
        try:
            with RespConn(host, port, timeout=1.0) as conn:
                last = conn.call("PING")
                if last == "PONG" or str(last).startswith("NOAUTH"):
                    return
        except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
            last = e
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not answer PING on {host}:{port} ({last!r}); log:\n{proc.log_tail()}")


# --- endpoints -----------------------------------------------------------------------------


@dataclass
class Node:
    """One server process on loopback and the directory of its data and log."""

    host: str
    port: int
    proc: Proc
    dir: Path

    @property
    def addr(self):
        return f"{self.host}:{self.port}"


class RedisNode(Node):
    """One redis-server process."""

    def client(self, **kwargs):
        kwargs.setdefault("socket_timeout", CLIENT_TIMEOUT)
        return redis.Redis(host=self.host, port=self.port, **kwargs)


@dataclass
class Endpoint:
    """What a test talks to: the memlog proxy, a stock redis-server, or a real Redis Cluster.

    kind is "proxy", "redis" or "redis-cluster"; host/port is where clients connect (for a
    cluster, its first node); backends are the primaries that hold the data; journal_nodes are
    a proxy's journal nodes (JournalNode), empty for a routing-only proxy and for Redis.
    """

    kind: str
    host: str
    port: int
    backends: list
    replicas: list = field(default_factory=list)
    proc: Proc = None
    metrics_addr: str = None
    config_path: Path = None
    journal_nodes: list = field(default_factory=list)

    @property
    def addr(self):
        return f"{self.host}:{self.port}"

    def client(self, **kwargs):
        kwargs.setdefault("socket_timeout", CLIENT_TIMEOUT)
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def cluster_client(self, **kwargs):
        kwargs.setdefault("socket_timeout", CLIENT_TIMEOUT)
        return redis.cluster.RedisCluster(host=self.host, port=self.port, **kwargs)

    def raw(self, timeout=CLIENT_TIMEOUT):
        return RespConn(self.host, self.port, timeout=timeout)

    def node_for_slot(self, slot):
        """(host, port) that serves `slot`: the endpoint itself unless it is a Redis Cluster."""
        if self.kind != "redis-cluster":
            return self.host, self.port
        for low, high, primary, *_ in self.client().execute_command("CLUSTER SLOTS"):
            if low <= slot <= high:
                return primary[0].decode(), int(primary[1])
        raise RuntimeError(f"no node owns slot {slot}")

    def conn_for_key(self, key):
        """A raw connection to the node that serves `key`."""
        host, port = self.node_for_slot(key_slot(key))
        return RespConn(host, port)

    def flushall(self):
        """Empties the whole keyspace (every node of a Redis Cluster)."""
        for node in self.backends if self.kind == "redis-cluster" else [self]:
            with RespConn(node.host, node.port) as conn:
                reply = conn.call("FLUSHALL")
                assert reply == "OK", f"FLUSHALL on {node.host}:{node.port}: {reply!r}"


def start_redis(group, workdir, extra=(), port=None):
    """A stock redis-server with no persistence, on `port` (default: a free one), in its own directory."""
    cluster = "--cluster-enabled" in extra
    port = port or free_port(with_cluster_bus=cluster)
    node_dir = Path(workdir) / f"redis-{port}"
    node_dir.mkdir(parents=True, exist_ok=True)
    argv = ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    # DEBUG HTSTATS lets a test wait until a node's hash table is not rehashing (SCAN may
    # return a key twice during a rehash).
    argv += ["--enable-debug-command", "local", "--dir", node_dir, *extra]
    proc = group.add(Proc(f"redis-{port}", argv, node_dir / "redis.log"))
    wait_ready("127.0.0.1", port, proc)
    return RedisNode("127.0.0.1", port, proc, node_dir)


def restart_redis(group, node):
    """A fresh, empty redis-server on the port (and in the directory) of `node`, which is dead."""
    assert not node.proc.alive(), f"{node.addr} is still running"
    return start_redis(group, node.dir.parent, port=node.port)


def start_stock_redis(group, workdir, extra=()):
    """One plain redis-server as an Endpoint, the reference every Redis-semantics test is held to."""
    node = start_redis(group, workdir, ["--proto-max-bulk-len", "1mb", *extra])
    return Endpoint("redis", node.host, node.port, backends=[node], proc=node.proc)


def start_redis_cluster(group, workdir, nodes=3):
    """A real Redis Cluster of `nodes` primaries (slots split by redis-cli), the reference for
    the cluster dialect."""
    members = [
        start_redis(group, workdir, ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
        for _ in range(nodes)
    ]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *[m.addr for m in members], "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        infos = []
        for member in members:
            with RespConn(member.host, member.port) as conn:
                infos.append(conn.call("CLUSTER", "INFO").decode())
        if all("cluster_state:ok" in i and f"cluster_known_nodes:{nodes}" in i for i in infos):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster not ok: {infos}")
        time.sleep(0.05)
    first = members[0]
    return Endpoint("redis-cluster", first.host, first.port, backends=members)


def memlog_binary():
    """The memlog binary under test: $MEMLOG_BIN, else target/debug/memlog (scripts/test builds it)."""
    path = Path(os.environ.get("MEMLOG_BIN") or REPO_ROOT / "target" / "debug" / "memlog")
    if not path.is_file():
        raise RuntimeError(f"memlog binary not found at {path}: run `cargo build` first or set MEMLOG_BIN")
    return path


def proxy_environment():
    """The environment for `memlog proxy`, without our own MEMLOG_* variables: the proxy reads
    every MEMLOG_… variable as a config override and refuses unknown keys."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MEMLOG_")}


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def proxy_toml(settings, shards, users=()):
    """The proxy's TOML config: top-level settings, then tables (dict-valued settings such as
    `journal`), [[users]] and [[shards]]."""
    scalars = {key: value for key, value in settings.items() if not isinstance(value, dict)}
    lines = [f"{key} = {_toml_value(value)}" for key, value in scalars.items()]
    for table, values in settings.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]"] + [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    for user in users:
        lines += ["", "[[users]]", f"name = {_toml_value(user[0])}", f"password = {_toml_value(user[1])}"]
    for shard in shards:
        lines += ["", "[[shards]]"] + [f"{key} = {_toml_value(value)}" for key, value in shard.items()]
    return "\n".join(lines) + "\n"


def even_ranges(count):
    """`count` contiguous slot ranges covering all slots (3 gives Redis Cluster's usual split)."""
    if count == 3:
        return list(THREE_SHARD_RANGES)
    step = SLOTS // count
    bounds = [i * step for i in range(count)] + [SLOTS]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]


class JournalNode(Node):
    """One `memlog journal` process."""


def start_journal_node(group, workdir):
    """`memlog journal` on a free port with its log in its own directory; ready once it
    accepts TCP connections (it speaks its own protocol, not RESP)."""
    port = free_port()
    node_dir = Path(workdir) / f"journal-{port}"
    node_dir.mkdir(parents=True, exist_ok=True)
    # The client suite exercises Redis semantics through the proxy; mutual TLS between the proxy
    # and the journal nodes is covered by the Rust suites (tests/hostile_journal.rs), so these
    # nodes run in plain TCP on loopback, as the proxy configs here have no [cluster_tls].
    argv = [memlog_binary(), "journal", "--dir", node_dir, "--listen", f"127.0.0.1:{port}", "--insecure-no-tls"]
    proc = group.add(Proc(f"memlog-journal-{port}", argv, node_dir / "journal.log", env=proxy_environment()))
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; log:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return JournalNode("127.0.0.1", port, proc, node_dir)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} does not listen on 127.0.0.1:{port}; log:\n{proc.log_tail()}")
            time.sleep(0.02)


def start_proxy_setup(group, workdir, shards=3, replicas=1, users=(), journal_nodes=3, **settings):
    """`shards` Redis shards (a primary and `replicas` replicas each), `journal_nodes` journal
    nodes with a `file:` metadata store, and `memlog proxy` in front.

    The journal is on by default because that is how users run memlog (every write durable on a
    quorum before Redis sees it); journal_nodes=0 gives a routing-only proxy without `[journal]`.
    settings are proxy config keys (e.g. maxclients=5); listen and metrics_listen get free ports.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    journal = [start_journal_node(group, workdir) for _ in range(journal_nodes)]
    if journal:
        metadata = workdir / f"metadata-{journal[0].port}.json"
        nodes = {"nodes": [node.addr for node in journal], "metadata": f"file:{metadata}"}
        settings = {**settings, "journal": {**settings.get("journal", {}), **nodes}}
    ranges = even_ranges(shards)
    primaries, all_replicas, shard_tables = [], [], []
    for low, high in ranges:
        primary = start_redis(group, workdir)
        reps = [start_redis(group, workdir, ["--replicaof", primary.host, str(primary.port)]) for _ in range(replicas)]
        primaries.append(primary)
        all_replicas.extend(reps)
        shard_tables.append({"slots": f"{low}-{high}", "primary": primary.addr, "replicas": [r.addr for r in reps]})
    endpoint = start_proxy(group, workdir, shard_tables, primaries, all_replicas, users=users, **settings)
    endpoint.journal_nodes = journal
    return endpoint


def start_proxy(group, workdir, shard_tables, primaries, replicas=(), users=(), **settings):
    """`memlog proxy` with the given [[shards]] tables, waiting until it answers PING (which a
    journaled proxy does once every primary has caught up with the journal).

    A dict-valued setting (e.g. journal={"nodes": […], "metadata": "file:…"}) becomes a table.
    """
    port = free_port()
    metrics_port = free_port()
    config = {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics_port}", **settings}
    workdir = Path(workdir)
    config_path = workdir / f"proxy-{port}.toml"
    config_path.write_text(proxy_toml(config, shard_tables, users))
    argv = [memlog_binary(), "proxy", "--config", config_path]
    proc = group.add(Proc(f"memlog-proxy-{port}", argv, workdir / f"proxy-{port}.log", env=proxy_environment()))
    wait_ready("127.0.0.1", port, proc)
    return Endpoint(
        "proxy",
        "127.0.0.1",
        port,
        backends=list(primaries),
        replicas=list(replicas),
        proc=proc,
        metrics_addr=config["metrics_listen"],
        config_path=config_path,
    )


def wait_until_no_rehash(endpoint, timeout=10.0):
    """Waits until no data node behind `endpoint` is rehashing its keyspace, so a SCAN that
    runs next may rightly be required to return every key exactly once."""

    def settled():
        for node in endpoint.backends:
            with RespConn(node.host, node.port) as conn:
                if b"rehashing target" in conn.call("DEBUG", "HTSTATS", "0"):
                    return False
        return True

    wait_until(settled, timeout, "a Redis node is still rehashing")


def wait_until(condition, timeout, message, interval=0.02):
    """Polls `condition()` until it returns a truthy value, which is returned; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} (not true after {timeout}s; last value {last!r})")
