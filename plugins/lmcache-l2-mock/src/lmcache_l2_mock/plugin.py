"""Registers the L2 adapter ``mock`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_mock.config import MockAdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``mock``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="mock",
            factory=pending_factory("L2 adapter 'mock'", REASON),
            config_model=MockAdapterConfig,
            description="In-memory store with simulated bandwidth and fault injection, for tests.",
            not_implemented=REASON,
        )
    ]
