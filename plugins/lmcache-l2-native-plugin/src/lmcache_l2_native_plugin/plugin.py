"""Registers the L2 adapter ``native_plugin`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_native_plugin.config import NativePluginAdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``native_plugin``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="native_plugin",
            factory=pending_factory("L2 adapter 'native_plugin'", REASON),
            config_model=NativePluginAdapterConfig,
            description="A third-party native client loaded by module path (native bridge).",
            not_implemented=REASON,
        )
    ]
