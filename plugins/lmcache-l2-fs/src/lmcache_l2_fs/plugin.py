"""Registers the L2 adapter ``fs`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_fs.config import FSAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: FSAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_fs.adapter import build_fs

    return build_fs(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[FSAdapterConfig]]:
    """Register the L2 adapter ``fs``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="fs",
            factory=_build,
            config_model=FSAdapterConfig,
            description="One file per key under a local or mounted directory.",
        )
    ]
