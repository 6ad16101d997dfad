"""Registers the engine ``default`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EngineSpec, hookimpl, pending_factory

REASON = "lands with the data-path issue (#3)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_engines() -> list[EngineSpec]:
    """Register the engine ``default``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        EngineSpec(
            name="default",
            factory=pending_factory("engine 'default'", REASON),
            description="Prefix caching: lookup, prefetch, store and retrieve of full chunks.",
            not_implemented=REASON,
        )
    ]
