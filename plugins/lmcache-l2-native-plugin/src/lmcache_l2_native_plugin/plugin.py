"""Registers the L2 adapter ``native_plugin`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_native_plugin.config import NativePluginAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: NativePluginAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_native_plugin.adapter import build_native_plugin

    return build_native_plugin(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[NativePluginAdapterConfig]]:
    """Register the L2 adapter ``native_plugin``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="native_plugin",
            factory=_build,
            config_model=NativePluginAdapterConfig,
            description="A third-party native client loaded by module path (native bridge).",
        )
    ]
