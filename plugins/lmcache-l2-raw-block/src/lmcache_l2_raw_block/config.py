"""Configuration of the ``raw_block`` L2 adapter (fixed slots on a block device)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase
from lmcache_core.storage.l2.disk_limits import DiskLimitsConfig

SLOT_HEADER_MIN_BYTES = 24
"""A slot header holds at least its magic, identity and payload length (8 bytes each)."""
FRAMED_SLOT_HEADER_MIN_BYTES = SLOT_HEADER_MIN_BYTES + 48
"""With format ``framed`` the slot header also holds the 48-byte object frame."""


class RawBlockAdapterConfig(L2AdapterConfigBase, DiskLimitsConfig):
    """The ``--l2-adapter`` JSON of ``{"type": "raw_block", ...}``.

    The device starts with a metadata area of ``meta_total_bytes`` (two mirrored
    index checkpoints); fixed data slots of ``slot_bytes`` follow, each starting
    with a ``header_bytes`` header. ``high_watermark`` and ``min_free_bytes``
    apply when ``device_path`` is a file (a block device refuses them).
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
        default=0,
        ge=0,
        description=(
            "Bytes of the device to use; 0 uses the whole device (or existing file). A regular "
            "file that does not exist is created and preallocated to this size."
        ),
    )
    use_odirect: bool = Field(
        default=True,
        description=(
            "Open the device with O_DIRECT; unaligned data goes through aligned bounce buffers."
        ),
    )
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
        description="Seconds between checks for a changed index to checkpoint.",
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
        default=False,
        description="Load straight into registered L1 buffers: not supported; true is refused.",
    )
    io_engine: Literal["posix", "io_uring"] = Field(
        default="posix",
        description="I/O engine: 'posix' (pwritev/preadv); 'io_uring' is not implemented.",
    )
    iouring_queue_depth: int = Field(
        default=256,
        gt=0,
        description="Submission queue depth of io_uring (refused: io_uring is not implemented).",
    )
    use_uring_cmd: bool = Field(
        default=False, description="Use NVMe passthrough commands (io_uring only, so refused)."
    )
    max_data_transfer_size: int | None = Field(
        default=None,
        gt=0,
        description="Largest single I/O in bytes, a multiple of block_align; unset: no limit.",
    )
    fdp_enabled: bool = Field(
        default=False,
        description="NVMe Flexible Data Placement hints: not implemented; true is refused.",
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
        if self.meta_total_bytes < 4 * align:
            raise ValueError(
                f"meta_total_bytes must hold two checkpoint containers of two blocks "
                f"(at least {4 * align})"
            )
        if not self.meta_magic.isascii():
            raise ValueError("meta_magic must be 8 ASCII characters")
        if self.format == "framed" and self.header_bytes < FRAMED_SLOT_HEADER_MIN_BYTES:
            raise ValueError(
                f"header_bytes must be at least {FRAMED_SLOT_HEADER_MIN_BYTES} with format "
                "'framed' (the slot header holds the object frame)"
            )
        if self.use_odirect and self.header_bytes % align:
            raise ValueError("with use_odirect, header_bytes must be a multiple of block_align")
        if self.max_data_transfer_size is not None and self.max_data_transfer_size % align:
            raise ValueError(f"max_data_transfer_size must be a multiple of block_align ({align})")
        if self.capacity_bytes and self.capacity_bytes < self.meta_total_bytes + self.slot_bytes:
            raise ValueError(
                "capacity_bytes must hold the metadata area (meta_total_bytes) and one slot"
            )
        if self.use_uring_cmd and self.io_engine != "io_uring":
            raise ValueError("use_uring_cmd needs io_engine 'io_uring'")
        if self.fdp_placement_ids and not self.fdp_enabled:
            raise ValueError("fdp_placement_ids needs fdp_enabled")
        return self

    @model_validator(mode="after")
    def _honoured(self) -> RawBlockAdapterConfig:
        """Refuse documented options this implementation cannot honour, instead of ignoring them."""
        explicit = self.model_fields_set
        if self.io_engine == "io_uring":
            raise ValueError("io_engine 'io_uring' is not implemented; use 'posix' (pread/pwrite)")
        if "iouring_queue_depth" in explicit:
            raise ValueError("iouring_queue_depth has no effect with io_engine 'posix'; remove it")
        if self.fdp_enabled:
            raise ValueError(
                "fdp_enabled: NVMe Flexible Data Placement hints are not implemented "
                "(they need io_uring passthrough)"
            )
        if self.enable_zero_copy:
            raise ValueError(
                "enable_zero_copy is not supported: a load is verified in a scratch buffer before "
                "it reaches L1 (a bad object never touches it); stores already write straight "
                "from the caller's buffer"
            )
        if self.shared:
            raise ValueError(
                "shared: a raw_block device cannot be shared by several servers (each keeps its "
                "own slot allocator; the device is locked while open)"
            )
        if not self.persist_enabled and "load_checkpoint_on_init" in explicit:
            raise ValueError(
                "load_checkpoint_on_init has no effect with persist_enabled false "
                "(the checkpoints are erased at start)"
            )
        if not self.meta_enable_periodic:
            idle = sorted({"meta_checkpoint_interval_sec", "meta_idle_quiet_ms"} & explicit)
            if idle:
                raise ValueError(
                    f"{' and '.join(idle)} has no effect with meta_enable_periodic false"
                )
        return self
