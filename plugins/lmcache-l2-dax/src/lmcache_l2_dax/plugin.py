"""Registers the L2 adapter ``dax`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_dax.config import DaxAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: DaxAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_dax.adapter import build_dax

    return build_dax(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[DaxAdapterConfig]]:
    """Register the L2 adapter ``dax``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="dax",
            factory=_build,
            config_model=DaxAdapterConfig,
            description="Fixed slots in Device-DAX memory.",
        )
    ]
