"""Registers the L2 adapter ``fs`` with the LMCache server."""

from __future__ import annotations

from typing import Any

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_l2_fs.config import FSAdapterConfig


def _build(config: FSAdapterConfig, context: Any = None) -> Any:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_fs.adapter import build_fs

    return build_fs(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
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
