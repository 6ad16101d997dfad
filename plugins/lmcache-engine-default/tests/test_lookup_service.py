"""The lookup service (from the core's toolkit) as the default engine wires it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from default_engine_rig import (
    CHUNK,
    CTX,
    Rig,
    close_rig,
    make_rig,
    registration,
    tokens,
    wire_key,
)

from lmcache_core.engine.contract import WouldBlock
from lmcache_core.engine.lookup import INLINE_MAX_KEYS
from lmcache_core.engine.prefetch_pool import PrefetchPool
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1


def store(
    rig: Rig, instance_id: int, ids: list[int], chunks: range, *, rank: int = 0, world_size: int = 1
) -> None:
    """Store chunks of one rank through the pool (engine_driven), one window per chunk."""
    for chunk in chunks:
        start, end = chunk * CHUNK, (chunk + 1) * CHUNK
        key = wire_key(ids, start, end, "writer", worker_id=rank, world_size=world_size)
        rig.call("prepare_store", key, instance_id)
        assert rig.call("commit_store", key, instance_id, b"")


def test_a_lookup_locks_only_the_prefix_every_rank_has(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(2, world_size=2))
    rig.call("register_kv_cache_engine_driven_context", registration(3, world_size=2))
    ids = tokens(3, seed=10)
    store(rig, 2, ids, range(3), rank=0, world_size=2)
    store(rig, 3, ids, range(0, 3, 2), rank=1, world_size=2)  # rank 1 lacks chunk 1
    rig.policy.accessed.clear()
    rig.call("lookup", wire_key(ids, 0, 3 * CHUNK, "r", worker_id=None, world_size=2), 1)
    assert rig.call("query_prefetch_status", "r") == 1
    assert rig.call("query_prefetch_status", "r") == 0  # reported once
    assert rig.l1.usage().locked_objects == 2  # chunk 0 of both ranks, nothing past the gap
    (accessed,) = rig.policy.accessed  # and only those two count as used
    assert len(accessed) == 2 and {k.kv_rank for k in accessed} == {0x02000200, 0x02010201}


def test_locks_go_with_a_newer_lookup_free_lookup_locks_and_end_session(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(1))
    ids = tokens(2, seed=11)
    store(rig, 1, ids, range(2))
    lookup = wire_key(ids, 0, 2 * CHUNK, "r", worker_id=None)
    rig.call("lookup", lookup, 1)
    rig.call("lookup", lookup, 1)  # replaces the first: its locks are released
    assert rig.l1.usage().locked_objects == 2
    rig.call("free_lookup_locks", wire_key(ids, 0, CHUNK, "r", worker_id=None), 1)
    assert rig.l1.usage().locked_objects == 1
    rig.call("end_session", "r")
    assert rig.l1.usage().locked_objects == 0
    assert rig.call("query_prefetch_status", "r") == 0  # unknown request


class DictAdapter(L2AdapterV1):
    """The smallest L2 adapter: objects in a dict."""

    def __init__(self) -> None:
        super().__init__("dict", num_workers=1)
        self.objects: dict[ObjectKey, bytes] = {}

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        self.objects[key] = b"".join(parts)

    def _exists(self, key: ObjectKey) -> bool:
        return key in self.objects

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        return self.objects.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        return self.objects.pop(key, None) is not None


def test_a_partial_hit_prefetches_the_rest_from_l2() -> None:
    adapter = DictAdapter()
    adapter.start()
    rig = make_rig(l2_adapters=[adapter])
    try:
        rig.call("register_kv_cache_engine_driven_context", registration(1))
        ids = tokens(3, seed=12)
        store(rig, 1, ids, range(3))
        deadline = time.monotonic() + 10
        while len(adapter.objects) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # the L2 store thread copies them
        keys = rig.l1.keys()
        assert len(adapter.objects) == 3 and rig.l1.usage().locked_objects == 0
        assert rig.l1.delete(keys[1:]) == 2  # L1 keeps chunk 0 only
        rig.call("lookup", wire_key(ids, 0, 3 * CHUNK, "r", worker_id=None), 1)
        assert rig.call("wait_prefetch_status", "r", 10.0) == 3
        assert rig.l1.usage().locked_objects == 3  # the prefetched chunks are locked too
        explained = rig.engine.lookups.explainer.recent.get("r")
        assert explained is not None and explained.first_miss is None
        assert explained.hit_chunks_by_tier == {"l1": 1.0, "l2[1]:dict": 2.0}
        # A full prefetch queue: the lookup answers its L1 hit, the rest is prefetch_limit.
        rig.call("end_session", "r")
        assert rig.l1.delete(rig.l1.keys()[1:]) == 2
        pool, gate = rig.engine.prefetch_pool, threading.Event()
        try:
            while pool.submit(gate.wait, 10):
                pass
            rig.call("lookup", wire_key(ids, 0, 3 * CHUNK, "busy", worker_id=None), 1)
            assert rig.call("query_prefetch_status", "busy") == 1
        finally:
            gate.set()
        busy = rig.engine.lookups.explainer.recent.get("busy")
        assert busy is not None and busy.first_miss is not None
        assert (busy.first_miss.chunk, busy.first_miss.cause) == (1, "prefetch_limit")
        assert busy.miss_chunks_by_cause == {"prefetch_limit": 2}
    finally:
        close_rig(rig)


def test_the_prefetch_pool_is_a_component() -> None:
    pool = PrefetchPool(2)
    assert not pool.health().ok
    with pytest.raises(RuntimeError):
        pool.submit(print)  # not started
    pool.start()
    assert pool.health().ok
    ran: list[int] = []
    pool.submit(ran.append, 1)
    pool.stop(1.0)  # waits for running jobs
    assert ran == [1] and not pool.health().ok
    with pytest.raises(RuntimeError):
        pool.start()
    with pytest.raises(ValueError):
        PrefetchPool(0)


# -- the inline attempt the request loop makes first -------------------------------------


def inline(rig: Rig, key: WireCacheKey) -> None:
    """The request loop's first try at a lookup (``WouldBlock``: it goes to the pool)."""
    rig.engine.handlers()["lookup"].try_inline(CTX, key, 1)


