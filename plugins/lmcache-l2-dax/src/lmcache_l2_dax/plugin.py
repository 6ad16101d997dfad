"""Registers the L2 adapter ``dax`` with the LMCache server."""

from __future__ import annotations

from typing import Any

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_l2_dax.config import DaxAdapterConfig


def _build(config: DaxAdapterConfig, context: Any = None) -> Any:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_dax.adapter import build_dax

    return build_dax(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
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
