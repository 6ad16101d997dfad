"""Configuration of the ``nixl_store`` L2 adapter (a pre-allocated pool moved by NIXL)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase
from lmcache_l2_nixl_store.params import (
    DEFAULT_TRANSFER_TIMEOUT_S,
    FILE_BACKENDS,
    TransferTimeoutS,
    check_flag,
)

NixlBackend = Literal["GDS", "GDS_MT", "POSIX", "HF3FS", "OBJ"]
"""The NIXL storage back ends the adapter can use."""


class NixlStoreAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "nixl_store", ...}``.

    The adapter pre-allocates ``pool_size`` files (or objects), splits them into
    pages and moves data by DMA through NIXL. File back ends need ``file_path``
    and ``use_direct_io`` in ``backend_params`` (as upstream requires); every
    other key is handed to NIXL's ``createBackend`` as given (the OBJ back end's
    ``bucket``, ``endpoint_override``, ...).
    """

    backend: NixlBackend = Field(
        description="NIXL back end: GDS, GDS_MT, POSIX, HF3FS or OBJ (required)."
    )
    backend_params: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Back-end options as strings: file_path (directory of the pool) and use_direct_io "
            "('true' or 'false'), both required by file back ends; file_size (bytes per file, "
            "a multiple of the L1 page --l1-align-bytes; default one page); the rest go to "
            "NIXL's createBackend."
        ),
    )
    pool_size: int = Field(gt=0, description="Number of pool files (or objects) (required).")
    transfer_timeout_s: TransferTimeoutS = DEFAULT_TRANSFER_TIMEOUT_S

    @model_validator(mode="after")
    def _backend_params(self) -> NixlStoreAdapterConfig:
        params = self.backend_params
        if self.backend in FILE_BACKENDS:
            for key in ("file_path", "use_direct_io"):
                if key not in params:
                    raise ValueError(f"backend_params must include {key!r} for {self.backend}")
            if not params["file_path"]:
                raise ValueError("backend_params file_path must not be empty")
            check_flag(params, "use_direct_io")
        if "file_size" in params:
            size = params["file_size"].strip()
            if not size.isdigit() or int(size) <= 0:
                raise ValueError(
                    f"backend_params file_size must be a positive integer, not {size!r}"
                )
        return self
