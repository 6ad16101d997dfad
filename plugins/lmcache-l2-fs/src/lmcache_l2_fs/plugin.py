"""Registers the L2 adapter ``fs`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_fs.config import FSAdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``fs``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="fs",
            factory=pending_factory("L2 adapter 'fs'", REASON),
            config_model=FSAdapterConfig,
            description="One file per key under a local or mounted directory.",
            not_implemented=REASON,
        )
    ]
