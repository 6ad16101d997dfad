"""Registers the engine ``default`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import EngineSpec, hookimpl
from lmcache_engine_default.settings import DefaultEngineSettings

if TYPE_CHECKING:
    from lmcache_core.engine import Engine, EngineContext


def _build(context: EngineContext) -> Engine:
    # Imported on use: registering the plugin must not load torch and the engine.
    from lmcache_engine_default.engine import build_engine

    return build_engine(context)


@hookimpl
def lmcache_register_engines() -> list[EngineSpec]:
    """Register the engine ``default``.

    Returns:
        Its one spec.
    """
    return [
        EngineSpec(
            name="default",
            factory=_build,
            config_model=DefaultEngineSettings,
            description="Prefix caching: lookup, prefetch, store and retrieve of full chunks.",
        )
    ]
