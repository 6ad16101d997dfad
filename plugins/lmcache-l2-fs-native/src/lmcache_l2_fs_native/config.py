"""Configuration of the ``fs_native`` L2 adapter (upstream's native file-system client)."""

from __future__ import annotations

from pathlib import PurePath

from pydantic import Field, field_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase
from lmcache_core.storage.l2.disk_limits import DiskLimitsConfig


class FSNativeAdapterConfig(L2AdapterConfigBase, DiskLimitsConfig):
    """The ``--l2-adapter`` JSON of ``{"type": "fs_native", ...}``."""

    base_path: str = Field(
        min_length=1, description="Directory that holds one file per stored key (required)."
    )
    num_workers: int = Field(
        default=4, gt=0, description="Threads doing the file I/O (os.pwritev / os.preadv)."
    )
    relative_tmp_dir: str = Field(
        default="",
        description=(
            "Directory, relative to base_path and on the same file system, for files being "
            "written; empty writes '<file>.tmp.<random>' next to the final file. Files are "
            "renamed into place when complete."
        ),
    )
    use_odirect: bool = Field(
        default=False,
        description=(
            "Bypass the page cache with O_DIRECT on every read and write; buffers not aligned "
            "to the file system's block go through an aligned bounce buffer. A file system "
            "that refuses O_DIRECT (tmpfs) is used buffered."
        ),
    )
    read_ahead_size: int | None = Field(
        default=None,
        gt=0,
        description="Read-ahead size in bytes for buffered loads; unset keeps the OS's.",
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
