"""A first-in, first-out eviction policy: the oldest inserted key goes first."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from itertools import islice


class FifoEvictionPolicy:
    """Evicts keys in the order they were first inserted, ignoring accesses.

    The eviction controller tells the policy about keys (``on_insert``,
    ``on_access``, ``on_remove``) and asks it for ``victims``; it deletes the
    victims itself and then reports each deletion with ``on_remove``.
    """

    def __init__(self) -> None:
        self._order: dict[Hashable, None] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def on_insert(self, key: Hashable) -> None:
        """Start tracking ``key``; inserting a tracked key again keeps its place."""
        self._order.setdefault(key, None)

    def on_access(self, key: Hashable) -> None:
        """Note a read of ``key``; FIFO order does not depend on reads."""

    def on_remove(self, key: Hashable) -> None:
        """Stop tracking ``key`` (deleted or evicted); unknown keys are ignored."""
        self._order.pop(key, None)

    def victims(
        self, n: int, evictable: Callable[[Hashable], bool] | None = None
    ) -> list[Hashable]:
        """The ``n`` oldest keys, oldest first, without forgetting them.

        Args:
            n: How many keys to return at most.
            evictable: Optional filter; keys it rejects (locked ones, for example)
                are skipped.

        Returns:
            Up to ``n`` keys.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        candidates = (k for k in self._order if evictable is None or evictable(k))
        return list(islice(candidates, n))


def build_fifo_policy(config: object | None = None) -> FifoEvictionPolicy:
    """Factory of the ``example_fifo`` spec.

    Args:
        config: The validated eviction settings; FIFO needs none of them.

    Returns:
        A new, empty policy.
    """
    return FifoEvictionPolicy()
