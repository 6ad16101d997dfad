"""Registers the eviction policy ``IsolatedLRU`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl
from lmcache_eviction_isolated_lru.policy import build


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``IsolatedLRU``.

    Returns:
        Its one spec; the factory takes an ``EvictionSettings`` carrying the quotas.
    """
    return [
        EvictionPolicySpec(
            name="IsolatedLRU",
            factory=build,
            description=(
                "One prefix-keeping LRU per cache salt, enforcing per-salt quotas set over "
                "/quota; a salt without a quota is evicted (allowlist)."
            ),
        )
    ]
