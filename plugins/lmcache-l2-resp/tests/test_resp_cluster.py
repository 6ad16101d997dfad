"""The ``resp`` adapter on a real 3-shard Redis Cluster: routing, MOVED, ASK, a shard lost.

The cluster is three ``redis-server`` processes on loopback (``RedisClusterServers``),
started once per module and stopped by PID; tests that reshape it (a slot moved, a
shard killed) put it back before they end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_resp.adapter import build_resp
from lmcache_l2_resp.cluster import parse_redirect
from lmcache_l2_resp.cluster_adapter import RespClusterL2Adapter
from lmcache_l2_resp.config import RespAdapterConfig
from lmcache_l2_resp.testing import REDIS_SERVER, SKIP_REASON, RedisClusterServers, needs_redis

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.testing.l2_conformance import L2AdapterConformance

FAST = {"socket_timeout_s": 1.0, "connect_timeout_s": 0.5}
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def flush(cluster: RedisClusterServers) -> None:
    for node in cluster.nodes:
        node.flush()


def keys(n: int, seed: int = 0) -> list[ObjectKey]:
    return [ObjectKey(f"{seed}:{i}".encode().ljust(32, b"k"), "org/m", 0, 0, "") for i in range(n)]


@pytest.fixture
def make(cluster: RedisClusterServers) -> Iterator[Any]:
    made: list[RespClusterL2Adapter] = []

    def factory(**kwargs: Any) -> RespClusterL2Adapter:
        seeds = [(node.host, node.port) for node in cluster.nodes[:1]]
        adapter = RespClusterL2Adapter(seeds, **{**FAST, **kwargs})
        adapter.start()
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        adapter.close()


def test_parse_redirect() -> None:
    moved = parse_redirect("MOVED 3999 127.0.0.1:6381", ("10.0.0.1", 7000))
    assert moved is not None and (moved.slot, moved.node, moved.ask) == (
        3999,
        ("127.0.0.1", 6381),
        False,
    )
    ask = parse_redirect("ASK 12 :7002", ("10.0.0.1", 7000))
    assert ask is not None and (ask.node, ask.ask) == (("10.0.0.1", 7002), True)
    assert parse_redirect("ERR wrong number of arguments", ("h", 1)) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "resp", "cluster": True}, "seed_nodes"),
        ({"type": "resp", "seed_nodes": ["127.0.0.1:7000"], "host": "h", "port": 1}, "cluster"),
        ({"type": "resp", "cluster": True, "seed_nodes": ["127.0.0.1"]}, "host:port"),
        ({"type": "resp", "cluster": True, "seed_nodes": ["h:70000"]}, "host:port"),
        ({"type": "resp", "cluster": True, "host": "h"}, "port"),
    ],
)
def test_cluster_config_errors_name_the_field(
    data: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("LMCACHE_RESP_HOST", "LMCACHE_RESP_PORT"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match=message):
        RespAdapterConfig.model_validate(data)


def test_seeds_from_host_and_seed_nodes() -> None:
    config = RespAdapterConfig.model_validate(
        {
            "type": "resp",
            "cluster": True,
            "host": "a",
            "port": 1,
            "seed_nodes": ["b:2", "[::1]:3", "a:1"],
        }
    )
    assert config.seeds() == [("a", 1), ("b", 2), ("::1", 3)]


@needs_redis
def test_keys_spread_over_every_shard_and_round_trip(
    cluster: RedisClusterServers, make: Any
) -> None:
    flush(cluster)
    adapter = make(object_format="raw")
    batch = keys(60)
    payloads = [bytes([i]) * (1000 + i) for i in range(60)]
    assert adapter.submit_store(batch, payloads).result(TIMEOUT_S) == [True] * 60
    counts = []
    for node in cluster.nodes:
        with node.client() as client:
            counts.append(client.dbsize())
    assert sum(counts) == 60 and all(count > 5 for count in counts)  # every shard holds some
    # Each value sits on its slot's owner, under upstream's name, as the bare payload.
    name = native_key_name(batch[7]).encode()
    with cluster.owner_of(name).client() as client:
        assert client.get(name) == payloads[7]
    buffers = [memoryview(bytearray(len(p))) for p in payloads]
    assert adapter.submit_load(batch, buffers).result(TIMEOUT_S) == [True] * 60
    assert [bytes(b) for b in buffers] == payloads
    assert adapter.status()["shards"] == 3 and adapter.status()["moved_redirects"] == 0


@needs_redis
def test_index_rebuilt_from_every_shard(cluster: RedisClusterServers, make: Any) -> None:
    flush(cluster)
    first = make()
    batch = keys(30, seed=1)
    assert first.submit_store(batch, [b"v" * 100] * 30).result(TIMEOUT_S) == [True] * 30
    again = make()
    assert sorted(again.keys()) == sorted(batch)
    assert again.used_bytes == first.used_bytes


def _move_slot(cluster: RedisClusterServers, name: bytes, *, finish: bool) -> tuple[Any, Any, int]:
    """Start (and with ``finish``, complete) moving ``name``'s slot to another shard."""
    source = cluster.owner_of(name)
    target = next(node for node in cluster.nodes if node is not source)
    with source.client() as src, target.client() as dst:
        slot = int(src.execute_command("CLUSTER", "KEYSLOT", name))
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(target))
        if finish:
            for key in src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
                src.execute_command("MIGRATE", target.host, target.port, key, 0, 5000)
            for node in cluster.nodes:
                with node.client() as client:
                    client.execute_command(
                        "CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(target)
                    )
    return source, target, slot


