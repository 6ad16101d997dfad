"""Registers the L2 store policy ``frequency`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import StorePolicySpec, hookimpl
from lmcache_store_policy_frequency.policy import build_policy


@hookimpl
def lmcache_register_store_policies() -> list[StorePolicySpec]:
    """Register ``frequency``.

    Returns:
        Its one spec.
    """
    return [
        StorePolicySpec(
            name="frequency",
            factory=build_policy,
            description=(
                "Frequency admission: store a chunk to L2 only at its N-th store into L1 "
                "(LMCACHE_L2_STORE_FREQUENCY_THRESHOLD, default 2)."
            ),
        )
    ]
