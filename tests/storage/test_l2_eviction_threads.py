"""An L2 eviction block is reached by the store thread and the prefetch threads at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.plugin.specs import PluginKind
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.tier import AdapterEviction

PAYLOAD = bytes(4096)


class OneCallerAtATime:
    """Wraps a real policy and records any call that overlaps another (the contract's rule).

    Every call lingers a little (and the candidate iteration between keys), so an
    overlap that the caller fails to prevent shows up on every run.
    """

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy
        self.active = 0
        self.overlaps = 0
        self._count = threading.Lock()

    def _enter(self) -> None:
        with self._count:
            self.overlaps += self.active > 0
            self.active += 1
        time.sleep(0.0005)

    def _exit(self) -> None:
        with self._count:
            self.active -= 1

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        self._enter()
        try:
            self.policy.on_stored(keys)
        finally:
            self._exit()

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        self._enter()
        try:
            self.policy.on_accessed(keys)
        finally:
            self._exit()

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        self._enter()
        try:
            self.policy.on_removed(keys)
        finally:
            self._exit()

    def candidates(self) -> Iterator[ObjectKey]:
        self._enter()
        try:
            for key in self.policy.candidates():
                yield key
                time.sleep(0.0001)
        finally:
            self._exit()


def test_accesses_during_enforcement_never_overlap_policy_calls() -> None:
    """Prefetch hits (on_accessed) while the store thread evicts: one policy call at a time."""
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(PluginKind.L2_ADAPTER, "mock")
    assert spec.config_model is not None
    capacity_gb = 64 * (len(PAYLOAD) + 48) / (1 << 30)
    config = spec.config_model.model_validate(
        {"type": "mock", "max_size_gb": capacity_gb, "mock_bandwidth_gb": 1000}
    )
    adapter = registry.build(PluginKind.L2_ADAPTER, "mock", config, None)
    assert isinstance(adapter, L2AdapterV1)
    lru = registry.build(
        PluginKind.EVICTION_POLICY, "LRU", EvictionSettings(0.5, 0.3, adapter.capacity_bytes)
    )
    policy = OneCallerAtATime(lru)
    eviction = AdapterEviction(policy, 0.5, 0.3)
    keys = [ObjectKey(i.to_bytes(8, "big"), "m", 0) for i in range(400)]
    stop = threading.Event()

    def touch() -> None:
        while not stop.is_set():
            for start in range(0, len(keys), 50):
                eviction.accessed(keys[start : start + 50])

    toucher = threading.Thread(target=touch)
    toucher.start()
    try:
        for start in range(0, len(keys), 16):
            batch = keys[start : start + 16]
            results = adapter.submit_store(batch, [PAYLOAD] * len(batch)).result(10)
            eviction.stored([k for k, ok in zip(batch, results, strict=True) if ok])
            eviction.enforce(adapter)
            assert adapter.used_bytes <= adapter.capacity_bytes
    finally:
        stop.set()
        toucher.join(10)
        adapter.close()
    assert policy.overlaps == 0
