"""engine_driven transfers: prepare/commit through the shared pool and inline."""

from __future__ import annotations

import pytest
from default_engine_rig import CHUNK, Rig, registration, tokens, wire_key

from lmcache_core.protocol.errors import BadRequestError, NotRegisteredError

NBYTES = 4096  # 2 layers x (K, V) x 16 tokens x 32 hidden x fp16


def test_store_then_retrieve_through_the_pool(rig: Rig) -> None:
    reply = rig.call("register_kv_cache_engine_driven_context", registration(1))
    segment = rig.l1.shared_segment()
    assert segment is not None and reply.shm_name == segment.name
    ids = tokens(2)
    key = wire_key(ids, 0, 2 * CHUNK, "r1")
    prepared = rig.call("prepare_store", key, 1).context
    assert prepared["chunk_indices"] == [0, 1]
    for value, slot in enumerate(prepared["slots"], 1):  # the worker writes the pool
        assert slot["length"] == NBYTES
        rig.l1.buffer(slot["offset"], NBYTES).fill_(value)
    assert rig.call("commit_store", key, 1, b"") is True
    assert rig.call("commit_store", key, 1, b"") is False  # committed once
    # A lookup locks both chunks; the retrieve reads them in place and consumes those locks.
    rig.call("lookup", wire_key(ids, 0, 2 * CHUNK, "r1", worker_id=None), 1)
    assert rig.call("query_prefetch_status", "r1") == 2
    found = rig.call("prepare_retrieve", key, 1)
    assert found.success and found.data == b""
    offsets = [slot["offset"] for slot in found.context["slots"]]
    assert [rig.l1.buffer(o, NBYTES)[0].item() for o in offsets] == [1, 2]
    assert len(rig.engine.engine_driven.pending) == 1
    assert rig.call("commit_retrieve", key, 1) is True
    assert rig.call("commit_retrieve", key, 1) is False  # nothing pending any more
    assert rig.l1.usage().locked_objects == 0


def test_store_then_retrieve_inline(inline_rig: Rig) -> None:
    rig = inline_rig
    reply = rig.call("register_kv_cache_engine_driven_context", registration(1))
    assert (reply.shm_name, reply.pool_size) == ("", 0)
    key = wire_key(tokens(2, seed=1), 0, 2 * CHUNK, "r2")
    prepared = rig.call("prepare_store", key, 1).context
    assert prepared == {"chunk_indices": [0, 1], "object_nbytes": NBYTES}
    with pytest.raises(BadRequestError, match="inline"):
        rig.call("commit_store", key, 1, b"")  # no pool: the bytes must come
    assert rig.l1.usage().staged_objects == 0  # and the reservations were aborted
    rig.call("prepare_store", key, 1)
    with pytest.raises(BadRequestError, match="raw objects"):
        rig.call("commit_store", key, 1, b"x" * 10)
    rig.call("prepare_store", key, 1)
    data = bytes([7]) * NBYTES + bytes([8]) * NBYTES
    assert rig.call("commit_store", key, 1, data) is True
    found = rig.call("prepare_retrieve", key, 1)
    assert found.success and found.data == data
    assert found.context == {"object_nbytes": NBYTES}
    assert rig.l1.usage().locked_objects == 0  # inline: released at once
    assert rig.call("commit_retrieve", key, 1) is True  # nothing to commit, and that is fine


def test_a_second_prepare_replaces_the_first(rig: Rig) -> None:
    """As before the split: the second reserves while the first still holds the chunks."""
    rig.call("register_kv_cache_engine_driven_context", registration(1))
    key = wire_key(tokens(2, seed=2), 0, 2 * CHUNK, "r3")
    assert len(rig.call("prepare_store", key, 1).context["slots"]) == 2
    assert rig.call("prepare_store", key, 1).context["slots"] == []
    assert rig.l1.usage().staged_objects == 0  # the first's reservations were released
    assert len(rig.engine.engine_driven.pending) == 1
    assert rig.call("commit_store", key, 1, b"") is False  # nobody writes those chunks now
    assert len(rig.engine.engine_driven.pending) == 0


def test_a_store_of_chunks_another_writer_stages_waits_for_its_commit(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(1))
    rig.call("register_kv_cache_engine_driven_context", registration(2))
    key = wire_key(tokens(1, seed=3), 0, CHUNK, "r4")
    rig.call("prepare_store", key, 1)
    assert rig.call("prepare_store", key, 2).context["chunk_indices"] == []  # 1 writes it
    rig.call("unregister_kv_cache_engine_driven_context", 1)  # 1 leaves: its stage is dropped
    assert rig.call("commit_store", key, 2, b"") is False  # at once, not after 5 s


def test_unregistering_releases_pending_stores_and_reads(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(1))
    stored = wire_key(tokens(1, seed=4), 0, CHUNK, "r5")
    rig.call("prepare_store", stored, 1)
    rig.call("commit_store", stored, 1, b"")
    rig.call("prepare_retrieve", stored, 1)
    rig.call("prepare_store", wire_key(tokens(2, seed=5), 0, 2 * CHUNK, "r6"), 1)
    usage = rig.l1.usage()
    assert (usage.locked_objects, usage.staged_objects) == (1, 2)
    rig.call("unregister_kv_cache_engine_driven_context", 1)
    usage = rig.l1.usage()
    assert (usage.locked_objects, usage.staged_objects) == (0, 0)
    assert len(rig.engine.engine_driven.pending) == 0
    with pytest.raises(NotRegisteredError):
        rig.call("prepare_store", stored, 1)


def test_a_missing_chunk_fails_the_retrieve_and_locks_nothing(rig: Rig) -> None:
    rig.call("register_kv_cache_engine_driven_context", registration(1))
    found = rig.call("prepare_retrieve", wire_key(tokens(1, seed=6), 0, CHUNK, "r7"), 1)
    assert not found.success
    assert rig.l1.usage().locked_objects == 0
    with pytest.raises(BadRequestError, match="multiples"):
        rig.call("prepare_store", wire_key(tokens(1), 0, 5, "r8"), 1)
