"""Registers the eviction policy ``IsolatedLRU`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl, pending_factory

REASON = "lands with the quotas of the observability/admin issue (#5)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``IsolatedLRU``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        EvictionPolicySpec(
            name="IsolatedLRU",
            factory=pending_factory("eviction policy 'IsolatedLRU'", REASON),
            description="One LRU per cache salt, enforcing per-salt quotas at L2.",
            not_implemented=REASON,
        )
    ]
