"""A first-in, first-out eviction policy: the oldest stored key goes first."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lmcache_core.storage.eviction import EvictionSettings, iter_candidates
from lmcache_core.storage.keys import ObjectKey


class FifoEvictionPolicy:
    """Evicts keys in the order they were first stored, ignoring accesses.

    It implements :class:`lmcache_core.storage.eviction.EvictionPolicy`. The L1
    manager tells the policy about batches of keys (``on_stored``,
    ``on_accessed``, ``on_removed``), each batch being the chunks of one request
    in prefix order, and asks it for ``candidates`` when memory must be
    reclaimed; it evicts what it may (never a locked object) and reports each
    eviction back with ``on_removed``. All calls come from one thread at a time.

    Unlike ``LRU``, FIFO does not protect prefixes: chunk 0 of a request is the
    oldest, so it goes first. That makes it a simple example, not a good policy.
    """

    def __init__(self) -> None:
        self._order: dict[ObjectKey, None] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        """Track new keys in prefix order; a key stored again keeps its place."""
        for key in keys:
            self._order.setdefault(key, None)

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        """Note reads; FIFO order does not depend on them."""

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        """Stop tracking keys (deleted or evicted); unknown keys are ignored."""
        for key in keys:
            self._order.pop(key, None)

    def candidates(self) -> Iterator[ObjectKey]:
        """Oldest first, without forgetting them; safe against concurrent removal."""
        return iter_candidates(self._order)


def build_fifo_policy(settings: EvictionSettings | None = None) -> FifoEvictionPolicy:
    """Factory of the ``example_fifo`` spec.

    Args:
        settings: The eviction settings (watermark, ratio, capacity); FIFO needs
            none of them.

    Returns:
        A new, empty policy.
    """
    return FifoEvictionPolicy()
