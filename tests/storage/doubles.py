"""Test doubles and builders shared by the L1 tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from lmcache_core.storage.allocator import Allocator
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.eviction import EvictionPolicy
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager

KIB = 1024
MIB = 1024 * KIB


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FifoPolicyDouble:
    """A first-in first-out policy, to test the core without any plugin.

    It records every call so tests can check what the manager told it.
    """

    def __init__(self) -> None:
        self.order: dict[ObjectKey, None] = {}
        self.stored: list[list[ObjectKey]] = []
        self.accessed: list[list[ObjectKey]] = []
        self.removed: list[list[ObjectKey]] = []

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        self.stored.append(list(keys))
        for key in keys:
            self.order.setdefault(key, None)

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        self.accessed.append(list(keys))

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        self.removed.append(list(keys))
        for key in keys:
            self.order.pop(key, None)

    def candidates(self) -> Iterator[ObjectKey]:
        return iter(list(self.order))


class NeverEvictDouble(FifoPolicyDouble):
    """Tracks like FIFO but offers no candidate (what ``noop`` does)."""

    def candidates(self) -> Iterator[ObjectKey]:
        return iter(())


def key(name: str, rank: int = 0) -> ObjectKey:
    return ObjectKey(name.encode(), "model", rank)


def chunks(request: str, n: int) -> list[ObjectKey]:
    """The keys of one request's ``n`` chunks, in prefix order."""
    return [key(f"{request}{i}") for i in range(n)]


def make_l1(
    *,
    capacity: int = 1 * MIB,
    init: int | None = None,
    align: int = 4 * KIB,
    policy: EvictionPolicy | None = None,
    clock: Callable[[], float] | None = None,
    write_ttl: float = 600.0,
    read_ttl: float = 300.0,
    watermark: float = 0.8,
    ratio: float = 0.2,
    arena_size: int | None = None,
) -> L1Manager:
    arena = Arena(arena_size or capacity + align, kind="anonymous")
    return L1Manager(
        arena=arena,
        capacity_bytes=capacity,
        init_bytes=capacity if init is None else init,
        align_bytes=align,
        write_ttl_s=write_ttl,
        read_ttl_s=read_ttl,
        policy=policy if policy is not None else FifoPolicyDouble(),
        trigger_watermark=watermark,
        eviction_ratio=ratio,
        clock=clock or FakeClock(),
    )


def check_allocator(allocator: Allocator) -> None:
    """The free extents and the allocations partition [0, limit) exactly."""
    extents = allocator.free_extents()
    allocations = sorted(allocator._allocated.items())
    pieces = sorted([(o, s, "free") for o, s in extents] + [(o, s, "used") for o, s in allocations])
    cursor = 0
    previous_free = False
    for offset, size, what in pieces:
        assert offset == cursor, f"gap or overlap at {offset} (expected {cursor})"
        assert offset % allocator.align_bytes == 0 and size % allocator.align_bytes == 0
        assert size > 0
        if what == "free":
            assert not previous_free, f"uncoalesced free extents at {offset}"
        previous_free = what == "free"
        cursor += size
    assert cursor == allocator.limit
    assert allocator.used_bytes == sum(size for _, size in allocations)
    assert allocator.limit <= allocator.capacity


def check_l1(l1: L1Manager) -> None:
    """Every allocation is a resident or staged object and the other way round."""
    with l1._lock:
        allocator = l1._allocator
        check_allocator(allocator)
        owners = [obj.alloc_offset for obj in l1._resident.values()]
        owners += [stage.alloc_offset for stage in l1._staged.values()]
        assert sorted(owners) == sorted(allocator._allocated)
        assert allocator.used_bytes <= l1.capacity_bytes
        assert not set(l1._resident) & set(l1._staged)
        for obj in l1._resident.values():
            assert obj.readers == sum(int(count) for _, count in obj.grants)
            assert obj.readers >= 0
