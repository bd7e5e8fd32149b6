"""Proxy-only: the Prometheus endpoint (metrics_listen) and the proxy's own INFO sections."""

import re
import urllib.request

from harness import wait_until

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(proxy):
    """{(metric name, frozenset of labels): value} from the proxy's /metrics."""
    with urllib.request.urlopen(f"http://{proxy.metrics_addr}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            samples[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_commands_total_counts_gets(proxy):
    client = proxy.client()
    client.set("metrics:k", "v")
    before = value(scrape(proxy), "memlog_commands_total", command="get", result="ok")
    for _ in range(25):
        assert client.get("metrics:k") == b"v"

    def counted():
        return value(scrape(proxy), "memlog_commands_total", command="get", result="ok") - before >= 25

    wait_until(counted, 5.0, "memlog_commands_total{command=get,result=ok} did not grow by 25")
    client.close()


def test_connected_clients_follows_open_connections(proxy):
    def connected():
        return value(scrape(proxy), "memlog_connected_clients")

    base = connected()
    conns = [proxy.raw() for _ in range(3)]
    try:
        for conn in conns:
            assert conn.call("PING") == "PONG"
        wait_until(lambda: connected() >= base + 3, 5.0, "memlog_connected_clients did not count 3 new clients")
    finally:
        for conn in conns:
            conn.close()
    wait_until(lambda: connected() <= base, 5.0, "memlog_connected_clients did not drop after 3 closes")


def test_info_has_a_memlog_section_with_the_shards(proxy):
    with proxy.raw() as conn:
        server = conn.call("INFO", "server").decode()
        assert "memlog_version" not in server, "INFO server has exactly Redis's fields"
        memlog = conn.call("INFO", "memlog").decode()
        assert re.search(r"^memlog_version:\S+", memlog, re.MULTILINE), memlog
    fields = dict(line.split(":", 1) for line in memlog.splitlines() if ":" in line)
    assert memlog.startswith("# Memlog") and fields["shards"] == "3", memlog
    for index, primary in enumerate(proxy.backends):
        assert f"primary={primary.addr}" in fields[f"shard{index}"], fields


def test_info_replication_lists_the_shards_replicas(proxy):
    """The endpoint is a primary whose replicas are the shards' replicas that answer, each with
    the journal position it applied."""

    def fields():
        with proxy.raw() as conn:
            text = conn.call("INFO", "replication").decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def slaves(info):
        return [dict(kv.split("=", 1) for kv in info[f"slave{i}"].split(",")) for i in range(len(proxy.replicas))]

    client = proxy.client()
    for i in range(100):  # a write on every shard, so every replica applies a journal entry
        client.set(f"replication:{i}", i)
    wait_until(lambda: fields()["connected_slaves"] == str(len(proxy.replicas)), 10.0, "replicas not all up")
    wait_until(lambda: all(int(s["offset"]) >= 1 for s in slaves(fields())), 10.0, "replicas' offsets")
    info = fields()
    assert info["role"] == "master" and info["master_failover_state"] == "no-failover", info
    assert sorted(int(s["port"]) for s in slaves(info)) == sorted(node.port for node in proxy.replicas), info
    assert all(s["state"] == "online" for s in slaves(info)), info
    assert int(info["master_repl_offset"]) >= 3, info
    client.delete(*[f"replication:{i}" for i in range(100)])
