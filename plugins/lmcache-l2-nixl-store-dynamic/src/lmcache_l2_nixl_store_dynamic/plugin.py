"""Registers the L2 adapter ``nixl_store_dynamic`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_nixl_store_dynamic.config import NixlStoreDynamicAdapterConfig

REASON = (
    "needs the NIXL library (Python package 'nixl'), which is not available here; scheduled "
    "with the L2 issue (#4)"
)
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``nixl_store_dynamic``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="nixl_store_dynamic",
            factory=pending_factory("L2 adapter 'nixl_store_dynamic'", REASON),
            config_model=NixlStoreDynamicAdapterConfig,
            description="One file per key written by DMA through NIXL.",
            not_implemented=REASON,
        )
    ]
