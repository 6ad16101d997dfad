"""Registers the L2 adapter ``fault_inject`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_fault_inject.config import FaultInjectConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: FaultInjectConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin stays cheap.
    from lmcache_l2_fault_inject.adapter import build_fault_inject

    return build_fault_inject(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[FaultInjectConfig]]:
    """Register the L2 adapter ``fault_inject``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="fault_inject",
            factory=_build,
            config_model=FaultInjectConfig,
            description=(
                "Wraps another adapter and fails chosen loads on purpose (tests of "
                "gapped prefixes; not for production)."
            ),
        )
    ]
