"""Registers the L2 adapter ``resp`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_resp.config import RespAdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``resp``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="resp",
            factory=pending_factory("L2 adapter 'resp'", REASON),
            config_model=RespAdapterConfig,
            description="Redis or Valkey over the RESP protocol.",
            not_implemented=REASON,
        )
    ]
