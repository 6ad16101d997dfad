"""Registers the L2 adapter ``aerospike`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_aerospike.config import AerospikeAdapterConfig

REASON = (
    "needs the Aerospike client (Python package 'aerospike'), which is not available here; "
    "scheduled with the L2 issue (#4)"
)
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``aerospike``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="aerospike",
            factory=pending_factory("L2 adapter 'aerospike'", REASON),
            config_model=AerospikeAdapterConfig,
            description="An Aerospike cluster through the native connector.",
            not_implemented=REASON,
        )
    ]
