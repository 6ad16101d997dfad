"""Registers the L2 prefetch policy ``default`` with the LMCache server."""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_core.plugin import PrefetchPolicySpec, hookimpl


class LoadFromFirstHolder:
    """Load from the first adapter holding the key; the L1 copy is freed after its last reader."""

    temporary = True

    def choose(self, holders: Sequence[int]) -> int:
        """The first holder."""
        return holders[0]


@hookimpl
def lmcache_register_prefetch_policies() -> list[PrefetchPolicySpec]:
    """Register the L2 prefetch policy ``default``.

    Returns:
        Its one spec.
    """
    return [
        PrefetchPolicySpec(
            name="default",
            factory=LoadFromFirstHolder,
            description="Loads L2 hits into L1 as temporary objects, freed after their last read.",
        )
    ]
