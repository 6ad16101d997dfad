"""Registers the L2 adapter ``nixl_store`` with the LMCache server.

The adapter needs NIXL (``pip install --no-deps nixl==1.5.1 nixl-cu12==1.5.1 numpy``);
without it, or with a back end this NIXL build cannot create, start-up fails with
one line naming what is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_nixl_store.config import NixlStoreAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: NixlStoreAdapterConfig,
    context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT,
) -> L2AdapterV1:
    # Imported on use: registering the plugin imports no NIXL.
    from lmcache_l2_nixl_store.adapter import build_nixl_store

    return build_nixl_store(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[NixlStoreAdapterConfig]]:
    """Register the L2 adapter ``nixl_store``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="nixl_store",
            factory=_build,
            config_model=NixlStoreAdapterConfig,
            description="A pre-allocated pool of files or objects written by DMA through NIXL.",
        )
    ]
