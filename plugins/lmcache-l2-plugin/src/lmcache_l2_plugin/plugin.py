"""Registers the L2 adapter ``plugin`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_plugin.config import PluginAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: PluginAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    from lmcache_l2_plugin.adapter import build_plugin

    return build_plugin(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[PluginAdapterConfig]]:
    """Register the L2 adapter ``plugin``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="plugin",
            factory=_build,
            config_model=PluginAdapterConfig,
            description="A third-party Python adapter class loaded by module path.",
        )
    ]
