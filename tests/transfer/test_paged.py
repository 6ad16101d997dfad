"""Batched gather/scatter between paged KV caches and L1 objects.

The object bytes are compared with a naive reference written with loops (one token, layer and
plane at a time), which pins the object layout: ``[kv, layer, token, heads * head_dim]``.
Caches are filled with random bytes (NaN patterns included), so the copies must be bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcache_core.transfer import KVFormat, KVLayout, PagedKVCache, create_shm_tensor
from lmcache_core.transfer.cpu_shm import MappedShmTensor

NUM_LAYERS = 3
NUM_BLOCKS = 40
BLOCK_SIZE = 4
NUM_HEADS = 2
HEAD_DIM = 8
CHUNK = 8  # tokens per chunk: 2 blocks
BPC = CHUNK // BLOCK_SIZE

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.int8]


def make_layout(fmt: KVFormat, dtype: torch.dtype = torch.bfloat16, **kw) -> KVLayout:
    fields = {
        "format": fmt,
        "num_layers": NUM_LAYERS,
        "num_blocks": NUM_BLOCKS,
        "block_size": BLOCK_SIZE,
        "num_heads": 1 if fmt is KVFormat.MLA else NUM_HEADS,
        "head_dim": 12 if fmt is KVFormat.MLA else HEAD_DIM,
        "dtype": dtype,
    }
    fields.update(kw)
    return KVLayout(**fields)


def random_layers(layout: KVLayout, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = layout.layer_shape()
    numel = int(np.prod(shape))
    return [
        torch.randint(0, 256, (numel * layout.itemsize,), dtype=torch.uint8, generator=gen)
        .view(layout.dtype)
        .view(shape)
        for _ in range(layout.num_layers)
    ]


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (torch.equal says NaN != NaN, and random bytes make NaNs)."""
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


def token_kv(layer: torch.Tensor, fmt: KVFormat, block: int, pos: int) -> torch.Tensor:
    """Token ``pos`` of ``block`` as ``[kv, heads * head_dim]``, the obvious way."""
    if fmt is KVFormat.NHD:
        return layer[:, block, pos].reshape(2, -1)  # [2, heads, dim]
    if fmt is KVFormat.HND:
        return layer[:, block, :, pos].reshape(2, -1)  # [2, heads, dim]
    return layer[block, pos].reshape(1, -1)  # [dim]


