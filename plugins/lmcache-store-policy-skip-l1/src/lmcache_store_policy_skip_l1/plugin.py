"""Registers the L2 store policy ``skip_l1`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import StorePolicySpec, hookimpl, pending_factory

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_store_policies() -> list[StorePolicySpec]:
    """Register the L2 store policy ``skip_l1``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        StorePolicySpec(
            name="skip_l1",
            factory=pending_factory("L2 store policy 'skip_l1'", REASON),
            description="Stores every new key to every L2 adapter, then frees it from L1.",
            not_implemented=REASON,
        )
    ]
