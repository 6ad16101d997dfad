"""Registers the L2 adapter ``fs_native`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

REASON = (
    "needs LMCache's native C++ file-system client (lmcache_native), which is not available "
    "here; scheduled with the L2 issue (#4)"
)
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``fs_native``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="fs_native",
            factory=pending_factory("L2 adapter 'fs_native'", REASON),
            config_model=FSNativeAdapterConfig,
            description="One file per key, through LMCache's native C++ file-system client.",
            not_implemented=REASON,
        )
    ]
