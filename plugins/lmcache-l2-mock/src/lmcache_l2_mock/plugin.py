"""Registers the L2 adapter ``mock`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_mock.config import MockAdapterConfig

REASON = (
    "the adapter is built and tested; the L2 store and prefetch controllers that use it "
    "land with the rest of issue #4"
)
"""Why the server cannot use it yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``mock``.

    The adapter itself is :class:`lmcache_l2_mock.adapter.MockL2Adapter` (built by
    :func:`lmcache_l2_mock.adapter.build_mock`). The spec stays pending until the
    controllers that drive adapters exist, so that a server never accepts
    ``--l2-adapter mock`` and then ignores it.

    Returns:
        Its one spec; building it through the registry raises until then.
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
