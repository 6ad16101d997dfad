"""Configuration of the ``native_plugin`` L2 adapter (a native client loaded by path)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lmcache_core.config.l2_adapter import L2AdapterConfigBase
from lmcache_core.storage.l2.loading import IDENTIFIER_PATTERN, MODULE_PATTERN


class NativePluginAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "native_plugin", ...}``.

    The named class is imported from a module on ``PYTHONPATH``, constructed as
    ``class_name(**adapter_params)`` and wrapped by the native-connector bridge.
    """

    module_path: str = Field(
        pattern=MODULE_PATTERN, description="Dotted path of the module to import (required)."
    )
    class_name: str = Field(
        pattern=IDENTIFIER_PATTERN, description="Native client class in that module (required)."
    )
    adapter_params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the client's constructor."
    )
    max_capacity_gb: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description=(
            "Capacity in GiB: a store that does not fit fails, and an eviction block makes "
            "room; 0 means unlimited."
        ),
    )
