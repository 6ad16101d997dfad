"""The L1 flag groups: memory manager, GDS L1 tier, and L1 lock TTLs."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from lmcache_core.config.base import CliMeta, GroupSettings


class L1MemoryConfig(GroupSettings):
    """Size, allocation and alignment of the L1 host-memory tier."""

    panel: ClassVar[str] = "L1 Memory Manager"
    source: ClassVar[str] = "lmcache/v1/distributed/config.py"
    summary: ClassVar[str] = "The L1 tier: host memory (pinned, or shared on CPU-only hosts)."

    l1_size_gb: Annotated[float, CliMeta(default_text="required")] = Field(
        gt=0,
        description=(
            "Size of the L1 tier in GB. Sizes the pinned-DRAM L1 by default, or the GDS slab "
            "file when --gds-l1-path is set."
        ),
    )
    l1_use_lazy: Annotated[bool, CliMeta(negatable=True)] = Field(
        default=True,
        description=(
            "Lazy allocation of L1 memory: pin --l1-init-size-gb at start and the rest in the "
            "background (CUDA hosts). Falls back to eager allocation, with a warning, where "
            "lazy pinning is unsupported (no CUDA)."
        ),
    )
    l1_init_size_gb: float = Field(
        default=20.0,
        gt=0,
        description="Initial allocation size (GB) with lazy allocation; clamped to --l1-size-gb.",
    )
    l1_align_bytes: int = Field(
        default=4096, ge=1, description="Alignment in bytes of the buffer and of every object."
    )
    l1_devdax_path: Annotated[str | None, CliMeta(metavar="PATH")] = Field(
        default=None,
        description=(
            "Optional /dev/dax* device or mmap-able file backing the L1 arena. Needs "
            '--no-l1-use-lazy and --shm-name "". A dax --l2-adapter with the same '
            "device_path lends its max_dax_size_gb as L1 overflow after --l1-size-gb of DRAM."
        ),
    )

    @field_validator("l1_align_bytes")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two")
        return value


class GDSL1Config(GroupSettings):
    """The opt-in GPUDirect Storage L1 tier (an NVMe slab file)."""

    panel: ClassVar[str] = "GDS L1 Tier"
    source: ClassVar[str] = "lmcache/v1/distributed/config.py"
    summary: ClassVar[str] = (
        "Opt-in. Setting --gds-l1-path switches the L1 medium from pinned DRAM to an NVMe slab "
        "file accessed via GPUDirect Storage; --l1-size-gb then sizes the slab."
    )

    gds_l1_path: Annotated[str | None, CliMeta(metavar="DIR")] = Field(
        default=None,
        description=(
            "NVMe directory for the GDS L1 slab (<path>/lmcache_gds_slab.bin). Setting it enables "
            "the GDS L1 tier."
        ),
    )
    gds_l1_use_direct_io: Annotated[bool, CliMeta(negatable=True)] = Field(
        default=True, description="Open the slab with O_DIRECT (needed for GDS DMA on ext4)."
    )


class L1TTLConfig(GroupSettings):
    """Lifetimes of L1 write reservations and read locks."""

    panel: ClassVar[str] = "L1 Manager TTLs"
    source: ClassVar[str] = "lmcache/v1/distributed/config.py"
    summary: ClassVar[str] = "How long an unreleased L1 lock may live before it expires."

    l1_write_ttl_seconds: float = Field(
        default=600.0, gt=0, description="Time-to-live of each object's write lock (seconds)."
    )
    l1_read_ttl_seconds: float = Field(
        default=300.0, gt=0, description="Time-to-live of each object's read lock (seconds)."
    )
