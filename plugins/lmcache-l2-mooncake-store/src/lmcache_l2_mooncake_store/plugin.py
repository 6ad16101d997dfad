"""Registers the L2 adapter ``mooncake_store`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig

REASON = (
    "needs the Mooncake transfer engine (Python package 'mooncake-transfer-engine'), which is"
    " not available here; scheduled with the L2 issue (#4)"
)
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``mooncake_store``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="mooncake_store",
            factory=pending_factory("L2 adapter 'mooncake_store'", REASON),
            config_model=MooncakeStoreAdapterConfig,
            description="A Mooncake distributed KV store.",
            not_implemented=REASON,
        )
    ]
