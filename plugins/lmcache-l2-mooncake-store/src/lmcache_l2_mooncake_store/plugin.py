"""Registers the L2 adapter ``mooncake_store`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: MooncakeStoreAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin imports neither numpy nor Mooncake.
    from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter

    return MooncakeStoreAdapter(config, l1_region=context.l1_region)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[MooncakeStoreAdapterConfig]]:
    """Register the L2 adapter ``mooncake_store``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="mooncake_store",
            factory=_build,
            config_model=MooncakeStoreAdapterConfig,
            description="A Mooncake Store cluster (zero-copy batches from the L1 arena).",
        )
    ]
