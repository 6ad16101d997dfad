"""Configuration of the ``plugin`` L2 adapter (a Python adapter class loaded by path)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lmcache_core.config.l2_adapter import L2AdapterConfigBase
from lmcache_core.storage.l2.loading import IDENTIFIER_PATTERN, MODULE_PATTERN


class PluginAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "plugin", ...}``.

    The named class is imported from a module on ``PYTHONPATH`` and constructed
    from ``adapter_params``, validated by its configuration class when it has one.
    """

    module_path: str = Field(
        pattern=MODULE_PATTERN, description="Dotted path of the module to import (required)."
    )
    class_name: str = Field(
        pattern=IDENTIFIER_PATTERN, description="Adapter class in that module (required)."
    )
    adapter_params: dict[str, Any] = Field(
        default_factory=dict, description="Options passed to the adapter's configuration."
    )
    config_class_name: str | None = Field(
        default=None,
        pattern=IDENTIFIER_PATTERN,
        description=(
            "Configuration class in the module; unset tries '<class_name>Config', then the "
            "adapter class's config_class_name attribute."
        ),
    )
