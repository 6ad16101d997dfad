"""Room for new L1 objects: allocate, grow, or evict (policy order, never a locked or staged one).

:class:`L1Eviction` chooses victims for the three reasons L1 evicts (a batch
that does not fit, usage above the watermark, a salt over its quota) and hands
them to the manager's ``evict`` (which frees them, tells the policy and
publishes the eviction). It runs under the manager's lock and keeps no state of
its own besides references to the manager's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from lmcache_core.storage.allocator import Allocator
from lmcache_core.storage.errors import L1FullError
from lmcache_core.storage.eviction import (
    EvictionPolicy,
    IsolatedEvictionPolicy,
    quota_eviction_targets,
)
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1_objects import ResidentObject
from lmcache_core.storage.read_grants import ReadGrants

Evict = Callable[[list[ObjectKey], str], None]
"""``evict(victims, reason)``: ``reason`` is ``eviction`` or ``quota``."""


class L1Eviction:
    """Victim selection of one L1 manager (called with the manager's lock held).

    Args:
        policy: Orders the candidates.
        resident: The manager's table of resident objects (read only here).
        grants: The manager's read-lock ledger (expired grants are pruned here).
        evict: Frees victims (the manager's; it tells the policy and publishes).
        trigger_watermark: Watermark eviction acts above ``used / capacity``.
        eviction_ratio: Fraction of the capacity one watermark round frees.
        capacity_bytes: The tier's final size.
    """

    def __init__(
        self,
        policy: EvictionPolicy,
        resident: dict[ObjectKey, ResidentObject],
        grants: ReadGrants[ObjectKey, ResidentObject],
        evict: Evict,
        *,
        trigger_watermark: float,
        eviction_ratio: float,
        capacity_bytes: int,
    ) -> None:
        self.policy = policy
        self._resident = resident
        self._grants = grants
        self._evict = evict
        self.trigger_watermark = trigger_watermark
        self.eviction_ratio = eviction_ratio
        self.capacity_bytes = capacity_bytes
        self.grows_on_demand = True
        """Whether a batch that does not fit raises the allocator's limit first (lazy L1
        without pinning); ``False`` while a pinner owns the limit."""

    def triggered(self, used_bytes: int) -> bool:
        """Whether usage is above the watermark."""
        return used_bytes > self.trigger_watermark * self.capacity_bytes

    def allocate(self, allocator: Allocator, count: int, nbytes: int, now: float) -> list[int]:
        """``count`` extents of ``nbytes``: allocate, else grow, else evict, else raise.

        Raises:
            L1FullError: They do not fit even after every eviction allowed.
        """
        sizes = [nbytes] * count
        offsets = allocator.allocate_batch(sizes)
        if offsets is not None:
            return offsets
        need = count * allocator.aligned(nbytes)
        if need > allocator.capacity:
            raise L1FullError(need, allocator.free_bytes, "larger than the whole L1")
        if self.grows_on_demand and allocator.limit < allocator.capacity:
            allocator.grow_to(allocator.limit + need)
            offsets = allocator.allocate_batch(sizes)
            if offsets is not None:
                return offsets
        offsets = self.make_room(allocator, sizes, now)
        if offsets is None:
            raise L1FullError(
                need,
                allocator.free_bytes,
                "the rest is read-locked, staged, or not offered by the eviction policy",
            )
        return offsets

    def make_room(self, allocator: Allocator, sizes: list[int], now: float) -> list[int] | None:
        """Evict just enough, in policy order, for ``sizes`` to fit, and allocate them.

        The allocator simulates the frees first, so nothing is evicted when even
        every evictable object would not make room (too few bytes, or the free
        space stays fragmented around locked objects).

        Returns:
            The offsets allocated, or None (then nothing was evicted).
        """
        victims: list[ObjectKey] = []
        evictable = self.evictable(now)

        def offsets() -> Iterator[int]:
            for key, obj in evictable:
                victims.append(key)
                yield obj.alloc_offset

        count = allocator.frees_needed(sizes, offsets())
        evictable.close()  # ends the policy's iteration before we change it
        if count is None:
            return None
        self._evict(victims[:count], "eviction")
        offsets_ = allocator.allocate_batch(sizes)
        assert offsets_ is not None, "the allocator's simulation and allocation disagree"
        return offsets_

    def above_watermark(self, allocator: Allocator, now: float) -> int:
        """Free about ``eviction_ratio`` of the capacity in policy order; returns bytes freed."""
        target = self.eviction_ratio * self.capacity_bytes
        if target <= 0:
            return 0
        victims: list[ObjectKey] = []
        freed = 0
        for key, obj in self.evictable(now):
            victims.append(key)
            freed += allocator.size_of(obj.alloc_offset)
            if freed >= target:
                break
        self._evict(victims, "eviction")
        return freed

    def over_quota(self, allocator: Allocator, salt_bytes: dict[str, int], now: float) -> int:
        """Evict every salt at its quota's watermark (isolated policies; others: 0 bytes).

        Each salt frees what :func:`quota_eviction_targets` asks of its resident
        bytes, from the salt's own order.

        Returns:
            Bytes freed.
        """
        policy = self.policy
        if not isinstance(policy, IsolatedEvictionPolicy):
            return 0
        targets = quota_eviction_targets(
            policy, salt_bytes, self.trigger_watermark, self.eviction_ratio
        )
        freed = 0
        for salt, target in targets.items():
            victims: list[ObjectKey] = []
            salt_freed = 0
            evictable = self.evictable(now, policy.salt_candidates(salt))
            for key, obj in evictable:
                if key.cache_salt != salt:
                    continue  # a policy's mistake must not cost another salt its data
                victims.append(key)
                salt_freed += allocator.size_of(obj.alloc_offset)
                if salt_freed >= target:
                    break
            evictable.close()  # ends the policy's iteration before we change it
            self._evict(victims, "quota")
            freed += salt_freed
        return freed

    def evictable(
        self, now: float, candidates: Iterator[ObjectKey] | None = None
    ) -> Generator[tuple[ObjectKey, ResidentObject], None, None]:
        """Candidates (by default the policy's global order) that may go.

        That is: resident, and without a live read lock. Keys the policy offers
        that are not resident are removed from it when the iteration ends.
        """
        stale: list[ObjectKey] = []
        resident = self._resident
        prune = self._grants.prune
        try:
            for key in self.policy.candidates() if candidates is None else candidates:
                obj = resident.get(key)
                if obj is None:
                    stale.append(key)  # the policy tracks a key we do not have
                    continue
                if obj.grants:
                    prune(obj, now)
                if obj.readers == 0:
                    yield key, obj
        finally:
            if stale:
                self.policy.on_removed(stale)
