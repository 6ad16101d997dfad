"""Registers the L2 store policy ``default`` with the LMCache server."""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_core.plugin import StorePolicySpec, hookimpl


class StoreToEveryAdapter:
    """Every new key goes to every adapter; L1 keeps it."""

    keep_in_l1 = True

    def targets(self, adapter_count: int) -> Sequence[int]:
        """Every adapter, in cascade order."""
        return range(adapter_count)


@hookimpl
def lmcache_register_store_policies() -> list[StorePolicySpec]:
    """Register the L2 store policy ``default``.

    Returns:
        Its one spec.
    """
    return [
        StorePolicySpec(
            name="default",
            factory=StoreToEveryAdapter,
            description="Stores every new key to every live L2 adapter and keeps it in L1.",
        )
    ]
