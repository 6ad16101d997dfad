"""Registers the L2 adapter ``resp`` with the LMCache server."""

from __future__ import annotations

from typing import Any

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_l2_resp.config import RespAdapterConfig


def _build(config: RespAdapterConfig, context: Any = None) -> Any:
    # Imported on use: registering the plugin does not import the Redis client.
    from lmcache_l2_resp.adapter import build_resp

    return build_resp(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``resp``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="resp",
            factory=_build,
            config_model=RespAdapterConfig,
            description="Redis or Valkey over the RESP protocol.",
        )
    ]
