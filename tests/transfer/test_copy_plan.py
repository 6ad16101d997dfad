"""Every device layout x dtype: plan, execute on CPU tensors, compare with a naive copy.

The naive reference indexes the *registered* tensors by hand for each layout (it does not
use the canonical views), so a wrong view, stride or merge shows up as a byte mismatch.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lmcache_core.transfer.copy_plan import (
    CopySegment,
    addressing_of,
    block_runs,
    execute_plan,
    plan_copies,
    storage_bytes,
)
from lmcache_core.transfer.device_layout import (
    DEVICE_KV_DTYPES,
    PagedFormat,
    canonical_layer_views,
    geometry_for,
)
from lmcache_core.transfer.layout import KVLayout
from tests.transfer.device_layouts import device_layouts

NB, BS, HEADS, DIM, LAYERS = 14, 4, 2, 8, 3
CHUNK = 8  # two blocks per chunk
CHUNKS = 4
# Runs of consecutive ids, a lone id, and a chunk split across two runs.
IDS = [5, 6, 2, 3, 9, 1, 10, 11]

LAYOUTS = device_layouts(NB, BS, HEADS, DIM, LAYERS)


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random bytes viewed as ``dtype`` (fp8 included: only bytes are compared)."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * dtype.itemsize), generator=generator)
    return raw.to(torch.uint8).view(dtype)


def register(name: str, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    shape, count, _, _ = LAYOUTS[name]
    return [random_tensor(shape, dtype, seed + i) for i in range(count)]


def plan_for(
    name: str, tensors: list[torch.Tensor], skip: int = 0
) -> tuple[KVLayout, list[CopySegment]]:
    _, _, hints, _ = LAYOUTS[name]
    geometry = geometry_for([t.shape for t in tensors], tensors[0].dtype, hints)
    views = canonical_layer_views(tensors, geometry)
    addressing = addressing_of(views, geometry.layout, tensors)
    return geometry.layout, plan_copies(addressing, geometry.layout, IDS, CHUNK, CHUNKS, skip)


def naive_objects(name: str, tensors: list[torch.Tensor], layout: KVLayout) -> list[torch.Tensor]:
    block = LAYOUTS[name][3]
    objects = []
    for c in range(CHUNKS):
        obj = torch.empty(layout.object_shape(CHUNK), dtype=layout.dtype)
        for pos, layer, kv in itertools.product(
            range(CHUNK // BS), range(LAYERS), range(layout.kv_size)
        ):
            bid = IDS[c * (CHUNK // BS) + pos]
            obj[kv, layer, pos * BS : (pos + 1) * BS] = block(tensors, layer, kv, bid)
        objects.append(obj.view(torch.uint8).reshape(-1))
    return objects


CASES = [(name, dtype) for name in LAYOUTS for dtype in DEVICE_KV_DTYPES]


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_store_plan_matches_the_naive_copy(name: str, dtype: torch.dtype) -> None:
    tensors = register(name, dtype)
    layout, plan = plan_for(name, tensors)
    objects = [torch.zeros(layout.object_nbytes(CHUNK), dtype=torch.uint8) for _ in range(CHUNKS)]
    execute_plan(plan, [storage_bytes(t) for t in tensors], objects, to_objects=True)
    expected = naive_objects(name, tensors, layout)
    for c in range(CHUNKS):
        assert torch.equal(objects[c], expected[c]), f"chunk {c}"
    assert sum(s.nbytes for s in plan) == CHUNKS * layout.object_nbytes(CHUNK)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("skip", [0, 3, 4, 9, 13, 32, 40])
def test_retrieve_plan_writes_only_past_the_skip(name: str, skip: int) -> None:
    dtype = torch.bfloat16
    source = register(name, dtype, seed=1)
    layout, store = plan_for(name, source)
    objects = [torch.zeros(layout.object_nbytes(CHUNK), dtype=torch.uint8) for _ in range(CHUNKS)]
    execute_plan(store, [storage_bytes(t) for t in source], objects, to_objects=True)

    target = register(name, dtype, seed=50)
    before = [t.clone() for t in target]
    _, plan = plan_for(name, target, skip)
    execute_plan(plan, [storage_bytes(t) for t in target], objects, to_objects=False)
    block = LAYOUTS[name][3]
    for c, pos, layer, kv in itertools.product(
        range(CHUNKS), range(CHUNK // BS), range(LAYERS), range(layout.kv_size)
    ):
        bid = IDS[c * (CHUNK // BS) + pos]
        first = c * CHUNK + pos * BS  # the block's first token in the request
        got, old, new = (block(ts, layer, kv, bid) for ts in (target, before, source))
        for t in range(BS):
            want = old[t] if first + t < skip else new[t]
            assert torch.equal(got[t].view(torch.uint8), want.view(torch.uint8)), (c, pos, t)


def test_consecutive_blocks_merge_into_one_copy_per_layer_and_plane() -> None:
    tensors = register("flash_nhd", torch.float16)
    geometry = geometry_for([t.shape for t in tensors], torch.float16)
    views = canonical_layer_views(tensors, geometry)
    addressing = addressing_of(views, geometry.layout, tensors)
    ids = list(range(1, 1 + CHUNKS * 2))  # fully consecutive
    plan = plan_copies(addressing, geometry.layout, ids, CHUNK, CHUNKS)
    assert len(plan) == CHUNKS * LAYERS * 2
    assert all(s.height == 1 and s.width == CHUNK * HEADS * DIM * 2 for s in plan)


def test_flashinfer_runs_are_one_2d_copy_and_hnd_one_per_head() -> None:
    _, plan = plan_for("flashinfer_nhd", register("flashinfer_nhd", torch.bfloat16))
    # IDS has 5 runs over the 4 chunks; one 2-D copy (block pitch) per run, layer and plane.
    runs = sum(len(r) for r in block_runs(IDS, CHUNK // BS, CHUNKS))
    assert runs == 5
    assert len(plan) == runs * LAYERS * 2
    assert {s.src_pitch for s in plan if s.height > 1} == {2 * BS * HEADS * DIM * 2}
    _, hnd = plan_for("flash_hnd", register("flash_hnd", torch.bfloat16))
    # HND: a head's token rows do not continue into the next block: per block and head.
    assert len(hnd) == len(IDS) * LAYERS * 2 * HEADS
    assert all(s.width == DIM * 2 for s in hnd)


def test_blocks_first_per_layer_views_are_copied_in_place() -> None:
    # vLLM's BLNHC: per-layer [nb, 2, bs, h, d] views into one blocks-first allocation.
    whole = random_tensor((NB, LAYERS, 2, BS, HEADS, DIM), torch.bfloat16, 3)
    views = [whole[:, layer] for layer in range(LAYERS)]
    geometry = geometry_for([v.shape for v in views], torch.bfloat16, {"kv_layout": "BLNHC"})
    assert geometry.paged is PagedFormat.FLASHINFER
    layer_views = canonical_layer_views(views, geometry)
    addressing = addressing_of(layer_views, geometry.layout, views)
    assert {a.source for a in addressing} == {0}  # one storage
    plan = plan_copies(addressing, geometry.layout, IDS, CHUNK, CHUNKS)
    objects = [
        torch.zeros(geometry.layout.object_nbytes(CHUNK), dtype=torch.uint8) for _ in range(CHUNKS)
    ]
    execute_plan(plan, [storage_bytes(whole)], objects, to_objects=True)
    expected = naive_objects("cross_layer_nhd", [whole], geometry.layout)
    assert all(torch.equal(a, b) for a, b in zip(objects, expected, strict=True))


@pytest.mark.parametrize(
    ("shape", "dtype", "hints", "match"),
    [
        (
            (2, NB, BS, HEADS, DIM),
            torch.float32,
            {},
            r"unsupported KV dtype float32 for tensors of shape \[2, 14, 4, 2, 8\]",
        ),
        ((2, NB, BS, HEADS, DIM), torch.int8, {}, "unsupported KV dtype int8"),
        (
            (NB, BS, HEADS, DIM),
            torch.float16,
            {},
            r"unsupported KV tensor shape \[14, 4, 2, 8\] x 3",
        ),
        ((3, NB, BS, HEADS, DIM), torch.float16, {}, r"unsupported KV tensor shape \[3, 14"),
        ((2, NB, 0, HEADS, DIM), torch.float16, {}, "a dimension is empty"),
        (
            (2, NB, BS, HEADS, DIM),
            torch.float16,
            {"kv_layout": "XYZ"},
            "unsupported kv_layout hint",
        ),
    ],
)
def test_unsupported_registrations_are_refused_naming_the_shape(
    shape: tuple[int, ...], dtype: torch.dtype, hints: dict[str, str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        geometry_for([shape] * LAYERS, dtype, hints)


def test_mismatched_tensors_and_bad_block_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="must have one shape"):
        geometry_for([(2, NB, BS, HEADS, DIM), (2, NB + 1, BS, HEADS, DIM)], torch.float16)
    name = "flash_nhd"
    tensors = register(name, torch.float16)
    geometry = geometry_for([t.shape for t in tensors], torch.float16)
    addressing = addressing_of(canonical_layer_views(tensors, geometry), geometry.layout, tensors)
    with pytest.raises(ValueError, match="outside"):
        plan_copies(addressing, geometry.layout, [0, NB], CHUNK, 1)
    with pytest.raises(ValueError, match="need 8 block ids"):
        plan_copies(addressing, geometry.layout, IDS[:7], CHUNK, CHUNKS)
    with pytest.raises(ValueError, match="not a positive multiple"):
        plan_copies(addressing, geometry.layout, IDS, CHUNK + 1, 1)
    with pytest.raises(ValueError, match="not in a registered tensor"):
        addressing_of(canonical_layer_views(tensors, geometry), geometry.layout, tensors[:1])
