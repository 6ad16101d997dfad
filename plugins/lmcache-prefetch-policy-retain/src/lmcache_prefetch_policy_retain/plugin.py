"""Registers the L2 prefetch policy ``retain`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import PrefetchPolicySpec, hookimpl, pending_factory

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_prefetch_policies() -> list[PrefetchPolicySpec]:
    """Register the L2 prefetch policy ``retain``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        PrefetchPolicySpec(
            name="retain",
            factory=pending_factory("L2 prefetch policy 'retain'", REASON),
            description="Loads L2 hits into L1 and keeps them resident.",
            not_implemented=REASON,
        )
    ]