def naive_objects(layers, layout, block_ids, chunks) -> list[torch.Tensor]:
    """The reference: each object built token by token, layer by layer, plane by plane."""
    out = []
    for c in range(chunks):
        obj = torch.zeros(layout.object_shape(CHUNK), dtype=layout.dtype)
        for t in range(CHUNK):
            block = block_ids[c * BPC + t // BLOCK_SIZE]
            for layer in range(layout.num_layers):
                planes = token_kv(layers[layer], layout.format, block, t % BLOCK_SIZE)
                for kv in range(layout.kv_size):
                    obj[kv, layer, t] = planes[kv]
        out.append(obj.view(-1).view(torch.uint8))
    return out


def arena_objects(layout, chunks, *, offset=0, gap=0, order=None):
    """Objects carved from one arena (a batch allocation) at ``offset``, ``gap`` bytes apart."""
    nbytes = layout.object_nbytes(CHUNK)
    step = nbytes + gap
    arena = torch.full((offset + chunks * step + 64,), 0xA5, dtype=torch.uint8)
    slots = list(range(chunks)) if order is None else order
    objs = [arena[offset + s * step : offset + s * step + nbytes] for s in slots]
    return arena, objs


def block_ids_for(chunks, seed=1) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(NUM_BLOCKS, generator=gen)[: chunks * BPC].tolist()


def assert_tokens(dst_layers, src_layers, fresh_layers, layout, block_ids, written):
    """Every token of every block: ``written(global_token)`` -> equals src, else untouched."""
    fmt = layout.format
    position = {b: i for i, b in enumerate(block_ids)}
    for layer in range(layout.num_layers):
        for block in range(layout.num_blocks):
            for pos in range(BLOCK_SIZE):
                got = token_kv(dst_layers[layer], fmt, block, pos)
                if block in position and written(position[block] * BLOCK_SIZE + pos):
                    want = token_kv(src_layers[layer], fmt, block, pos)
                else:
                    want = token_kv(fresh_layers[layer], fmt, block, pos)
                assert same_bytes(got, want), (
                    layer,
                    block,
                    pos,
                )


@pytest.mark.parametrize("chunks", [1, 3, 16])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", list(KVFormat))
def test_round_trip_matches_naive_reference(fmt, dtype, chunks):
    layout = make_layout(fmt, dtype)
    src = random_layers(layout, seed=1)
    block_ids = block_ids_for(chunks)
    _, objs = arena_objects(layout, chunks)
    PagedKVCache(src, layout).gather(block_ids, CHUNK, objs)
    for got, want in zip(objs, naive_objects(src, layout, block_ids, chunks), strict=True):
        assert torch.equal(got, want)

    fresh = random_layers(layout, seed=2)
    dst = [t.clone() for t in fresh]
    PagedKVCache(dst, layout).scatter(objs, block_ids, CHUNK)
    assert_tokens(dst, src, fresh, layout, block_ids, lambda t: True)


@pytest.mark.parametrize("fmt", list(KVFormat))
@pytest.mark.parametrize(
    "skip",
    [0, BLOCK_SIZE, BLOCK_SIZE + 1, CHUNK - 1, CHUNK, CHUNK + 3, 3 * CHUNK - 1, 3 * CHUNK, 99],
    ids=lambda s: f"skip{s}",
)
def test_scatter_skips_the_first_tokens(fmt, skip):
    layout = make_layout(fmt)
    src = random_layers(layout, seed=3)
    block_ids = block_ids_for(3, seed=4)
    objs = naive_objects(src, layout, block_ids, 3)
    fresh = random_layers(layout, seed=5)
    dst = [t.clone() for t in fresh]
    PagedKVCache(dst, layout).scatter(objs, block_ids, CHUNK, skip_first_n_tokens=skip)
    assert_tokens(dst, src, fresh, layout, block_ids, lambda t: t >= skip)


@pytest.mark.parametrize("fmt", list(KVFormat))
def test_object_placements(fmt):
    """Adjacent, gapped, reversed, shuffled, separate and odd-aligned objects all copy right."""
    layout = make_layout(fmt, torch.bfloat16)
    src = random_layers(layout, seed=6)
    chunks = 5
    block_ids = block_ids_for(chunks, seed=7)
    want = naive_objects(src, layout, block_ids, chunks)
    nbytes = layout.object_nbytes(CHUNK)
    cache = PagedKVCache(src, layout)
    placements = {
        "gap": arena_objects(layout, chunks, gap=48),
        "reversed": arena_objects(layout, chunks, order=[4, 3, 2, 1, 0]),
        "shuffled": arena_objects(layout, chunks, order=[1, 2, 0, 3, 4]),
        # unit 16 would be impossible: the copies fall back to 8, 2 and 1-byte units
        "offset8": arena_objects(layout, chunks, offset=8),
        "offset2": arena_objects(layout, chunks, offset=2),
        "offset1": arena_objects(layout, chunks, offset=1),
    }
    for name, (arena, objs) in placements.items():
        before = arena.clone()
        cache.gather(block_ids, CHUNK, objs)
        for got, ref in zip(objs, want, strict=True):
            assert torch.equal(got, ref), name
        # Nothing outside the objects was written (gaps, arena head and tail).
        mask = torch.ones_like(arena, dtype=torch.bool)
        for obj in objs:
            start = obj.data_ptr() - arena.data_ptr()
            mask[start : start + nbytes] = False
        assert torch.equal(arena[mask], before[mask]), name

        fresh = random_layers(layout, seed=8)
        dst = [t.clone() for t in fresh]
        PagedKVCache(dst, layout).scatter(objs, block_ids, CHUNK, skip_first_n_tokens=5)
        assert_tokens(dst, src, fresh, layout, block_ids, lambda t: t >= 5)

    separate = [torch.empty(nbytes, dtype=torch.uint8) for _ in range(chunks)]
    cache.gather(block_ids, CHUNK, separate)
    for got, ref in zip(separate, want, strict=True):
        assert torch.equal(got, ref)


def test_strided_layers_and_block_id_types():
    """Layers whose last dim is strided; block ids as a tensor, numpy array, tuple and range."""
    layout = make_layout(KVFormat.NHD, torch.float16)
    base = random_layers(make_layout(KVFormat.NHD, torch.float16), seed=9)
    # Same logical tensor, physically [2, nb, bs, dim, heads]: stride(-1) == heads.
    strided = [t.permute(0, 1, 2, 4, 3).contiguous().permute(0, 1, 2, 4, 3) for t in base]
    assert strided[0].stride(-1) == NUM_HEADS
    block_ids = block_ids_for(3, seed=10)
    want = naive_objects(base, layout, block_ids, 3)
    cache = PagedKVCache(strided, layout)
    for ids in (
        block_ids,
        torch.tensor(block_ids),
        torch.tensor(block_ids, dtype=torch.int32),
        np.array(block_ids),
        (*block_ids, 0, 1),  # extra ids are ignored
    ):
        _, objs = arena_objects(layout, 3)
        cache.gather(ids, CHUNK, objs)
        for got, ref in zip(objs, want, strict=True):
            assert torch.equal(got, ref)
    ids = range(6, 6 + 3 * BPC)
    _, objs = arena_objects(layout, 3)
    cache.gather(ids, CHUNK, objs)
    assert torch.equal(objs[2], naive_objects(base, layout, list(ids), 3)[2])

    dst = [t.clone() for t in strided]
    for t in dst:
        t.zero_()
    PagedKVCache(dst, layout).scatter(want, block_ids, CHUNK)
    for layer in range(NUM_LAYERS):
        assert same_bytes(dst[layer][:, block_ids], base[layer][:, block_ids])
    # Element-misaligned objects cannot be copied into layers with a strided last dim.
    _, odd = arena_objects(layout, 1, offset=1)
    with pytest.raises(ValueError, match="aligned"):
        cache.gather(block_ids, CHUNK, odd)


def test_duplicate_block_ids_gather():
    layout = make_layout(KVFormat.NHD)
    src = random_layers(layout, seed=11)
    block_ids = [3, 3, 0, 0]
    _, objs = arena_objects(layout, 2)
    PagedKVCache(src, layout).gather(block_ids, CHUNK, objs)
    want = naive_objects(src, layout, block_ids, 2)
    assert all(torch.equal(g, w) for g, w in zip(objs, want, strict=True))


def test_zero_objects_is_a_no_op():
    layout = make_layout(KVFormat.HND)
    src = random_layers(layout, seed=12)
    keep = [t.clone() for t in src]
    cache = PagedKVCache(src, layout)
    cache.gather([], CHUNK, [])
    cache.scatter([], [], CHUNK, skip_first_n_tokens=3)
    assert all(same_bytes(a, b) for a, b in zip(src, keep, strict=True))


def _bad_requests(layout):
    nbytes = layout.object_nbytes(CHUNK)
    ok = [0, 1, 2, 3]
    good = [torch.zeros(nbytes, dtype=torch.uint8) for _ in range(2)]
    return [
        ("need 4 block ids, got 3", [0, 1, 2], CHUNK, good),
        ("block id 40 is outside", [0, 1, 2, 40], CHUNK, good),
        ("block id -1 is outside", [0, -1, 2, 3], CHUNK, good),
        ("must be integers", [0.0, 1.0, 2.0, 3.0], CHUNK, good),
        ("must be integers", torch.tensor([0.0, 1.0, 2.0, 3.0]), CHUNK, good),
        ("must be integers", [0, 1, 2, 2**70], CHUNK, good),
        ("must be integers", ["0", "1", "2", "3"], CHUNK, good),
        ("not a positive multiple", ok, CHUNK + 1, good),
        ("chunk_tokens must be an int", ok, float(CHUNK), good),
        ("object 1 has 3 bytes", ok, CHUNK, [good[0], torch.zeros(3, dtype=torch.uint8)]),
        ("object 1 has", ok, CHUNK, [good[0], torch.zeros(nbytes + 1, dtype=torch.uint8)]),
        ("1-D uint8", ok, CHUNK, [good[0], torch.zeros(nbytes // 2, dtype=torch.int16)]),
        ("1-D uint8", ok, CHUNK, [good[0], torch.zeros(2, nbytes // 2, dtype=torch.uint8)]),
        ("not contiguous", ok, CHUNK, [good[0], torch.zeros(2 * nbytes, dtype=torch.uint8)[::2]]),
        ("not a tensor", ok, CHUNK, [good[0], bytearray(nbytes)]),
    ]


@pytest.mark.parametrize("fmt", list(KVFormat))
def test_invalid_requests_copy_nothing(fmt):
    layout = make_layout(fmt)
    src = random_layers(layout, seed=13)
    keep = [t.clone() for t in src]
    cache = PagedKVCache(src, layout)
    for message, ids, chunk, objs in _bad_requests(layout):
        for obj in objs:
            if isinstance(obj, torch.Tensor):
                obj.zero_()
        with pytest.raises(ValueError, match=message):
            cache.gather(ids, chunk, objs)
        # The first object is valid and listed first: still untouched.
        assert not objs[0].any(), message
        with pytest.raises(ValueError, match=message):
            cache.scatter(objs, ids, chunk)
        assert all(same_bytes(a, b) for a, b in zip(src, keep, strict=True)), message
    good = [torch.zeros(layout.object_nbytes(CHUNK), dtype=torch.uint8)]
    with pytest.raises(ValueError, match="skip_first_n_tokens must be >= 0"):
        cache.scatter(good, [0, 1], CHUNK, skip_first_n_tokens=-1)
    with pytest.raises(ValueError, match="skip_first_n_tokens must be an int"):
        cache.scatter(good, [0, 1], CHUNK, skip_first_n_tokens=1.5)
    with pytest.raises(ValueError, match="skip_first_n_tokens must be an int"):
        cache.scatter(good, [0, 1], CHUNK, skip_first_n_tokens=True)
    # numpy integers are ints
    cache.scatter(good, [0, 1], np.int64(CHUNK), skip_first_n_tokens=np.int32(CHUNK))


def test_layers_must_match_the_layout():
    layout = make_layout(KVFormat.NHD)
    layers = random_layers(layout, seed=14)
    with pytest.raises(ValueError, match="3 layers, got 2"):
        PagedKVCache(layers[:2], layout)
    with pytest.raises(ValueError, match=r"layer 1 is .* expects"):
        PagedKVCache([layers[0], layers[1].float(), layers[2]], layout)
    with pytest.raises(ValueError, match=r"layer 2 is .* expects"):
        PagedKVCache([*layers[:2], layers[2][:, :10]], layout)
    hnd = make_layout(KVFormat.HND)
    with pytest.raises(ValueError, match="HND layout expects"):
        PagedKVCache(layers, hnd)


def test_gather_scatter_over_shared_memory(shm_names):
    """The server's view: layers mapped from the worker's segments, copied in place."""
    layout = make_layout(KVFormat.NHD, torch.bfloat16)
    worker, cleanups, mapped = [], [], []
    server = None
    try:
        for src in random_layers(layout, seed=15):
            tensor, spec, cleanup = create_shm_tensor(
                shm_names(), layout.layer_shape(), layout.dtype
            )
            tensor.copy_(src)
            worker.append(tensor)
            cleanups.append(cleanup)
            mapped.append(MappedShmTensor(spec))
        server = PagedKVCache([m.tensor for m in mapped], layout)
        block_ids = block_ids_for(4, seed=16)
        _, objs = arena_objects(layout, 4)
        server.gather(block_ids, CHUNK, objs)
        for got, want in zip(objs, naive_objects(worker, layout, block_ids, 4), strict=True):
            assert torch.equal(got, want)
        fresh = [t.clone() for t in worker]
        for t in worker:
            t.view(torch.uint8).fill_(0)
        zeros = [t.clone() for t in worker]
        server.scatter(objs, block_ids, CHUNK, skip_first_n_tokens=BLOCK_SIZE)
        # The worker sees the server's writes through its own mapping.
        assert_tokens(worker, fresh, zeros, layout, block_ids, lambda t: t >= BLOCK_SIZE)
    finally:
        del server
        for m in mapped:
            m.close()
        for cleanup in cleanups:
            cleanup()
