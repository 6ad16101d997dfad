"""lmcache_driven transfers: the engine gathers and scatters a mapped worker's KV blocks."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
import torch
from default_engine_rig import CHUNK, Rig, tokens, wire_key
from lmcache_engine_default.lmcache_driven import TransferResult

from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.transfer.layout import KVFormat, KVLayout

LAYOUT = KVLayout(KVFormat.NHD, 2, 32, 4, 2, 16, torch.float16)  # 4 blocks per chunk


@pytest.fixture
def worker(rig: Rig) -> Iterator[CpuKVWorker]:
    """A worker's KV cache in shared memory, registered with the engine directly."""
    kv = CpuKVWorker(None, LAYOUT, instance_id=5)  # type: ignore[arg-type]  # no client: no server
    try:
        for layer in kv.layers:
            flat = layer.view(-1).view(torch.uint8)
            flat.copy_(torch.randint(0, 256, flat.shape, dtype=torch.uint8))
        handles = [encode_device_handle(h) for h in kv.handles]
        rig.call("register_kv_cache", 5, handles, "model", 1, "vllm", {"kv_layout": "NHD"}, [])
        yield kv
    finally:
        kv.close()


def blocks(layer: torch.Tensor, ids: list[int]) -> bytes:
    return layer[:, ids].contiguous().view(torch.uint8).numpy().tobytes()


def test_the_result_is_the_wire_tuple() -> None:
    assert TransferResult.of(True) == (b"", True)
    assert msgspec.msgpack.encode(TransferResult.of(False)) == msgspec.msgpack.encode((b"", False))


def test_store_then_retrieve_copies_the_blocks(rig: Rig, worker: CpuKVWorker) -> None:
    ids = tokens(2, seed=20)
    key = wire_key(ids, 0, 2 * CHUNK, "r")
    source = [1, 2, 3, 4, 5, 6, 7, 8]
    assert rig.call("store", key, 5, [source], b"") == (b"", True)
    assert rig.call("store", key, 5, [source], b"") == (b"", True)  # already there: ok
    target = [9, 10, 11, 12, 13, 14, 15, 16]
    rig.call("lookup", wire_key(ids, 0, 2 * CHUNK, "r", worker_id=None), 1)
    assert rig.call("retrieve", key, 5, [target], b"", 0) == (b"", True)
    for layer in worker.layers:
        assert blocks(layer, target) == blocks(layer, source)
    assert rig.l1.usage().locked_objects == 0  # the lookup's locks were consumed


def test_early_answers(rig: Rig, worker: CpuKVWorker) -> None:
    ids = tokens(2, seed=21)
    key = wire_key(ids, 0, 2 * CHUNK, "r")
    assert rig.call("store", key, 99, [[1] * 8], b"") == (b"", False)  # unregistered
    assert rig.call("store", key, 5, [[1, 2, 3]], b"") == (b"", False)  # too few block ids
    assert rig.call("store", wire_key(ids, 16, 16, "r"), 5, [[]], b"") == (b"", True)  # empty
    with pytest.raises(BadRequestError, match="multiples"):
        rig.call("store", wire_key(ids, 0, 5, "r"), 5, [[1] * 8], b"")
    with pytest.raises(BadRequestError, match="worker_id"):
        rig.call("store", wire_key(ids, 0, 16, "r", worker_id=None), 5, [[1] * 4], b"")
    assert rig.call("retrieve", key, 5, [[1] * 8], b"", 0) == (b"", False)  # not cached
    with pytest.raises(BadRequestError, match="skip_first_n_tokens"):
        rig.call("retrieve", key, 5, [[1] * 8], b"", -1)


def test_null_block_chunks_are_not_stored(rig: Rig, worker: CpuKVWorker) -> None:
    key = wire_key(tokens(2, seed=22), 0, 2 * CHUNK, "r")
    assert rig.call("store", key, 5, [[1, 2, 3, 4, 0, 0, 0, 0]], b"") == (b"", True)
    assert rig.l1.usage().resident_objects == 1  # the second chunk was vLLM's null block
    rig.call("unregister_kv_cache", 5)
    assert rig.call("store", key, 5, [[1] * 8], b"") == (b"", False)
