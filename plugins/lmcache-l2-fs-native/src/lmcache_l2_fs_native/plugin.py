"""Registers the L2 adapter ``fs_native`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: FSNativeAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_fs_native.adapter import build_fs_native

    return build_fs_native(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[FSNativeAdapterConfig]]:
    """Register the L2 adapter ``fs_native``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="fs_native",
            factory=_build,
            config_model=FSNativeAdapterConfig,
            description=(
                "One file per key, upstream's native file-system client semantics: batches on "
                "a thread pool completing on an eventfd, tmp-then-rename, optional O_DIRECT."
            ),
        )
    ]
