"""Registers the L2 adapter ``raw_block`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_raw_block.config import RawBlockAdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``raw_block``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="raw_block",
            factory=pending_factory("L2 adapter 'raw_block'", REASON),
            config_model=RawBlockAdapterConfig,
            description="Fixed slots on a raw block device, with a checkpointed index.",
            not_implemented=REASON,
        )
    ]
