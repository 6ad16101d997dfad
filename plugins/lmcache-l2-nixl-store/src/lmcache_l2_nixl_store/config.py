"""Configuration of the ``nixl_store`` L2 adapter (a pre-allocated pool moved by NIXL)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmcache_core.config.l2_adapter import L2AdapterConfigBase

NixlBackend = Literal["GDS", "GDS_MT", "POSIX", "HF3FS", "OBJ"]
"""The NIXL storage back ends the adapter can use."""


class NixlStoreAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "nixl_store", ...}``.

    The adapter pre-allocates ``pool_size`` files (or objects), splits them into
    pages and moves data by DMA from the registered L1 region through NIXL.
    """

    backend: NixlBackend = Field(
        description="NIXL back end: GDS, GDS_MT, POSIX, HF3FS or OBJ (required)."
    )
    backend_params: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Back-end options as strings: file_path (directory of the pool), use_direct_io "
            "('true' or 'false'), file_size (bytes per file; defaults to the L1 alignment)."
        ),
    )
    pool_size: int = Field(gt=0, description="Number of pool files (or objects) (required).")
