"""Configuration of the ``nixl_store_dynamic`` L2 adapter (one file per key, via NIXL)."""

from __future__ import annotations

import math
from typing import Literal

from lmcache_l2_nixl_store.params import (
    DEFAULT_TRANSFER_TIMEOUT_S,
    TransferTimeoutS,
    check_flag,
)
from pydantic import Field, field_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase

NixlFileBackend = Literal["GDS", "GDS_MT", "POSIX", "HF3FS"]
"""The NIXL file back ends (object storage is not supported by this adapter)."""

REQUIRED_BACKEND_PARAMS = ("file_path", "use_direct_io", "max_capacity_gb")
"""Keys that ``backend_params`` must contain."""


class NixlStoreDynamicAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "nixl_store_dynamic", ...}``."""

    backend: NixlFileBackend = Field(
        description="NIXL file back end: GDS, GDS_MT, POSIX or HF3FS (required)."
    )
    backend_params: dict[str, str] = Field(
        description=(
            "Back-end options as strings (required): file_path (directory of the files), "
            "use_direct_io ('true' or 'false') and max_capacity_gb (a positive number)."
        ),
    )

    transfer_timeout_s: TransferTimeoutS = DEFAULT_TRANSFER_TIMEOUT_S

    @field_validator("backend", mode="before")
    @classmethod
    def _no_object_store(cls, value: object) -> object:
        if value == "OBJ":
            # Upstream's dynamic adapter refuses it too. One object per key would need
            # what NIXL's OBJ back end lacks: listing (to rebuild the index at start)
            # and deleting (to free space on eviction).
            raise ValueError(
                "OBJ is not supported by nixl_store_dynamic (NIXL cannot list or delete "
                "objects, so the index could not be rebuilt nor space freed); use "
                "nixl_store with backend OBJ, or the s3 adapter"
            )
        return value

    @field_validator("backend_params")
    @classmethod
    def _required_params(cls, params: dict[str, str]) -> dict[str, str]:
        missing = [key for key in REQUIRED_BACKEND_PARAMS if key not in params]
        if missing:
            raise ValueError(f"backend_params is missing {', '.join(missing)}")
        if not params["file_path"]:
            raise ValueError("backend_params file_path must not be empty")
        check_flag(params, "use_direct_io")
        try:
            capacity = float(params["max_capacity_gb"])
        except ValueError:
            capacity = math.nan
        if not (math.isfinite(capacity) and capacity > 0):
            raise ValueError("backend_params max_capacity_gb must be a positive number")
        return params
