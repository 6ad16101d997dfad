"""Helpers of the data-path tests: KV layouts, block contents, keys and lookups."""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections.abc import Sequence

import torch

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.protocol.types import CacheKey
from lmcache_core.transfer.layout import KVFormat, KVLayout

CHUNK = 16
"""The ``--chunk-size`` of every server the data-path tests start."""

_rng = random.Random(os.urandom(16))
_ids = itertools.count()


def make_layout(
    fmt: KVFormat = KVFormat.NHD,
    dtype: torch.dtype = torch.float16,
    *,
    num_layers: int = 2,
    num_blocks: int = 64,
    block_size: int = 4,
    num_heads: int = 2,
    head_dim: int = 16,
) -> KVLayout:
    """A small layout (MLA gets one head)."""
    heads = 1 if fmt is KVFormat.MLA else num_heads
    return KVLayout(fmt, num_layers, num_blocks, block_size, heads, head_dim, dtype)


def fresh_tokens(count: int) -> list[int]:
    """Random token ids no other test uses (31-bit, so they fit every hasher)."""
    return [_rng.randrange(1 << 31) for _ in range(count)]


def request_id(prefix: str = "req") -> str:
    """A request id unique in this test session."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}-{uuid.uuid4().hex[:6]}"


def pick_blocks(count: int, *, exclude: Sequence[int] = (), num_blocks: int = 64) -> list[int]:
    """``count`` distinct, shuffled block ids in ``[1, num_blocks)`` (block 0 is the null block)."""
    free = [b for b in range(1, num_blocks) if b not in set(exclude)]
    return _rng.sample(free, count)


def block(layer: torch.Tensor, fmt: KVFormat, block_id: int) -> torch.Tensor:
    """One block of one layer tensor (a view)."""
    return layer[block_id] if fmt is KVFormat.MLA else layer[:, block_id]


def token(layer: torch.Tensor, fmt: KVFormat, block_id: int, slot: int) -> torch.Tensor:
    """One token slot of one block of one layer tensor (a view)."""
    if fmt is KVFormat.MLA:
        return layer[block_id, slot]
    if fmt is KVFormat.HND:
        return layer[:, block_id, :, slot]
    return layer[:, block_id, slot]


def raw(tensor: torch.Tensor) -> bytes:
    """The bytes of a tensor in logical order (bitwise, NaN-safe comparisons)."""
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def randomize(worker: CpuKVWorker, seed: int | None = None) -> None:
    """Fill every layer of the worker's KV cache with random bytes."""
    gen = torch.Generator().manual_seed(_rng.randrange(1 << 62) if seed is None else seed)
    for layer in worker.layers:
        flat = layer.view(-1).view(torch.uint8)
        flat.copy_(torch.randint(0, 256, flat.shape, dtype=torch.uint8, generator=gen))


def fill_blocks(worker: CpuKVWorker, blocks: Sequence[int], seed: int) -> None:
    """Fill the given blocks with bytes determined by ``seed`` and the block's position."""
    fmt = worker.layout.format
    for index, block_id in enumerate(blocks):
        gen = torch.Generator().manual_seed(seed * 100_003 + index)
        for layer in worker.layers:
            target = block(layer, fmt, block_id)
            data = torch.randint(0, 256, (target.numel() * target.element_size(),), generator=gen)
            target.copy_(data.to(torch.uint8).view(target.dtype).view(target.shape))


def zero(worker: CpuKVWorker) -> None:
    """Zero the whole KV cache."""
    for layer in worker.layers:
        layer.view(-1).view(torch.uint8).zero_()


def snapshot(worker: CpuKVWorker, blocks: Sequence[int]) -> list[list[bytes]]:
    """Per block, per layer: the block's bytes."""
    fmt = worker.layout.format
    return [[raw(block(layer, fmt, b)) for layer in worker.layers] for b in blocks]


def untouched_blocks(worker: CpuKVWorker, written: Sequence[int]) -> list[int]:
    """The blocks outside ``written`` that are not all zero."""
    fmt = worker.layout.format
    keep = set(written)
    dirty = []
    for b in range(worker.layout.num_blocks):
        if b in keep:
            continue
        if any(bool(block(layer, fmt, b).view(torch.uint8).any()) for layer in worker.layers):
            dirty.append(b)
    return dirty


def lookup_key(
    tokens: Sequence[int],
    end: int,
    rid: str,
    *,
    model: str = "model",
    world_size: int = 1,
    salt: str = "",
    readers: int = 1,
) -> CacheKey:
    """A lookup key (worker_id None, all ranks)."""
    return CacheKey(
        model_name=model,
        world_size=world_size,
        worker_id=None,
        token_ids=list(tokens),
        start=0,
        end=end,
        request_id=rid,
        cache_salt=salt,
        num_kv_readers=readers,
    )


def lookup(client: MPClient, key: CacheKey) -> int:
    """LOOKUP (wait for the ack), then QUERY_PREFETCH_STATUS: the hit chunks."""
    assert client.lookup(key) is None
    hits = client.query_prefetch_status(key.request_id)
    assert isinstance(hits, int), hits
    return hits


def probe(client: MPClient, tokens: Sequence[int], end: int | None = None, **kwargs: object) -> int:
    """Hit chunks of a lookup whose locks are released at once (end_session)."""
    rid = request_id("probe")
    key = lookup_key(tokens, len(tokens) if end is None else end, rid, **kwargs)  # type: ignore[arg-type]
    try:
        return lookup(client, key)
    finally:
        client.end_session(rid)
