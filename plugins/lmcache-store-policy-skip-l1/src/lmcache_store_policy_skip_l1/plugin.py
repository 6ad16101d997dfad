"""Registers the L2 store policy ``skip_l1`` with the LMCache server."""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_core.plugin import StorePolicySpec, hookimpl


class StoreToEveryAdapter:
    """Every new key goes to every adapter; L1 drops it once they all hold it (buffer mode)."""

    keep_in_l1 = False

    def targets(self, adapter_count: int) -> Sequence[int]:
        """Every adapter, in cascade order."""
        return range(adapter_count)


@hookimpl
def lmcache_register_store_policies() -> list[StorePolicySpec]:
    """Register the L2 store policy ``skip_l1``.

    Returns:
        Its one spec.
    """
    return [
        StorePolicySpec(
            name="skip_l1",
            factory=StoreToEveryAdapter,
            description="Stores every new key to every L2 adapter, then frees it from L1.",
        )
    ]
