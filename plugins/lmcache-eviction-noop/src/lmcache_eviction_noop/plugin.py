"""Registers the eviction policy ``noop`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl, pending_factory

REASON = "lands with the data-path issue (#3)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``noop``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        EvictionPolicySpec(
            name="noop",
            factory=pending_factory("eviction policy 'noop'", REASON),
            description="Tracks nothing and never evicts; pair it with the skip_l1 store policy.",
            not_implemented=REASON,
        )
    ]
