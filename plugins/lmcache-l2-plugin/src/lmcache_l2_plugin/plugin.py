"""Registers the L2 adapter ``plugin`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_plugin.config import PluginAdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``plugin``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="plugin",
            factory=pending_factory("L2 adapter 'plugin'", REASON),
            config_model=PluginAdapterConfig,
            description="A third-party Python adapter class loaded by module path.",
            not_implemented=REASON,
        )
    ]
