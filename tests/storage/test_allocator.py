"""The first-fit aligned allocator."""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.storage.allocator import Allocator, align_down, align_up
from tests.storage.doubles import check_allocator

A = 4096


def test_align_helpers() -> None:
    assert align_up(0, A) == 0
    assert align_up(1, A) == A
    assert align_up(A, A) == A
    assert align_down(A + 1, A) == A


def test_sizes_are_rounded_and_offsets_aligned() -> None:
    allocator = Allocator(64 * A, align_bytes=A)
    offsets = [allocator.allocate(size) for size in (1, A, A + 1, 3 * A - 1, 0)]
    assert offsets == [0, A, 2 * A, 4 * A, 7 * A]
    assert allocator.used_bytes == 8 * A
    assert allocator.size_of(2 * A) == 2 * A
    assert all(offset is not None and offset % A == 0 for offset in offsets)
    check_allocator(allocator)


def test_capacity_is_rounded_down_and_align_checked() -> None:
    assert Allocator(10 * A + 5, align_bytes=A).capacity == 10 * A
    with pytest.raises(ValueError, match="power of two"):
        Allocator(10 * A, align_bytes=3000)
    with pytest.raises(ValueError):
        Allocator(10 * A, align_bytes=A).allocate(-1)


def test_free_coalesces_with_both_neighbours() -> None:
    allocator = Allocator(8 * A, align_bytes=A)
    a, b, c, d = (allocator.allocate(2 * A) for _ in range(4))
    assert (a, b, c, d) == (0, 2 * A, 4 * A, 6 * A)
    assert allocator.free_extents() == []
    allocator.free(2 * A)
    allocator.free(6 * A)
    assert allocator.free_extents() == [(2 * A, 2 * A), (6 * A, 2 * A)]
    allocator.free(4 * A)  # merges with both neighbours
    assert allocator.free_extents() == [(2 * A, 6 * A)]
    allocator.free(0)
    assert allocator.free_extents() == [(0, 8 * A)]
    assert allocator.used_bytes == 0
    with pytest.raises(KeyError):
        allocator.free(0)  # double free


def test_first_fit_takes_the_lowest_hole_that_fits() -> None:
    allocator = Allocator(16 * A, align_bytes=A)
    offsets = [allocator.allocate(A) for _ in range(16)]
    for offset in (A, 4 * A, 5 * A, 10 * A, 11 * A, 12 * A):
        allocator.free(offset)
    assert allocator.allocate(3 * A) == 10 * A
    assert allocator.allocate(2 * A) == 4 * A
    assert allocator.allocate(A) == A
    assert offsets[0] == 0
    check_allocator(allocator)


def test_batch_is_all_or_nothing() -> None:
    allocator = Allocator(10 * A, align_bytes=A)
    assert allocator.allocate_batch([A] * 4) == [0, A, 2 * A, 3 * A]
    before = (allocator.free_extents(), allocator.used_bytes, allocator.allocation_count)
    assert allocator.allocate_batch([A] * 7) is None  # 6 units free
    assert allocator.allocate_batch([2 * A, 2 * A, 3 * A]) is None
    assert (allocator.free_extents(), allocator.used_bytes, allocator.allocation_count) == before
    assert allocator.allocate_batch([]) == []
    assert allocator.allocate_batch([A] * 6) == [4 * A, 5 * A, 6 * A, 7 * A, 8 * A, 9 * A]
    check_allocator(allocator)


def test_mixed_batch_rolls_back_on_fragmentation() -> None:
    allocator = Allocator(8 * A, align_bytes=A)
    for offset in range(0, 8 * A, A):
        assert allocator.allocate(A) == offset
    for offset in (0, 2 * A, 3 * A, 5 * A, 6 * A):
        allocator.free(offset)
    before = allocator.free_extents()
    assert before == [(0, A), (2 * A, 2 * A), (5 * A, 2 * A)]
    # 5 units free in total, 4 asked, but no hole of 3: the first pieces are undone.
    assert allocator.allocate_batch([A, 3 * A]) is None
    assert allocator.free_extents() == before
    assert allocator.allocate_batch([2 * A, A, 2 * A]) == [2 * A, 0, 5 * A]
    check_allocator(allocator)


def test_uniform_batch_carves_across_holes() -> None:
    allocator = Allocator(12 * A, align_bytes=A)
    for _ in range(6):
        allocator.allocate(2 * A)
    for offset in (0, 4 * A, 8 * A):
        allocator.free(offset)
    assert allocator.allocate_batch([A] * 5) == [0, A, 4 * A, 5 * A, 8 * A]
    assert allocator.free_extents() == [(9 * A, A)]
    check_allocator(allocator)


def test_fragmentation_refuses_until_neighbours_are_freed() -> None:
    allocator = Allocator(8 * A, align_bytes=A)
    for _ in range(8):
        allocator.allocate(A)
    for offset in (0, 2 * A, 4 * A, 6 * A):
        allocator.free(offset)
    assert allocator.free_bytes == 4 * A
    assert allocator.largest_free() == A
    assert allocator.allocate(2 * A) is None
    allocator.free(A)
    assert allocator.allocate(3 * A) == 0
    check_allocator(allocator)


