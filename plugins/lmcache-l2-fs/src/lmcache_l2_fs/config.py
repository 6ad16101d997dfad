"""Configuration of the ``fs`` L2 adapter (one file per key under a directory)."""

from __future__ import annotations

from pathlib import PurePath

from pydantic import Field, field_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase
from lmcache_core.storage.l2.disk_limits import DiskLimitsConfig


class FSAdapterConfig(L2AdapterConfigBase, DiskLimitsConfig):
    """The ``--l2-adapter`` JSON of ``{"type": "fs", ...}``."""

    base_path: str = Field(
        min_length=1, description="Directory that holds one file per stored key (required)."
    )
    relative_tmp_dir: str = Field(
        default="",
        description=(
            "Directory, relative to base_path and on the same file system, for files being "
            "written; empty writes '<file>.tmp.<random>' next to the final file. Files are "
            "renamed into place when complete."
        ),
    )
    read_ahead_size: int | None = Field(
        default=None, gt=0, description="Read-ahead size in bytes for loads; unset keeps the OS's."
    )
    use_odirect: bool = Field(
        default=False,
        description=(
            "Write with O_DIRECT (bypassing the page cache) when an object's size is a multiple "
            "of the file system's block size and its buffers are block-aligned; buffered I/O "
            "otherwise, or when the file system refuses O_DIRECT."
        ),
    )
    max_capacity_gb: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description=(
            "Capacity in GiB, reported in usage and enforced by an eviction block (a single "
            "larger object is refused); 0 means unlimited."
        ),
    )

    @field_validator("relative_tmp_dir")
    @classmethod
    def _relative(cls, value: str) -> str:
        if PurePath(value).is_absolute():
            raise ValueError("relative_tmp_dir must be relative to base_path")
        return value
