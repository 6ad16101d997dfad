"""Registers the eviction policy ``noop`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl
from lmcache_eviction_noop.policy import build


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``noop``.

    Returns:
        Its one spec; the factory takes an ``EvictionSettings``.
    """
    return [
        EvictionPolicySpec(
            name="noop",
            factory=build,
            description="Tracks nothing and never evicts; pair it with the skip_l1 store policy.",
        )
    ]
