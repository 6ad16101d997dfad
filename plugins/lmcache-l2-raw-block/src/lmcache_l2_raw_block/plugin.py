"""Registers the L2 adapter ``raw_block`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_raw_block.config import RawBlockAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: RawBlockAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_raw_block.adapter import build_raw_block

    return build_raw_block(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[RawBlockAdapterConfig]]:
    """Register the L2 adapter ``raw_block``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="raw_block",
            factory=_build,
            config_model=RawBlockAdapterConfig,
            description="Fixed slots on a raw block device, with a checkpointed index.",
        )
    ]
