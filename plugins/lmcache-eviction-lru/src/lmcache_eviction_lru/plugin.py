"""Registers the eviction policy ``LRU`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl
from lmcache_eviction_lru.policy import build


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``LRU``.

    Returns:
        Its one spec; the factory takes an ``EvictionSettings``.
    """
    return [
        EvictionPolicySpec(
            name="LRU",
            factory=build,
            description="LRU eviction that keeps prefixes: later chunks of a request go first.",
        )
    ]
