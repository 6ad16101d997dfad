"""Configuration of the ``raw_block`` L2 adapter (fixed slots on a block device)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase

SLOT_HEADER_MIN_BYTES = 24
"""A slot header holds at least its magic, identity and payload length (8 bytes each)."""


class RawBlockAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "raw_block", ...}``.

    The device starts with a metadata area of ``meta_total_bytes`` (two mirrored
    index checkpoints); fixed data slots of ``slot_bytes`` follow, each starting
    with a ``header_bytes`` header.
    """

    device_path: str = Field(
        min_length=1, description="Block device or file to use, e.g. /dev/nvme1n1 (required)."
    )
    slot_bytes: int = Field(
        gt=0,
        description=(
            "Size of one data slot, header included; a multiple of block_align larger than "
            "header_bytes (required)."
        ),
    )
    capacity_bytes: int = Field(
        default=0, ge=0, description="Bytes of the device to use; 0 uses the whole device."
    )
    use_odirect: bool = Field(default=True, description="Open the device with O_DIRECT.")
    block_align: int = Field(
        default=4096, gt=0, description="I/O alignment in bytes; a power of two."
    )
    header_bytes: int = Field(
        default=4096,
        ge=SLOT_HEADER_MIN_BYTES,
        description="Size of each slot's header (magic, identity, payload length, padding).",
    )
    meta_total_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description=(
            "Size of the metadata area at the start of the device; a multiple of block_align."
        ),
    )
    meta_magic: str = Field(
        default="LMCIDX01",
        min_length=8,
        max_length=8,
        description="Eight-character magic of the index checkpoints.",
    )
    meta_version: int = Field(default=1, ge=1, description="Version of the checkpoint format.")
    meta_checkpoint_interval_sec: float = Field(
        default=60.0,
        gt=0.0,
        allow_inf_nan=False,
        description="Seconds between periodic checkpoints of the index.",
    )
    meta_idle_quiet_ms: int = Field(
        default=100,
        ge=0,
        description="A checkpoint is written only after the device has been idle this long.",
    )
    meta_enable_periodic: bool = Field(
        default=True, description="Write index checkpoints periodically while the state is dirty."
    )
    load_checkpoint_on_init: bool = Field(
        default=True, description="Recover the index from the newest valid checkpoint at start."
    )
    meta_verify_on_load: bool = Field(
        default=False, description="Verify every slot header against the recovered index."
    )
    enable_zero_copy: bool = Field(
        default=False, description="Do I/O directly from and into registered L1 buffers."
    )
    io_engine: Literal["posix", "io_uring"] = Field(
        default="posix", description="I/O engine: 'posix' (pread/pwrite) or 'io_uring'."
    )
    iouring_queue_depth: int = Field(
        default=256, gt=0, description="Submission queue depth of io_uring."
    )
    use_uring_cmd: bool = Field(
        default=False, description="Use NVMe passthrough commands (io_uring only)."
    )
    max_data_transfer_size: int | None = Field(
        default=None, gt=0, description="Largest single I/O in bytes; unset uses the device's."
    )
    fdp_enabled: bool = Field(
        default=False, description="Use NVMe Flexible Data Placement hints for slot writes."
    )
    fdp_placement_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="FDP placement ids to spread slots over."
    )
    num_store_workers: int = Field(default=2, gt=0, description="Store worker threads.")
    num_lookup_workers: int = Field(default=1, gt=0, description="Lookup worker threads.")
    num_load_workers: int = Field(default=4, gt=0, description="Load worker threads.")

    @model_validator(mode="after")
    def _consistent_layout(self) -> RawBlockAdapterConfig:
        align = self.block_align
        if align & (align - 1):
            raise ValueError(f"block_align must be a power of two, not {align}")
        if self.slot_bytes % align:
            raise ValueError(f"slot_bytes must be a multiple of block_align ({align})")
        if self.slot_bytes <= self.header_bytes:
            raise ValueError(f"slot_bytes must be larger than header_bytes ({self.header_bytes})")
        if self.meta_total_bytes % align:
            raise ValueError(f"meta_total_bytes must be a multiple of block_align ({align})")
        if self.capacity_bytes and self.capacity_bytes < self.meta_total_bytes + self.slot_bytes:
            raise ValueError(
                "capacity_bytes must hold the metadata area (meta_total_bytes) and one slot"
            )
        if self.use_uring_cmd and self.io_engine != "io_uring":
            raise ValueError("use_uring_cmd needs io_engine 'io_uring'")
        if self.fdp_placement_ids and not self.fdp_enabled:
            raise ValueError("fdp_placement_ids needs fdp_enabled")
        return self
