"""Registers the L2 adapter ``dax`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_dax.config import DaxAdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``dax``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="dax",
            factory=pending_factory("L2 adapter 'dax'", REASON),
            config_model=DaxAdapterConfig,
            description="Fixed slots in Device-DAX memory.",
            not_implemented=REASON,
        )
    ]
