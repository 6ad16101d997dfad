"""Registers the L2 adapter ``mooncake_store`` with the LMCache server.

The configuration model is complete, but this build has no binding to the library
the adapter drives: it is listed as not implemented, with a reason that says
whether the library is installed (see :mod:`lmcache_core.storage.l2.unavailable`).
"""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.unavailable import NativeDependency, unavailable_adapter_spec
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig

DEPENDENCY = NativeDependency(
    module="mooncake",
    what="the Mooncake transfer engine (Python package 'mooncake-transfer-engine')",
    install="pip install mooncake-transfer-engine",
)
"""The library a binding would use; whether it is installed shapes the start-up error."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``mooncake_store``.

    Returns:
        Its one spec, marked not implemented; building it raises with the reason.
    """
    return [
        unavailable_adapter_spec(
            "mooncake_store",
            config_model=MooncakeStoreAdapterConfig,
            description="A Mooncake distributed KV store.",
            dependency=DEPENDENCY,
        )
    ]