def _settle_slot(cluster: RedisClusterServers, slot: int, owner: Any) -> None:
    """Give ``slot`` to ``owner`` everywhere (ends a migration, either way; flushes first)."""
    flush(cluster)  # a node refuses to give away a slot it still holds keys of
    for node in cluster.nodes:
        with node.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(owner))
    cluster.wait_ok()


@needs_redis
def test_moved_is_followed_after_a_reshard(cluster: RedisClusterServers, make: Any) -> None:
    flush(cluster)
    adapter = make(object_format="raw")
    key = keys(1, seed=2)[0]
    name = native_key_name(key).encode()
    assert adapter.submit_store([key], [b"before"]).result(TIMEOUT_S) == [True]
    source, target, slot = _move_slot(cluster, name, finish=True)
    try:
        # The adapter's map still names the source: it answers MOVED to the batched
        # lookup, whose key is then looked up again through the router, following it.
        assert adapter.submit_lookup_and_lock([key]).result(TIMEOUT_S) == [True]
        adapter.unlock([key])
        assert adapter.status()["moved_redirects"] >= 1
        buffer = bytearray(6)
        assert adapter.submit_load([key], [memoryview(buffer)]).result(TIMEOUT_S) == [True]
        assert bytes(buffer) == b"before"
        assert adapter.status()["moved_redirects"] >= 1
        assert adapter.submit_store([key], [b"after!"]).result(TIMEOUT_S) == [True]
        with target.client() as client:
            assert client.get(name) == b"after!"
    finally:
        _settle_slot(cluster, slot, source)


@needs_redis
def test_ask_is_followed_during_a_migration(cluster: RedisClusterServers, make: Any) -> None:
    flush(cluster)
    adapter = make(object_format="raw")
    key = keys(1, seed=3)[0]
    name = native_key_name(key).encode()
    _source, target, slot = _move_slot(cluster, name, finish=False)
    try:
        # A new key in a migrating slot belongs on the target: the source answers ASK.
        assert adapter.submit_store([key], [b"asked"]).result(TIMEOUT_S) == [True]
        with target.client() as client:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.get(name)
            assert pipe.execute()[1] == b"asked"
        assert adapter.submit_lookup_and_lock([key]).result(TIMEOUT_S) == [True]
        buffer = bytearray(5)
        assert adapter.submit_load([key], [memoryview(buffer)]).result(TIMEOUT_S) == [True]
        assert bytes(buffer) == b"asked"
        assert adapter.status()["ask_redirects"] >= 3
        assert adapter.status()["moved_redirects"] == 0  # ASK never changes the map
    finally:
        _settle_slot(cluster, slot, target)


