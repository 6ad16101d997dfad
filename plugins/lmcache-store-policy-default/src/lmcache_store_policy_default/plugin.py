"""Registers the L2 store policy ``default`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import StorePolicySpec, hookimpl, pending_factory

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_store_policies() -> list[StorePolicySpec]:
    """Register the L2 store policy ``default``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        StorePolicySpec(
            name="default",
            factory=pending_factory("L2 store policy 'default'", REASON),
            description="Stores every new key to every live L2 adapter and keeps it in L1.",
            not_implemented=REASON,
        )
    ]
