"""Registers the L2 adapter ``resp`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_resp.config import RespAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: RespAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin does not import the Redis client.
    from lmcache_l2_resp.adapter import build_resp

    return build_resp(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[RespAdapterConfig]]:
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
