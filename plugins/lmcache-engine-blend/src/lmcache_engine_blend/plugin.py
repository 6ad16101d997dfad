"""Registers the engine ``blend`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import EngineSpec, hookimpl
from lmcache_engine_blend.settings import BlendEngineSettings

if TYPE_CHECKING:
    from lmcache_core.engine import Engine, EngineContext


def _build(context: EngineContext) -> Engine:
    # Imported on use: registering the plugin must not load torch and the engine.
    from lmcache_engine_blend.engine import build_engine

    return build_engine(context)


@hookimpl
def lmcache_register_engines() -> list[EngineSpec]:
    """Register the engine ``blend``.

    Returns:
        Its one spec.
    """
    return [
        EngineSpec(
            name="blend",
            factory=_build,
            config_model=BlendEngineSettings,
            transfer_modes=frozenset({"lmcache_driven", "auto"}),
            description="CacheBlend V3: reuses cached KV chunks at any offset of a new prompt.",
        )
    ]
