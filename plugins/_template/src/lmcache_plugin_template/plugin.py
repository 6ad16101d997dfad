"""Registers the eviction policy ``example_fifo`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import EvictionPolicySpec, hookimpl
from lmcache_plugin_template.policy import build_fifo_policy


@hookimpl
def lmcache_register_eviction_policies() -> list[EvictionPolicySpec]:
    """Register the eviction policy ``example_fifo``.

    Returns:
        Its one spec.
    """
    return [
        EvictionPolicySpec(
            name="example_fifo",
            factory=build_fifo_policy,
            description="Example policy: evicts the oldest inserted key first.",
        )
    ]
