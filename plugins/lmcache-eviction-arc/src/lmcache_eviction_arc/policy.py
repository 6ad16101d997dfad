"""Adaptive Replacement Cache (Megiddo and Modha, FAST'03) as an eviction order.

ARC keeps two LRU lists of resident keys, ``T1`` (seen once) and ``T2`` (seen
again: a hit after the store), and two *ghost* lists of keys recently evicted
from each, ``B1`` and ``B2``. A store of a key that is a ghost tells which list
was evicted too eagerly and moves the target size ``p`` of ``T1``: a ``B1`` hit
grows it (recency pays), a ``B2`` hit shrinks it (frequency pays). Eviction takes
``T1``'s least recent keys while ``T1`` is above ``p``, then ``T2``'s.

Adapted to the contract (:class:`~lmcache_core.storage.eviction.EvictionPolicy`):
the manager decides how many keys go, so :meth:`ARCEvictionPolicy.candidates`
yields the order repeated ARC replacements would follow; the capacity ``c`` that
bounds ``p`` and the ghost lists is the largest number of keys tracked at once
(the policy does not know object sizes). Within a batch, later chunks are less
recent, as in ``LRU``, so prefixes outlive their suffixes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence

from lmcache_core.storage.eviction import EvictionSettings, iter_candidates
from lmcache_core.storage.keys import ObjectKey

Order = OrderedDict[ObjectKey, None]


class ARCEvictionPolicy:
    """ARC over batches of chunk keys (not thread-safe: the manager calls it under its lock)."""

    def __init__(self) -> None:
        self._t1: Order = OrderedDict()
        self._t2: Order = OrderedDict()
        self._b1: Order = OrderedDict()
        self._b2: Order = OrderedDict()
        self.target = 0.0
        """``p``: how many of the tracked keys ``T1`` should hold."""
        self.capacity = 0
        """``c``: the most keys tracked at once so far."""

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def __contains__(self, key: object) -> bool:
        return key in self._t1 or key in self._t2

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """``(|T1|, |T2|, |B1|, |B2|)``."""
        return len(self._t1), len(self._t2), len(self._b1), len(self._b2)

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        """New keys join ``T1``, former ghosts ``T2`` (moving ``p``); tracked ones are refreshed."""
        t1, t2, b1, b2 = self._t1, self._t2, self._b1, self._b2
        for key in reversed(keys):
            if key in t1:
                t1.move_to_end(key)
            elif key in t2:
                t2.move_to_end(key)
            elif key in b1:
                self.target = min(float(self.capacity), self.target + max(1.0, len(b2) / len(b1)))
                del b1[key]
                t2[key] = None
            elif key in b2:
                self.target = max(0.0, self.target - max(1.0, len(b1) / len(b2)))
                del b2[key]
                t2[key] = None
            else:
                t1[key] = None
        self.capacity = max(self.capacity, len(t1) + len(t2))
        self._trim_ghosts()

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        """A hit moves a key to ``T2``'s most recent end; untracked keys are ignored."""
        t1, t2 = self._t1, self._t2
        for key in reversed(keys):
            if key in t2:
                t2.move_to_end(key)
            elif key in t1:
                del t1[key]
                t2[key] = None

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        """Forget keys; each leaves a ghost in ``B1`` or ``B2``. Unknown keys are ignored."""
        for key in keys:
            if key in self._t1:
                del self._t1[key]
                self._b1[key] = None
            elif key in self._t2:
                del self._t2[key]
                self._b2[key] = None
        self._trim_ghosts()

    def candidates(self) -> Iterator[ObjectKey]:
        """ARC's replacement order; tolerates removals and moves between ``next()`` calls."""
        surplus = max(0, len(self._t1) - int(self.target))
        yielded: set[ObjectKey] = set()
        first = iter_candidates(self._t1)
        for order, limit in ((first, surplus), (iter_candidates(self._t2), None), (first, None)):
            taken = 0
            while limit is None or taken < limit:
                key = next(order, None)
                if key is None:
                    break
                if key in yielded:  # moved from T1 to T2 while we iterated
                    continue
                yielded.add(key)
                taken += 1
                yield key

    def _trim_ghosts(self) -> None:
        """Each ghost list holds at most ``c`` keys (its least recent go)."""
        for ghosts in (self._b1, self._b2):
            while len(ghosts) > self.capacity:
                ghosts.popitem(last=False)


def build(settings: EvictionSettings | None = None) -> ARCEvictionPolicy:
    """Factory of the ``ARC`` spec (the settings do not change how it orders keys).

    Returns:
        A new, empty policy.
    """
    return ARCEvictionPolicy()
