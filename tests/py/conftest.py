"""Fixtures of the client-level suite.

Every test about Redis semantics runs against the memlog proxy AND against stock Redis (the
`target` fixture), so a passing proxy behaves like Redis rather than like our expectations.
Tests about the cluster dialect compare the proxy with a real Redis Cluster (`cluster_target`).
Proxy-only behaviour uses the `proxy` fixture. `MEMLOG_TEST_TARGET=proxy|redis|both` (default
both) selects which side runs.

The shared deployments start once per session; tests that kill processes or need special
settings start their own small setup through `spawn`.
"""

import os

import pytest

import harness

_TARGET_CHOICES = {"proxy": ["proxy"], "redis": ["redis"], "both": ["proxy", "redis"]}
_target_env = os.environ.get("MEMLOG_TEST_TARGET", "both")
if _target_env not in _TARGET_CHOICES:
    raise pytest.UsageError(f"MEMLOG_TEST_TARGET must be proxy, redis or both, not {_target_env!r}")
TARGETS = _TARGET_CHOICES[_target_env]

# Limits of the shared proxy (stock Redis gets --proto-max-bulk-len 1mb to match).
PROTO_MAX_BULK_LEN = 1024 * 1024
MAX_MULTIBULK_LEN = 4096


@pytest.fixture(scope="session")
def session_processes():
    """Processes of the shared deployments, killed by pid when the session ends."""
    group = harness.ProcessGroup()
    yield group
    group.kill_all()


@pytest.fixture(scope="session")
def memlog_proxy(session_processes, tmp_path_factory):
    """The shared proxy: 3 shards (slots 0-5460, 5461-10921, 10922-16383), each a primary
    with one replica, plus a metrics endpoint."""
    return harness.start_proxy_setup(
        session_processes,
        tmp_path_factory.mktemp("proxy"),
        shards=3,
        replicas=1,
        proto_max_bulk_len=PROTO_MAX_BULK_LEN,
        max_multibulk_len=MAX_MULTIBULK_LEN,
    )


@pytest.fixture(scope="session")
def stock_redis(session_processes, tmp_path_factory):
    """One stock redis-server: the reference for Redis semantics."""
    return harness.start_stock_redis(session_processes, tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="session")
def redis_cluster(session_processes, tmp_path_factory):
    """A real 3-node Redis Cluster: the reference for the cluster dialect."""
    return harness.start_redis_cluster(session_processes, tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture(scope="session", params=TARGETS)
def target(request):
    """The memlog proxy or a stock redis-server; a test using it must pass on both."""
    return request.getfixturevalue("memlog_proxy" if request.param == "proxy" else "stock_redis")


@pytest.fixture(scope="session", params=TARGETS)
def cluster_target(request):
    """The memlog proxy or a real Redis Cluster; for tests of the cluster dialect."""
    return request.getfixturevalue("memlog_proxy" if request.param == "proxy" else "redis_cluster")


@pytest.fixture
def proxy(memlog_proxy):
    """The shared memlog proxy, for proxy-only tests (which are skipped, and the proxy never
    started, when only Redis is targeted)."""
    return memlog_proxy


@pytest.fixture
def r(target):
    """A decoding redis-py client on an empty `target`."""
    client = target.client(decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def clean_cluster_target(cluster_target):
    """`cluster_target` with an empty keyspace."""
    cluster_target.flushall()
    return cluster_target


@pytest.fixture
def rc(clean_cluster_target):
    """A decoding RedisCluster client on an empty `cluster_target`."""
    client = clean_cluster_target.cluster_client(decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def spawn(tmp_path):
    """Starts dedicated processes for one test (killed by pid when it ends):
    spawn.proxy(shards=…, replicas=…, **settings), spawn.redis(extra_args)."""
    group = harness.ProcessGroup()

    class Spawner:
        processes = group

        @staticmethod
        def proxy(shards=1, replicas=0, users=(), **settings):
            return harness.start_proxy_setup(group, tmp_path, shards=shards, replicas=replicas, users=users, **settings)

        @staticmethod
        def redis(extra=()):
            return harness.start_stock_redis(group, tmp_path, extra)

    yield Spawner
    group.kill_all()


def pytest_collection_modifyitems(config, items):
    """Marks every test of the `proxy` fixture as `proxy_only` (tests that start their own
    proxy carry the mark explicitly), so `-m "not proxy_only"` selects exactly the tests that
    compare with stock Redis; skips them all when only Redis is targeted."""
    skip = pytest.mark.skip(reason="proxy-only test; MEMLOG_TEST_TARGET=redis")
    for item in items:
        if "proxy" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.proxy_only)
        if "proxy" not in TARGETS and item.get_closest_marker("proxy_only"):
            item.add_marker(skip)
