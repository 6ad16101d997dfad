"""Registers the L2 prefetch policy ``retain`` with the LMCache server."""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_core.plugin import PrefetchPolicySpec, hookimpl


class LoadFromFirstHolder:
    """Load from the first adapter (cascade order) holding the key; the L1 copy is kept in L1."""

    temporary = False

    def choose(self, holders: Sequence[int]) -> int:
        """The first holder."""
        return holders[0]


@hookimpl
def lmcache_register_prefetch_policies() -> list[PrefetchPolicySpec]:
    """Register the L2 prefetch policy ``retain``.

    Returns:
        Its one spec.
    """
    return [
        PrefetchPolicySpec(
            name="retain",
            factory=LoadFromFirstHolder,
            description="Loads L2 hits into L1 and keeps them resident.",
        )
    ]
