"""Registers the L2 adapter ``nixl_store_dynamic`` with the LMCache server.

The adapter needs NIXL (``pip install --no-deps nixl==1.5.1 nixl-cu12==1.5.1 numpy``);
without it, or with a back end this NIXL build cannot create, start-up fails with
one line naming what is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_nixl_store_dynamic.config import NixlStoreDynamicAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: NixlStoreDynamicAdapterConfig,
    context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT,
) -> L2AdapterV1:
    # Imported on use: registering the plugin imports no NIXL.
    from lmcache_l2_nixl_store_dynamic.adapter import build_nixl_store_dynamic

    return build_nixl_store_dynamic(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[NixlStoreDynamicAdapterConfig]]:
    """Register the L2 adapter ``nixl_store_dynamic``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="nixl_store_dynamic",
            factory=_build,
            config_model=NixlStoreDynamicAdapterConfig,
            description="One file per key written by DMA through NIXL.",
        )
    ]
