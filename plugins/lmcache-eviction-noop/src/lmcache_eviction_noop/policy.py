"""The policy that never evicts: L1 as a pure write buffer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lmcache_core.storage.eviction import EvictionSettings
from lmcache_core.storage.keys import ObjectKey


class NoopEvictionPolicy:
    """Tracks nothing and offers no candidate, so nothing is ever evicted.

    With it, a full L1 refuses new reservations (``L1FullError``) until someone
    frees objects: the ``skip_l1`` store policy does, once they are in L2.
    """

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        """Ignore stored keys."""

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        """Ignore accesses."""

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        """Ignore removals."""

    def candidates(self) -> Iterator[ObjectKey]:
        """No candidates, ever."""
        return iter(())


def build(settings: EvictionSettings | None = None) -> NoopEvictionPolicy:
    """Factory of the ``noop`` spec.

    Args:
        settings: The eviction settings; unused.

    Returns:
        A policy that never evicts.
    """
    return NoopEvictionPolicy()