def test_lazy_growth_up_to_capacity() -> None:
    allocator = Allocator(16 * A, init_size=A + 1, align_bytes=A)
    assert allocator.limit == 2 * A
    assert allocator.allocate(A) == 0
    assert allocator.allocate(2 * A) is None
    assert allocator.grow_to(5 * A) == 5 * A
    assert allocator.allocate(2 * A) == A  # the grown part merged with the free tail
    assert allocator.grow_to(A) == 5 * A  # never shrinks
    assert allocator.grow_to(1 << 40) == 16 * A  # clamped
    assert allocator.allocate(11 * A) == 3 * A
    check_allocator(allocator)
    assert Allocator(4 * A, init_size=100 * A, align_bytes=A).limit == 4 * A


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, object]]:
    ops: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["alloc", "batch", "free", "grow", "plan"]))
        if kind == "alloc":
            ops.append((kind, draw(st.integers(0, 9 * 512))))
        elif kind == "batch":
            uniform = draw(st.booleans())
            if uniform:
                ops.append((kind, [draw(st.integers(1, 3 * 512))] * draw(st.integers(1, 6))))
            else:
                ops.append((kind, draw(st.lists(st.integers(1, 5 * 512), max_size=6))))
        elif kind == "free":
            ops.append((kind, draw(st.integers(0, 1 << 30))))
        elif kind == "plan":
            sizes = draw(st.lists(st.integers(1, 6 * 512), min_size=1, max_size=4))
            ops.append((kind, (sizes, draw(st.randoms(use_true_random=False)))))
        else:
            ops.append((kind, draw(st.integers(0, 80 * 512))))
    return ops


@settings(max_examples=200, deadline=None)
@given(ops=operations(), align_shift=st.integers(6, 10), init_units=st.integers(0, 40))
def test_random_sequences_never_overlap(
    ops: list[tuple[str, object]], align_shift: int, init_units: int
) -> None:
    align = 1 << align_shift
    allocator = Allocator(64 * 512, init_size=init_units * 512, align_bytes=align)
    live: dict[int, int] = {}  # offset -> aligned size, the model of what is allocated
    for kind, arg in ops:
        if kind == "alloc":
            assert isinstance(arg, int)
            offset = allocator.allocate(arg)
            if offset is not None:
                live[offset] = allocator.size_of(offset)
        elif kind == "batch":
            assert isinstance(arg, list)
            before = (allocator.free_extents(), allocator.used_bytes)
            offsets = allocator.allocate_batch(arg)
            if offsets is None:
                assert (allocator.free_extents(), allocator.used_bytes) == before
            else:
                assert len(offsets) == len(arg)
                for offset, size in zip(offsets, arg, strict=True):
                    assert offset not in live
                    assert allocator.size_of(offset) == align_up(max(size, 1), align)
                    live[offset] = allocator.size_of(offset)
        elif kind == "free" and live:
            assert isinstance(arg, int)
            offset = sorted(live)[arg % len(live)]
            assert allocator.free(offset) == live.pop(offset)
        elif kind == "grow":
            assert isinstance(arg, int)
            allocator.grow_to(arg)
        elif kind == "plan":
            sizes, rng = arg  # type: ignore[misc]
            order = list(live)
            rng.shuffle(order)
            check_plan(allocator, sizes, order)
        spans = sorted(live.items())
        for (o1, s1), (o2, _) in itertools.pairwise(spans):
            assert o1 + s1 <= o2, "allocations overlap"
        assert all(o % align == 0 and o + s <= allocator.limit for o, s in spans)
        assert allocator.used_bytes == sum(live.values())
        check_allocator(allocator)


def check_plan(allocator: Allocator, sizes: list[int], order: list[int]) -> None:
    """frees_needed changes nothing and predicts the least number of frees exactly."""
    before = (allocator.free_extents(), allocator.used_bytes)
    needed = allocator.frees_needed(sizes, iter(order))
    assert (allocator.free_extents(), allocator.used_bytes) == before

    def fits_after(count: int) -> bool:
        clone = copy.deepcopy(allocator)
        for offset in order[:count]:
            clone.free(offset)
        return clone.allocate_batch(sizes) is not None

    if needed is None:
        assert not fits_after(len(order))
    else:
        assert fits_after(needed)
        assert needed == 0 or not fits_after(needed - 1)


def test_frees_needed_counts_only_what_makes_room() -> None:
    allocator = Allocator(8 * A, align_bytes=A)
    for _ in range(8):
        allocator.allocate(A)
    # Freeing every other unit never makes a hole of two.
    assert allocator.frees_needed([2 * A], iter([0, 2 * A, 4 * A, 6 * A])) is None
    assert allocator.frees_needed([2 * A], iter([0, 2 * A, A, 3 * A])) == 3
    assert allocator.frees_needed([A, A], iter([5 * A, 7 * A, 0])) == 2
    allocator.free(0)
    assert allocator.frees_needed([A], iter([])) == 0
    consumed = iter([A, 2 * A, 3 * A])
    assert allocator.frees_needed([2 * A], consumed) == 1
    assert next(consumed) == 2 * A  # the offsets are consumed no further than needed
