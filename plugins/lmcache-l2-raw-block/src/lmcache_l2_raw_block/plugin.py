"""Registers the L2 adapter ``raw_block`` with the LMCache server."""

from __future__ import annotations

from typing import Any

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_l2_raw_block.config import RawBlockAdapterConfig


def _build(config: RawBlockAdapterConfig, context: Any = None) -> Any:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_raw_block.adapter import build_raw_block

    return build_raw_block(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
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