@needs_redis
def test_a_shard_killed_and_restarted_is_survived(cluster: RedisClusterServers, make: Any) -> None:
    flush(cluster)
    adapter = make(object_format="raw")
    batch = keys(40, seed=4)
    assert adapter.submit_store(batch, [b"x" * 64] * 40).result(TIMEOUT_S) == [True] * 40
    victim = cluster.owner_of(native_key_name(batch[0]).encode())
    on_victim = [cluster.owner_of(native_key_name(k).encode()) is victim for k in batch]
    victim.kill()
    try:
        started = time.monotonic()
        found = adapter.submit_lookup_and_lock(batch).result(TIMEOUT_S)
        assert time.monotonic() - started < 5  # refused connections fail at once
        assert found == [not dead for dead in on_victim]  # the others keep serving
        adapter.unlock(batch)
        fresh = keys(20, seed=5)
        stored = adapter.submit_store(fresh, [b"y" * 64] * 20).result(TIMEOUT_S)
        assert any(stored) and not all(stored)
        assert adapter.status()["is_healthy"] is True
    finally:
        victim.start()  # same port and nodes.conf: it rejoins with its slots, empty
        cluster.wait_ok()
    again = adapter.submit_store(batch, [b"z" * 64] * 40).result(TIMEOUT_S)
    assert again == [True] * 40
    assert adapter.submit_lookup_and_lock(batch).result(TIMEOUT_S) == [True] * 40
    adapter.unlock(batch)


@needs_redis
def test_built_from_the_json(cluster: RedisClusterServers) -> None:
    flush(cluster)
    config = RespAdapterConfig.model_validate(
        {"type": "resp", "cluster": True, "seed_nodes": cluster.seeds[1:], "format": "raw"}
    )
    adapter = build_resp(config)
    try:
        assert isinstance(adapter, RespClusterL2Adapter)
        adapter.start()
        assert adapter.submit_store(keys(5, seed=6), [b"j"] * 5).result(TIMEOUT_S) == [True] * 5
        assert adapter.status()["cluster"] is True
    finally:
        adapter.close()


@needs_redis
class TestRespClusterConformance(L2AdapterConformance):
    """The whole L2 contract on the cluster, flushed before each test."""

    servers: RedisClusterServers

    @pytest.fixture(autouse=True)
    def _empty_cluster(self, cluster: RedisClusterServers) -> None:
        flush(cluster)
        self.servers = cluster

    def _build(self, capacity_bytes: int, object_format: Any) -> RespClusterL2Adapter:
        seeds = [(node.host, node.port) for node in self.servers.nodes]
        return RespClusterL2Adapter(
            seeds, capacity_bytes=capacity_bytes, object_format=object_format, **FAST
        )

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: Any = "framed"
    ) -> RespClusterL2Adapter:
        return self._build(capacity_bytes, object_format)

    def corrupt(self, adapter: Any, key: ObjectKey) -> bool:
        name = native_key_name(key).encode()
        with self.servers.owner_of(name).client() as client:
            length = client.strlen(name)
            last = client.getrange(name, length - 1, length - 1)
            client.setrange(name, length - 1, bytes([last[0] ^ 0xFF]))
        return True

    def reopen(self, adapter: Any, tmp_path: Path) -> RespClusterL2Adapter | None:
        return self._build(adapter.capacity_bytes, adapter.object_format)


@needs_redis
def test_a_cluster_down_at_start_up_gives_a_degraded_adapter_that_recovers(
    tmp_path: Path,
) -> None:
    """Decided: degraded, not a start-up error (a fleet's servers must not wait for Redis).

    With no node up, start() and every call fail fast (no connection retries with
    backoff: this once held start() for about 4 s per seed); once the cluster is up,
    the next calls read the slot map and work, with no restart of the adapter.
    """
    servers = RedisClusterServers(tmp_path / "late-cluster")  # ports chosen, not started
    adapter = RespClusterL2Adapter([(n.host, n.port) for n in servers.nodes], **FAST)
    try:
        started = time.monotonic()
        adapter.start()
        assert adapter.keys() == []
        batch = keys(2, seed=77)
        assert adapter.submit_lookup_and_lock(batch).result(TIMEOUT_S) == [False, False]
        assert adapter.submit_store(batch, [b"v1", b"v2"]).result(TIMEOUT_S) == [False, False]
        assert time.monotonic() - started < 3.0
        status = adapter.status()
        assert status["is_healthy"] is True
        assert status["shards"] == 0
        assert status["errors"] >= 2

        servers.start()
        deadline = time.monotonic() + TIMEOUT_S
        while adapter.submit_store(batch, [b"v1", b"v2"]).result(TIMEOUT_S) != [True, True]:
            assert time.monotonic() < deadline, "the adapter never used the cluster once it was up"
            time.sleep(0.2)
        assert adapter.submit_lookup_and_lock(batch).result(TIMEOUT_S) == [True, True]
        adapter.unlock(batch)
        assert adapter.status()["shards"] == 3
    finally:
        adapter.close()
        servers.stop()
