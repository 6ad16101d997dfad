"""Registers the eviction policy ``ARC`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl
from lmcache_eviction_arc.policy import build


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``ARC``.

    Returns:
        Its one spec; the factory takes an ``EvictionSettings``.
    """
    return [
        EvictionPolicySpec(
            name="ARC",
            factory=build,
            description=(
                "Adaptive Replacement Cache: balances recency and frequency with ghost lists; "
                "later chunks of a request go first."
            ),
        )
    ]
