"""Registers the L2 adapter ``fs`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_fs.config import FSAdapterConfig

REASON = (
    "the adapter is built and tested; the L2 store and prefetch controllers that use it "
    "land with the rest of issue #4"
)
"""Why the server cannot build it yet (:func:`lmcache_l2_fs.adapter.build_fs` can)."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``fs``.

    Returns:
        Its one spec. Building it through the registry raises until the controllers
        that use adapters land, so a server never accepts ``--l2-adapter fs`` and then
        ignores it; :func:`lmcache_l2_fs.adapter.build_fs` builds the adapter itself.
    """
    return [
        L2AdapterSpec(
            name="fs",
            factory=pending_factory("L2 adapter 'fs'", REASON),
            config_model=FSAdapterConfig,
            description="One file per key under a local or mounted directory.",
            not_implemented=REASON,
        )
    ]
