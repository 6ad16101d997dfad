"""Registers the engine ``blend`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EngineSpec, hookimpl, pending_factory

REASON = "CacheBlend V3 is not scheduled yet; use --engine-type default"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_engines() -> list[EngineSpec]:
    """Register the engine ``blend``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        EngineSpec(
            name="blend",
            factory=pending_factory("engine 'blend'", REASON),
            transfer_modes=frozenset({"lmcache_driven", "auto"}),
            description="CacheBlend V3: reuses cached KV chunks at any offset of a new prompt.",
            not_implemented=REASON,
        )
    ]
