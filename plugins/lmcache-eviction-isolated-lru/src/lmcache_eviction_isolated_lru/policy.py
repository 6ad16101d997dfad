"""One prefix-keeping LRU per ``cache_salt``, for per-salt quotas (``IsolatedLRU``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lmcache_eviction_lru.policy import LRUEvictionPolicy

from lmcache_core.storage.eviction import EvictionSettings, QuotaLimits
from lmcache_core.storage.keys import ObjectKey


def _by_salt(keys: Sequence[ObjectKey]) -> dict[str, list[ObjectKey]]:
    """The keys of a batch per salt, each group in the batch's (prefix) order."""
    groups: dict[str, list[ObjectKey]] = {}
    for key in keys:
        groups.setdefault(key.cache_salt, []).append(key)
    return groups


class IsolatedLRUEvictionPolicy:
    """An LRU per salt, plus one over every key for the tier-wide watermark.

    Each order is an ``LRU`` policy (``lmcache-eviction-lru``), so the ordering
    rules are the same: the least recently stored or accessed batch goes first,
    and within a batch the later chunks go before their prefix. Every event
    updates the global order and the order of each salt it names, so a salt's
    order is the global order restricted to that salt. A salt's order is
    dropped once it tracks nothing, so the per-salt table is bounded by the
    tracked keys.

    It implements the core's ``IsolatedEvictionPolicy``: the controllers (L1,
    and each L2 adapter's ``eviction`` block) ask :meth:`limit_bytes` for every
    salt with bytes in their tier and evict a salt that reached the watermark of
    its limit from :meth:`salt_candidates`. A salt without a quota has limit 0:
    all of its data goes (allowlist semantics).

    Not thread-safe by itself: the controllers call it from one thread at a time.

    Args:
        quotas: The limits (the server's quota manager).
    """

    def __init__(self, quotas: QuotaLimits) -> None:
        self.quotas = quotas
        self._all = LRUEvictionPolicy()
        self._salts: dict[str, LRUEvictionPolicy] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        """Track a request's keys as most recent, globally and in their salts' orders."""
        self._all.on_stored(keys)
        for salt, group in _by_salt(keys).items():
            order = self._salts.get(salt)
            if order is None:
                order = self._salts[salt] = LRUEvictionPolicy()
            order.on_stored(group)

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        """Make tracked keys most recent; unknown keys are ignored."""
        self._all.on_accessed(keys)
        for salt, group in _by_salt(keys).items():
            order = self._salts.get(salt)
            if order is not None:
                order.on_accessed(group)

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        """Forget keys; unknown ones are ignored."""
        self._all.on_removed(keys)
        for salt, group in _by_salt(keys).items():
            order = self._salts.get(salt)
            if order is not None:
                order.on_removed(group)
                if not len(order):
                    del self._salts[salt]

    def candidates(self) -> Iterator[ObjectKey]:
        """Every tracked key, least recent first (the tier-wide watermark's order)."""
        return self._all.candidates()

    def salt_candidates(self, cache_salt: str) -> Iterator[ObjectKey]:
        """The salt's tracked keys, least recent first; nothing for an unknown salt."""
        order = self._salts.get(cache_salt)
        return order.candidates() if order is not None else iter(())

    def limit_bytes(self, cache_salt: str) -> int:
        """The salt's quota in bytes; 0 without one."""
        return self.quotas.limit_bytes(cache_salt)

    def salts(self) -> list[str]:
        """The salts with tracked keys."""
        return list(self._salts)


def build(settings: EvictionSettings) -> IsolatedLRUEvictionPolicy:
    """Factory of the ``IsolatedLRU`` spec.

    Args:
        settings: Must carry the server's quota manager (``settings.quotas``);
            the watermark and ratio are applied by the controllers.

    Raises:
        ValueError: No quota source: without one every salt would have limit 0
            and all data would be evicted, so refuse instead of guessing.
    """
    if settings.quotas is None:
        raise ValueError(
            "IsolatedLRU needs the server's quota manager (EvictionSettings.quotas); none was given"
        )
    return IsolatedLRUEvictionPolicy(settings.quotas)
