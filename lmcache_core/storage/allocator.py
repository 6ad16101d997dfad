"""First-fit allocator of aligned extents over the offsets of an arena.

It manages offsets only (no memory): ``[0, limit)``, where ``limit`` starts at the
initial size and grows (:meth:`Allocator.grow_to`) up to ``capacity``, which is
how the lazy L1 grows from ``--l1-init-size-gb`` to ``--l1-size-gb``.

The free space is an address-sorted list of maximal extents (two parallel lists:
starts and sizes). Allocation is first-fit and cuts from the head of an extent,
so the common case updates one list slot in place. Free finds its neighbours by
bisection and coalesces with both, which keeps the representation canonical: the
same set of free bytes is always the same list of extents. That is what makes an
all-or-nothing batch cheap to undo (free what was taken, in any order).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence


def align_up(value: int, align: int) -> int:
    """``value`` rounded up to a multiple of ``align`` (a power of two)."""
    return (value + align - 1) & ~(align - 1)


def align_down(value: int, align: int) -> int:
    """``value`` rounded down to a multiple of ``align`` (a power of two)."""
    return value & ~(align - 1)


def _insert_extent(starts: list[int], sizes: list[int], offset: int, size: int) -> None:
    """Insert a free extent into address-sorted lists, coalescing with its neighbours."""
    index = bisect_left(starts, offset)
    merge_prev = index > 0 and starts[index - 1] + sizes[index - 1] == offset
    merge_next = index < len(starts) and offset + size == starts[index]
    if merge_prev and merge_next:
        sizes[index - 1] += size + sizes[index]
        del starts[index]
        del sizes[index]
    elif merge_prev:
        sizes[index - 1] += size
    elif merge_next:
        starts[index] = offset
        sizes[index] += size
    else:
        starts.insert(index, offset)
        sizes.insert(index, size)


def _fits(extents: Sequence[int], aligned: Sequence[int]) -> bool:
    """Whether :meth:`Allocator.allocate_batch` would place ``aligned`` in these extents."""
    if not aligned:
        return True
    first = aligned[0]
    if all(size == first for size in aligned):  # mirrors _carve_uniform
        units = 0
        for extent in extents:
            units += extent // first
            if units >= len(aligned):
                return True
        return False
    remaining = list(extents)  # first fit, cutting from the head, as allocate_batch does
    for size in aligned:
        for index, extent in enumerate(remaining):
            if extent >= size:
                remaining[index] = extent - size
                break
        else:
            return False
    return True


class Allocator:
    """Aligned first-fit allocation of offsets with coalescing frees.

    Not thread-safe: the L1 manager calls it under its lock.

    Args:
        capacity: Largest ``limit`` it may grow to; rounded down to ``align_bytes``.
        init_size: Initial ``limit``; rounded up to ``align_bytes`` and clamped to
            ``capacity``.
        align_bytes: A power of two; every size is rounded up to it and every
            offset is a multiple of it.

    Raises:
        ValueError: ``align_bytes`` is not a power of two, or a size is negative.
    """

    def __init__(self, capacity: int, init_size: int | None = None, align_bytes: int = 4096):
        if align_bytes <= 0 or align_bytes & (align_bytes - 1):
            raise ValueError(f"align_bytes must be a power of two, not {align_bytes}")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.align_bytes = align_bytes
        self._capacity = align_down(capacity, align_bytes)
        initial = self._capacity if init_size is None else init_size
        if initial < 0:
            raise ValueError(f"init_size must be >= 0, not {initial}")
        self._limit = min(align_up(initial, align_bytes), self._capacity)
        self._starts: list[int] = []
        self._sizes: list[int] = []
        self._allocated: dict[int, int] = {}
        self._used = 0
        self._reserved = 0  # guard units (grow_to(guard=True)): neither used nor free
        if self._limit:
            self._starts.append(0)
            self._sizes.append(self._limit)

    # -- state -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Largest ``limit`` the allocator can grow to."""
        return self._capacity

    @property
    def limit(self) -> int:
        """End of the allocatable offsets today."""
        return self._limit

    @property
    def used_bytes(self) -> int:
        """Bytes allocated (aligned sizes)."""
        return self._used

    @property
    def free_bytes(self) -> int:
        """Bytes free below ``limit`` (possibly fragmented; guard units excluded)."""
        return self._limit - self._used - self._reserved

    @property
    def reserved_bytes(self) -> int:
        """Bytes kept out of use as guards at growth boundaries."""
        return self._reserved

    @property
    def allocation_count(self) -> int:
        """Number of live allocations."""
        return len(self._allocated)

    def largest_free(self) -> int:
        """Size of the largest free extent (O(number of extents))."""
        return max(self._sizes, default=0)

    def free_extents(self) -> list[tuple[int, int]]:
        """The free extents as ``(offset, size)``, address-sorted (for tests and status)."""
        return list(zip(self._starts, self._sizes, strict=True))

    def size_of(self, offset: int) -> int:
        """The aligned size of the allocation at ``offset``.

        Raises:
            KeyError: No allocation starts there.
        """
        return self._allocated[offset]

    def aligned(self, size: int) -> int:
        """``size`` rounded up to ``align_bytes``."""
        return align_up(size, self.align_bytes)

    # -- operations -----------------------------------------------------------------

    def grow_to(self, new_limit: int, guard: bool = False) -> int:
        """Raise ``limit`` to ``new_limit`` (aligned up, clamped to ``capacity``).

        A smaller value changes nothing: the allocator never shrinks.

        Args:
            new_limit: The new end of the allocatable offsets.
            guard: Keep one ``align_bytes`` unit at the old limit out of use for good,
                so no allocation spans the old limit (lazy pinning: the old limit is
                where one host registration ends and the next begins). Ignored when
                the old limit is 0.

        Returns:
            The new ``limit``.
        """
        new_limit = min(align_up(new_limit, self.align_bytes), self._capacity)
        if new_limit <= self._limit:
            return self._limit
        old = self._limit
        self._limit = new_limit
        if guard and old:
            kept = min(self.align_bytes, new_limit - old)
            self._reserved += kept
            old += kept
        if new_limit > old:
            self._insert_free(old, new_limit - old)
        return self._limit

    def allocate(self, size: int) -> int | None:
        """One extent of at least ``size`` bytes, or ``None`` if none is free."""
        result = self.allocate_batch([size])
        return None if result is None else result[0]

    def allocate_batch(self, sizes: Sequence[int]) -> list[int] | None:
        """One extent per size, all or nothing.

        Args:
            sizes: Requested sizes (each >= 0; rounded up to ``align_bytes``,
                and a zero size still takes one ``align_bytes`` unit so that
                every allocation has its own offset).

        Returns:
            The offsets, in the order of ``sizes``; ``None`` if they do not all
            fit, in which case nothing changed.

        Raises:
            ValueError: A size is negative.
        """
        if not sizes:
            return []
        first = sizes[0]
        if all(size == first for size in sizes):  # the common case: one request's chunks
            unit = self._aligned_size(first)
            if unit * len(sizes) > self.free_bytes:
                return None  # cannot fit whatever the fragmentation: O(1) refusal
            return self._carve_uniform(unit, len(sizes))
        aligned = [self._aligned_size(size) for size in sizes]
        if sum(aligned) > self.free_bytes:
            return None
        taken: list[int] = []
        for size in aligned:
            offset = self._first_fit(size)
            if offset is None:
                for done in taken:  # canonical free list: freeing restores it exactly
                    self.free(done)
                return None
            taken.append(offset)
        return taken

    def frees_needed(self, sizes: Sequence[int], offsets: Iterable[int]) -> int | None:
        """How many allocations must be freed for :meth:`allocate_batch` to succeed.

        Simulates freeing the allocations at ``offsets`` one by one, in order, on
        a copy of the free list, and stops as soon as ``sizes`` would fit. This is
        what lets the L1 manager evict only when eviction can actually make room
        (enough bytes are not enough when the free space is fragmented).

        Args:
            sizes: The batch to place.
            offsets: Live allocations that may be freed, in the order they would
                be; consumed lazily, and no further than needed.

        Returns:
            0 if the batch fits now, else the number of leading ``offsets`` to
            free; ``None`` if freeing all of them is still not enough. Nothing
            changes either way.
        """
        aligned = [self._aligned_size(size) for size in sizes]
        need = sum(aligned)
        starts, lengths = list(self._starts), list(self._sizes)
        free = self.free_bytes
        if free >= need and _fits(lengths, aligned):
            return 0
        for count, offset in enumerate(offsets, start=1):
            size = self._allocated[offset]
            _insert_extent(starts, lengths, offset, size)
            free += size
            if free >= need and _fits(lengths, aligned):
                return count
        return None

    def free(self, offset: int) -> int:
        """Return the allocation at ``offset`` to the free list.

        Returns:
            The aligned size that was freed.

        Raises:
            KeyError: No allocation starts at ``offset`` (a double free).
        """
        size = self._allocated.pop(offset)
        self._used -= size
        self._insert_free(offset, size)
        return size

    # -- internals ------------------------------------------------------------------

    def _aligned_size(self, size: int) -> int:
        if size < 0:
            raise ValueError(f"allocation size must be >= 0, not {size}")
        return max(self.align_bytes, align_up(size, self.align_bytes))

    def _take(self, index: int, size: int) -> int:
        """Cut ``size`` bytes from the head of free extent ``index``."""
        offset = self._starts[index]
        if self._sizes[index] == size:
            del self._starts[index]
            del self._sizes[index]
        else:
            self._starts[index] = offset + size
            self._sizes[index] -= size
        self._allocated[offset] = size
        self._used += size
        return offset

    def _first_fit(self, size: int) -> int | None:
        for index, extent in enumerate(self._sizes):
            if extent >= size:
                return self._take(index, size)
        return None

    def _carve_uniform(self, size: int, count: int) -> list[int] | None:
        """``count`` equal extents: a first pass checks they fit, a second takes them."""
        fits = 0
        for extent in self._sizes:
            fits += extent // size
            if fits >= count:
                break
        else:
            return None
        offsets: list[int] = []
        index = 0
        while len(offsets) < count:
            units = min(self._sizes[index] // size, count - len(offsets))
            if units == 0:
                index += 1
                continue
            start = self._starts[index]
            for unit in range(units):
                offset = start + unit * size
                self._allocated[offset] = size
                offsets.append(offset)
            taken = units * size
            self._used += taken
            if taken == self._sizes[index]:
                del self._starts[index]
                del self._sizes[index]
            else:
                self._starts[index] = start + taken
                self._sizes[index] -= taken
                index += 1
        return offsets

    def _insert_free(self, offset: int, size: int) -> None:
        _insert_extent(self._starts, self._sizes, offset, size)

    def __repr__(self) -> str:
        return (
            f"<Allocator used={self._used} limit={self._limit} capacity={self._capacity} "
            f"extents={len(self._starts)}>"
        )
