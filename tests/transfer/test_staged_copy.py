"""The staged copier on CPU tensors: batches, host runs and skips against a naive copy."""

from __future__ import annotations

import pytest
import torch

from lmcache_core.transfer.layout import KVFormat, KVLayout
from lmcache_core.transfer.paged import PagedKVCache
from lmcache_core.transfer.staged_copy import StagedCopier, host_runs

BS, CHUNK, LAYERS, NB = 4, 8, 3, 24
IDS = [3, 4, 10, 11, 12, 13, 1, 7, 8, 9, 20, 21, 15, 16]  # 7 chunks


def layout(fmt: KVFormat) -> KVLayout:
    heads = 1 if fmt is KVFormat.MLA else 2
    return KVLayout(fmt, LAYERS, NB, BS, heads, 16, torch.bfloat16)


def cache(fmt: KVFormat, seed: int) -> PagedKVCache:
    lay = layout(fmt)
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(lay.layer_shape(), generator=g).to(torch.bfloat16) for _ in range(LAYERS)]
    return PagedKVCache(layers, lay)


def arena_objects(count: int, nbytes: int, scattered: bool) -> list[torch.Tensor]:
    """Objects in one arena: adjacent (one run), or with gaps and out of order."""
    arena = torch.zeros((2 * count + 1) * nbytes, dtype=torch.uint8)
    slots = [2 * i + 1 for i in reversed(range(count))] if scattered else list(range(count))
    return [arena[s * nbytes : (s + 1) * nbytes] for s in slots]


@pytest.mark.parametrize("fmt", list(KVFormat))
@pytest.mark.parametrize("scattered", [False, True])
@pytest.mark.parametrize("max_chunks", [1, 3, 8])
def test_store_equals_a_direct_gather(fmt: KVFormat, scattered: bool, max_chunks: int) -> None:
    kv = cache(fmt, 1)
    n = kv.layout.object_nbytes(CHUNK)
    chunks = len(IDS) * BS // CHUNK
    objects = arena_objects(chunks, n, scattered)
    StagedCopier(kv, CHUNK, max_chunks).store(IDS, objects)
    expected = [torch.zeros(n, dtype=torch.uint8) for _ in range(chunks)]
    kv.gather(IDS, CHUNK, expected)
    assert all(torch.equal(a, b) for a, b in zip(objects, expected, strict=True))


@pytest.mark.parametrize("fmt", list(KVFormat))
@pytest.mark.parametrize("skip", [0, 5, 8, 27, 40, 56, 100])
def test_retrieve_honours_the_skip_across_batches(fmt: KVFormat, skip: int) -> None:
    source = cache(fmt, 2)
    n = source.layout.object_nbytes(CHUNK)
    chunks = len(IDS) * BS // CHUNK
    objects = arena_objects(chunks, n, scattered=False)
    source.gather(IDS, CHUNK, objects)

    target = cache(fmt, 3)
    reference = PagedKVCache([t.clone() for t in target.layers], target.layout)
    StagedCopier(target, CHUNK, max_chunks=3).retrieve(objects, IDS, skip)
    reference.scatter(objects, IDS, CHUNK, skip)
    for got, want in zip(target.layers, reference.layers, strict=True):
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_host_runs_merge_adjacent_objects_only() -> None:
    n = 16
    arena = torch.zeros(10 * n, dtype=torch.uint8)
    other = torch.zeros(n, dtype=torch.uint8)
    objs = [
        arena[0:n],
        arena[n : 2 * n],
        arena[2 * n : 3 * n],
        arena[5 * n : 6 * n],
        other,
        arena[6 * n : 7 * n],
    ]
    assert host_runs(objs, n) == [(0, 3), (3, 1), (4, 1), (5, 1)]


def test_bad_requests_are_refused_before_any_copy() -> None:
    kv = cache(KVFormat.NHD, 4)
    n = kv.layout.object_nbytes(CHUNK)
    copier = StagedCopier(kv, CHUNK, 2)
    objects = arena_objects(2, n, False)
    with pytest.raises(ValueError, match="need 4 block ids"):
        copier.store([1, 2, 3], objects)
    with pytest.raises(ValueError, match="outside"):
        copier.store([1, 2, 3, NB], objects)
    with pytest.raises(ValueError, match="outside"):  # in a later batch than the first
        copier.store([1, 2, 3, 4, 5, 6, 7, -1], arena_objects(4, n, False))
    with pytest.raises(ValueError, match="uint8 vector"):
        copier.store([1, 2, 3, 4], [torch.zeros(n - 1, dtype=torch.uint8)] * 2)
    with pytest.raises(ValueError, match=">= 0"):
        copier.retrieve(objects, [1, 2, 3, 4], -1)
    assert all(int(o.count_nonzero()) == 0 for o in objects)
    assert copier.staging_bytes == 2 * n
