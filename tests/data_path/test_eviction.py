"""A 10 MiB L1 under pressure: bounded, honest about what it kept, never evicting locked objects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.protocol.errors import OutOfMemoryError
from lmcache_core.protocol.types import CacheKey, EngineDrivenRegistration
from lmcache_core.transfer.layout import KVFormat
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup,
    make_layout,
    pick_blocks,
    probe,
    randomize,
    request_id,
    snapshot,
    zero,
)

OBJECT_BYTES = 256 * 1024
LAYOUT = make_layout(
    KVFormat.NHD,
    torch.float32,
    num_layers=4,
    num_blocks=64,
    block_size=CHUNK,
    num_heads=8,
    head_dim=64,
)
assert LAYOUT.object_nbytes(CHUNK) == OBJECT_BYTES


@pytest.fixture
def tiny(tiny_server: Server, make_worker: WorkerFactory) -> Iterator[tuple[Server, CpuKVWorker]]:
    """The tiny server, emptied, with a registered worker of 256 KiB objects."""
    client = tiny_server.client()
    client.clear(True)
    worker = make_worker(client, LAYOUT)
    randomize(worker)
    yield tiny_server, worker
    client.clear(True)


def check_bounded(server: Server) -> dict[str, int]:
    l1 = server.l1()
    assert l1["used_bytes"] <= l1["capacity_bytes"], l1
    return l1


def capacity_objects(server: Server) -> int:
    return int(server.l1()["capacity_bytes"]) // OBJECT_BYTES


def test_l1_stays_bounded_and_acknowledged_stores_are_kept(
    tiny: tuple[Server, CpuKVWorker],
) -> None:
    server, worker = tiny
    client = worker.client
    room = capacity_objects(server)
    assert 30 <= room <= 45
    blocks = pick_blocks(4)
    outcomes = []
    for i in range(3 * room // 4 * 2):  # ~6x the capacity in 4-chunk stores
        tokens = fresh_tokens(4 * CHUNK)
        ok = worker.store(worker.key(tokens, 0, len(tokens), request_id("flood")), blocks)
        outcomes.append(ok)
        if ok:
            assert probe(client, tokens) == 4, f"store {i} acknowledged but not kept"
        check_bounded(server)
    assert all(outcomes), "stores of unlocked data must evict, not fail"
    assert check_bounded(server)["resident_objects"] <= room

    # A store larger than the whole L1 is refused, and keeps nothing.
    big = fresh_tokens((room + 4) * CHUNK)
    everything = pick_blocks(room + 4)
    assert not worker.store(worker.key(big, 0, len(big), request_id("big")), everything)
    assert probe(client, big) == 0
    check_bounded(server)


def test_read_locked_objects_survive_a_flood(tiny: tuple[Server, CpuKVWorker]) -> None:
    server, worker = tiny
    client = worker.client
    room = capacity_objects(server)
    # Lock room - 4 objects: nine 4-chunk prefixes (with a 40-object L1), each
    # locked by a lookup right after its store.
    locked_prefixes = []
    src = pick_blocks(4)
    for n in range((room - 4) // 4):
        tokens = fresh_tokens(4 * CHUNK)
        randomize(worker)
        expected = snapshot(worker, src)
        # Above the watermark, the L1 controller's periodic eviction may take the
        # new (still unlocked) prefix before the lookup locks it: store it again then.
        for _attempt in range(5):
            assert worker.store(worker.key(tokens, 0, len(tokens), request_id("lock")), src)
            rid = request_id("locked")
            hits = lookup(client, worker.key(tokens, 0, len(tokens), rid, worker=False))
            if hits == 4:
                break
            client.end_session(rid)
        assert hits == 4, n
        locked_prefixes.append((tokens, rid, expected))
    held = 4 * len(locked_prefixes)
    assert check_bounded(server)["locked_objects"] == held
    free_slots = room - held

    # A store needing more than the unlocked room is refused and keeps nothing.
    too_big = fresh_tokens((free_slots + 4) * CHUNK)
    ids = pick_blocks(free_slots + 4)
    assert not worker.store(worker.key(too_big, 0, len(too_big), request_id()), ids)
    assert probe(client, too_big) == 0

    # Flood what is left, many times over.
    for _ in range(25):
        tokens = fresh_tokens(2 * CHUNK)
        assert worker.store(worker.key(tokens, 0, len(tokens), request_id("flood")), src)
        check_bounded(server)
    assert check_bounded(server)["locked_objects"] == held

    # Every locked prefix is still there, byte for byte.
    dst = pick_blocks(4, exclude=src)
    for n, (tokens, rid, expected) in enumerate(locked_prefixes):
        zero(worker)
        assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst), n
        assert snapshot(worker, dst) == expected, n
        client.end_session(rid)
    assert check_bounded(server)["locked_objects"] == 0

    # With the locks gone, the big store evicts its way in.
    assert worker.store(worker.key(too_big, 0, len(too_big), request_id()), ids)
    assert probe(client, too_big) == free_slots + 4


def test_forced_clear_under_a_lookup_makes_retrieve_fail_cleanly(
    tiny: tuple[Server, CpuKVWorker],
) -> None:
    server, worker = tiny
    client = worker.client
    tokens = fresh_tokens(3 * CHUNK)
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), pick_blocks(3))
    rid = request_id("cleared")
    assert lookup(client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == 3
    client.clear(False)  # locked: kept
    assert server.l1()["resident_objects"] == 3
    client.clear(True)  # forced: gone, locks and all
    assert server.l1()["resident_objects"] == 0
    zero(worker)
    assert not worker.retrieve(worker.key(tokens, 0, len(tokens), rid), pick_blocks(3))
    for layer in worker.layers:
        assert not layer.view(-1).view(torch.uint8).any(), "a failed retrieve wrote blocks"
    client.end_session(rid)
    assert check_bounded(server)["locked_objects"] == 0


def test_engine_driven_prepare_store_beyond_l1_is_out_of_memory(
    tiny: tuple[Server, CpuKVWorker],
) -> None:
    server, worker = tiny
    client = worker.client
    payload = EngineDrivenRegistration(
        instance_id=worker.instance_id + 1,
        model_name="ed-tiny",
        world_size=1,
        block_size=CHUNK,
        num_layers=LAYOUT.num_layers,
        hidden_dim_size=LAYOUT.hidden,
        dtype_str="float32",
        use_mla=False,
        num_physical_slots=CHUNK,
    )
    client.register_engine_driven(payload)
    try:
        room = capacity_objects(server)
        tokens = fresh_tokens((room + 1) * CHUNK)
        key = CacheKey("ed-tiny", 1, 0, tokens, 0, len(tokens), request_id())
        with pytest.raises(OutOfMemoryError):
            client.prepare_store(key, payload.instance_id)
        assert check_bounded(server)["staged_objects"] == 0
        fits = CacheKey("ed-tiny", 1, 0, tokens, 0, room * CHUNK, request_id())
        slots = client.prepare_store(fits, payload.instance_id).context["slots"]
        assert len(slots) == room
        assert all(slot["length"] == OBJECT_BYTES for slot in slots)
        assert check_bounded(server)["staged_objects"] == room
        assert client.commit_store(fits, payload.instance_id, b"") is True
        assert probe(client, tokens, model="ed-tiny") == room
    finally:
        client.unregister_engine_driven(payload.instance_id)
