"""Registers the engine ``blend_legacy`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EngineSpec, hookimpl, pending_factory

REASON = "the original CacheBlend is not scheduled yet; use --engine-type default"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_engines() -> list[EngineSpec]:
    """Register the engine ``blend_legacy``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        EngineSpec(
            name="blend_legacy",
            factory=pending_factory("engine 'blend_legacy'", REASON),
            transfer_modes=frozenset({"lmcache_driven", "auto"}),
            description="The original CacheBlend (V1/V2) over a contiguous KV buffer.",
            not_implemented=REASON,
        )
    ]