def test_an_inline_lookup_of_a_full_hit_leaves_what_the_pool_lookup_leaves(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(2, world_size=2))
    rig.call("register_kv_cache_engine_driven_context", registration(3, world_size=2))
    ids = tokens(3, seed=20)
    store(rig, 2, ids, range(3), rank=0, world_size=2)
    store(rig, 3, ids, range(3), rank=1, world_size=2)
    for request, attempt in (("pool", rig.call), ("inline", None)):
        key = wire_key(ids, 0, 3 * CHUNK, request, worker_id=None, world_size=2)
        rig.policy.accessed.clear()
        if attempt is None:
            inline(rig, key)
        else:
            attempt("lookup", key, 1)
        assert rig.call("query_prefetch_status", request) == 3
        assert rig.l1.usage().locked_objects == 6
        (accessed,) = rig.policy.accessed
        assert len(accessed) == 6
        rig.call("end_session", request)
        assert rig.l1.usage().locked_objects == 0


def test_an_inline_lookup_that_could_wait_or_miss_changes_nothing(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(1))
    ids = tokens(3, seed=21)
    store(rig, 1, ids, range(2))  # chunk 2 is missing
    miss = wire_key(ids, 0, 3 * CHUNK, "r", worker_id=None)
    hit = wire_key(ids, 0, 2 * CHUNK, "r", worker_id=None)
    with pytest.raises(WouldBlock):
        inline(rig, miss)  # a partial hit: its misses are explained against L1, on the pool
    assert rig.l1.usage().locked_objects == 0
    session = rig.engine.lookups.sessions.peek("r")
    assert session is not None and session.job is None
    with rig.l1._lock, pytest.raises(WouldBlock):  # L1 busy on another thread right now
        inline(rig, hit)
    with session.mutex, pytest.raises(WouldBlock):  # the session is busy
        inline(rig, hit)
    over = wire_key(tokens(INLINE_MAX_KEYS + 1, seed=22), 0, (INLINE_MAX_KEYS + 1) * CHUNK, "b")
    with pytest.raises(WouldBlock):  # over the work budget (a miss too, but not looked at)
        inline(rig, over)
    assert rig.engine.lookups.sessions.peek("b") is None
    assert rig.l1.usage().locked_objects == 0
    inline(rig, hit)  # now nothing is in the way
    assert rig.l1.usage().locked_objects == 2
    with pytest.raises(WouldBlock):  # an earlier job to release: that unlocks L1, on the pool
        inline(rig, hit)
    rig.call("lookup", hit, 1)  # the pool does it
    assert rig.call("query_prefetch_status", "r") == 2
    assert rig.l1.usage().locked_objects == 2
    rig.call("end_session", "r")
    assert rig.l1.usage().locked_objects == 0


def test_an_inline_lookup_never_displaces_a_session(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(1))
    ids = tokens(1, seed=23)
    store(rig, 1, ids, range(1))
    sessions = rig.engine.lookups.sessions
    capacity, sessions.capacity = sessions.capacity, len(sessions) + 1
    try:
        inline(rig, wire_key(ids, 0, CHUNK, "first", worker_id=None))
        with pytest.raises(WouldBlock):  # the table is full: a new one would displace one
            inline(rig, wire_key(ids, 0, CHUNK, "second", worker_id=None))
        assert sessions.peek("second") is None and sessions.peek("first") is not None
    finally:
        sessions.capacity = capacity
        rig.call("end_session", "first")
