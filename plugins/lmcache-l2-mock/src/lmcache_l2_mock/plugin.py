"""Registers the L2 adapter ``mock`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_mock.config import MockAdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: MockAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_mock.adapter import build_mock

    return build_mock(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[MockAdapterConfig]]:
    """Register the L2 adapter ``mock``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="mock",
            factory=_build,
            config_model=MockAdapterConfig,
            description="In-memory store with simulated bandwidth and fault injection, for tests.",
        )
    ]
