"""The read-lock ledger: grants with their own deadlines, and orphans of expired ones.

Each object carries a :class:`Ledger`. Every grant of read locks gets its own
deadline (``ttl_s`` after it was taken), so a new reader never extends an older
reader's lock and an expired grant never resets a newer one. An expired grant
is remembered as an *orphan* for one more TTL: the late unlock of its (slow,
not dead) holder consumes the orphan instead of a newer reader's lock.

:class:`ReadGrants` is pure: it never reads a clock (the caller passes ``now``
or a deadline) and takes no lock (the L1 manager calls it under its own), so it
is tested against a naive model (``tests/storage/test_read_grants.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

GRANT_MERGE_FRACTION = 0.01
"""Grants whose deadlines lie within this fraction of the TTL share one deadline (the
earlier one), which bounds a hot key's list to about 100 entries however many readers
come and go within one TTL."""


class Ledger:
    """One object's read locks.

    ``grants`` and ``orphans`` are ``[deadline, count]`` lists in deadline order
    (deadlines come from a monotonic clock); ``readers`` is the sum of the
    grants' counts (the orphans' are not live).
    """

    __slots__ = ("grants", "orphans", "readers")

    def __init__(self) -> None:
        self.grants: list[list[float]] = []
        self.orphans: list[list[float]] = []
        self.readers = 0


K = TypeVar("K", bound=Hashable)
L = TypeVar("L", bound=Ledger)


class ReadGrants(Generic[K, L]):
    """Grants, expiry, orphans and releases of every object's ledger.

    Args:
        ttl_s: Lifetime of a grant that is not released (and of its orphan after it).
        merge_fraction: See :data:`GRANT_MERGE_FRACTION`; below 1.

    Attributes:
        held: The ledgers with grants or orphans, by key (what :meth:`expire` sweeps).
        next_deadline: A lower bound of every deadline in :attr:`held` (:meth:`expire`
            before it has nothing to do).

    Raises:
        ValueError: ``ttl_s`` not positive, or ``merge_fraction`` outside [0, 1).
    """

    def __init__(self, ttl_s: float, merge_fraction: float = GRANT_MERGE_FRACTION) -> None:
        if ttl_s <= 0 or not 0.0 <= merge_fraction < 1.0:
            raise ValueError(
                f"need ttl_s > 0 and merge_fraction in [0, 1), not {ttl_s} and {merge_fraction}"
            )
        self.ttl_s = ttl_s
        self.merge_window = ttl_s * merge_fraction
        self.held: dict[K, L] = {}
        self.next_deadline = math.inf

    def grant(self, key: K, ledger: L, count: int, deadline: float) -> None:
        """Add ``count`` read locks expiring at ``deadline`` (``now + ttl_s``)."""
        grants = ledger.grants
        if grants and deadline - grants[-1][0] <= self.merge_window:
            grants[-1][1] += count
        else:
            grants.append([deadline, count])
        ledger.readers += count
        self.held[key] = ledger
        self.next_deadline = min(self.next_deadline, deadline)

    def grant_many(
        self, keys: Iterable[K], ledgers: Mapping[K, L], count: int, deadline: float
    ) -> None:
        """:meth:`grant` ``count`` locks on each of ``keys`` (its ledger in ``ledgers``).

        One loop with the attribute lookups hoisted: a 64-chunk lookup's locks
        cost a third of what 64 :meth:`grant` calls do.
        """
        window = self.merge_window
        held = self.held
        for key in keys:
            ledger = ledgers[key]
            grants = ledger.grants
            if grants and deadline - grants[-1][0] <= window:
                grants[-1][1] += count
            else:
                grants.append([deadline, count])
            ledger.readers += count
            held[key] = ledger
        # Once per call, not per key; a lower bound still, even for no keys.
        self.next_deadline = min(self.next_deadline, deadline)

    def grant_each(
        self, keys: Sequence[K], ledgers: Sequence[L], count: int, deadline: float
    ) -> None:
        """:meth:`grant_many` with the ledgers already looked up (``ledgers[i]``: ``keys[i]``'s).

        A caller that had to find every ledger anyway (to check that all keys
        are there) saves the second lookup per key; :attr:`held` is updated in
        one C-level pass.
        """
        window = self.merge_window
        for ledger in ledgers:
            grants = ledger.grants
            if grants and deadline - grants[-1][0] <= window:
                grants[-1][1] += count
            else:
                grants.append([deadline, count])
            ledger.readers += count
        self.held.update(zip(keys, ledgers, strict=True))
        self.next_deadline = min(self.next_deadline, deadline)

    def prune(self, ledger: L, now: float) -> int:
        """Turn expired grants into orphans and forget old orphans; returns locks expired."""
        expired = 0
        grants = ledger.grants
        while grants and grants[0][0] <= now:
            deadline, count = grants.pop(0)
            ledger.readers -= int(count)
            expired += int(count)
            # The holder gets one more TTL to send its late unlock.
            orphans = ledger.orphans
            orphan_deadline = deadline + self.ttl_s
            if orphans and orphan_deadline - orphans[-1][0] <= self.merge_window:
                orphans[-1][1] += count
            else:
                orphans.append([orphan_deadline, count])
        orphans = ledger.orphans
        while orphans and orphans[0][0] <= now:
            orphans.pop(0)
        return expired

    def release(self, key: K, ledger: L, count: int, now: float) -> None:
        """Release up to ``count`` locks (never below zero).

        Orphans go first, then the grants closest to expiry; a ledger left empty
        is forgotten.
        """
        grants = ledger.grants
        if not ledger.orphans and grants and grants[0][0] > now and grants[0][1] >= count:
            # The usual release: nothing to prune (the earliest grant is live, no
            # orphans), and the earliest grant covers it; the same result as below.
            first = grants[0]
            first[1] -= count
            ledger.readers -= count
            if not first[1]:
                grants.pop(0)
                if not grants:
                    self.held.pop(key, None)
            return
        self.prune(ledger, now)
        remaining = count
        for pool, live in ((ledger.orphans, False), (ledger.grants, True)):
            while remaining and pool:
                take = min(remaining, int(pool[0][1]))
                pool[0][1] -= take
                remaining -= take
                if live:
                    ledger.readers -= take
                if pool[0][1] == 0:
                    pool.pop(0)
        if not ledger.grants and not ledger.orphans:
            self.held.pop(key, None)

    def forget(self, key: K) -> None:
        """The object is gone: stop tracking its ledger."""
        self.held.pop(key, None)

    def clear(self) -> None:
        """Forget every ledger."""
        self.held.clear()
        self.next_deadline = math.inf

    def expire(self, now: float, on_idle: Callable[[K, L], bool] | None = None) -> int:
        """Prune every held ledger, drop the empty ones, recompute :attr:`next_deadline`.

        Args:
            now: The time to expire against.
            on_idle: Told of each ledger left without a live reader; returns True
                when it dropped the object (a temporary one), which is then forgotten.

        Returns:
            The locks that expired.
        """
        expired = 0
        next_deadline = math.inf
        held = self.held
        for key, ledger in list(held.items()):
            expired += self.prune(ledger, now)
            if ledger.readers == 0 and on_idle is not None and on_idle(key, ledger):
                held.pop(key, None)
                continue
            if not ledger.grants and not ledger.orphans:
                del held[key]
                continue
            if ledger.grants:
                next_deadline = min(next_deadline, ledger.grants[0][0])
            if ledger.orphans:
                next_deadline = min(next_deadline, ledger.orphans[0][0])
        self.next_deadline = next_deadline
        return expired

    def locked_count(self, now: float) -> int:
        """How many held ledgers have a live reader at ``now`` (prunes them)."""
        count = 0
        for ledger in self.held.values():
            self.prune(ledger, now)
            if ledger.readers:
                count += 1
        return count
