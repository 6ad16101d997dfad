"""Registers the eviction policy ``LRU`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl, pending_factory

REASON = "lands with the data-path issue (#3)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``LRU``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        EvictionPolicySpec(
            name="LRU",
            factory=pending_factory("eviction policy 'LRU'", REASON),
            description="LRU eviction that keeps prefixes: later chunks of a request go first.",
            not_implemented=REASON,
        )
    ]
