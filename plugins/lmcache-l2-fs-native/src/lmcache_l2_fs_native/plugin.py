"""Registers the L2 adapter ``fs_native`` with the LMCache server.

The configuration model is complete, but this build has no binding to the library
the adapter drives: it is listed as not implemented, with a reason that says
whether the library is installed (see :mod:`lmcache_core.storage.l2.unavailable`).
"""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.unavailable import NativeDependency, unavailable_adapter_spec
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

DEPENDENCY = NativeDependency(
    module="lmcache",
    what="upstream LMCache's native file-system client (module 'lmcache.lmcache_fs')",
    install="pip install lmcache",
    alternative='the pure-Python "fs" adapter uses the same file names',
)
"""The library a binding would use; whether it is installed shapes the start-up error."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``fs_native``.

    Returns:
        Its one spec, marked not implemented; building it raises with the reason.
    """
    return [
        unavailable_adapter_spec(
            "fs_native",
            config_model=FSNativeAdapterConfig,
            description="One file per key, through LMCache's native C++ file-system client.",
            dependency=DEPENDENCY,
        )
    ]
