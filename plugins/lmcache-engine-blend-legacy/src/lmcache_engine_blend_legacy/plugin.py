"""Registers the engine ``blend_legacy`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import EngineSpec, hookimpl

if TYPE_CHECKING:
    from lmcache_core.engine import Engine, EngineContext


def _build(context: EngineContext) -> Engine:
    # Imported on use: registering the plugin must not load torch and the engine.
    from lmcache_engine_blend_legacy.engine import build_engine

    return build_engine(context)


@hookimpl
def lmcache_register_engines() -> list[EngineSpec]:
    """Register the engine ``blend_legacy``.

    Returns:
        Its one spec.
    """
    return [
        EngineSpec(
            name="blend_legacy",
            factory=_build,
            transfer_modes=frozenset({"lmcache_driven", "auto"}),
            description=(
                "The original CacheBlend (V1/V2) over a contiguous [2, L, T, D] KV buffer "
                "(cpu_shm), beside the default engine's operations."
            ),
        )
    ]
