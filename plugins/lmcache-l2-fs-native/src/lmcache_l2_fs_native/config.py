"""Configuration of the ``fs_native`` L2 adapter (the C++ file-system client)."""

from __future__ import annotations

from pathlib import PurePath

from pydantic import Field, field_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase


class FSNativeAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "fs_native", ...}``."""

    base_path: str = Field(
        min_length=1, description="Directory that holds one file per stored key (required)."
    )
    num_workers: int = Field(default=4, gt=0, description="I/O worker threads of the C++ client.")
    relative_tmp_dir: str = Field(
        default="",
        description=(
            "Directory, relative to base_path, for files being written; empty writes "
            "'<file>.tmp' next to the final file."
        ),
    )
    use_odirect: bool = Field(
        default=False,
        description="Bypass the page cache with O_DIRECT (files are padded to the block size).",
    )
    read_ahead_size: int | None = Field(
        default=None, gt=0, description="Read-ahead size in bytes for loads; unset keeps the OS's."
    )
    max_capacity_gb: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Capacity in GiB for eviction (set an eviction block too); 0 means unlimited.",
    )

    @field_validator("relative_tmp_dir")
    @classmethod
    def _relative(cls, value: str) -> str:
        if PurePath(value).is_absolute():
            raise ValueError("relative_tmp_dir must be relative to base_path")
        return value
