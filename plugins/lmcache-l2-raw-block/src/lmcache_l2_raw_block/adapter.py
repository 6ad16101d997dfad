"""``RawBlockL2Adapter``: fixed slots on a block device with a checkpointed index.

Device layout::

    [0, meta_total_bytes)                    two checkpoint containers (checkpoint.py)
    meta_total_bytes + n * slot_bytes        slot n, n < total_slots

A slot starts with a ``header_bytes`` header block, then the payload::

    bytes 0-7    magic LMCBLK01
    bytes 8-15   slot identity: the first 8 bytes of the key's digest (u64 LE)
    bytes 16-23  payload length (u64 LE)
    bytes 24-71  the core's object frame (magic, version, key digest, length,
                 checksum) with format "framed"; zero with format "raw"
    the rest     zero

so the payload starts block-aligned at ``offset + header_bytes``, and a raw slot
has upstream's layout. A store writes the header and the payload in one
``pwritev`` into a free slot and only then publishes the index entry; a re-store
writes a new slot and frees the old one. A load reads header and payload in one
``preadv`` and checks the slot header (magic, identity, length) before the frame
check of the base class: a slot that another key has taken since the last
checkpoint, or a damaged one, is a miss and is dropped from the index.

The index lives in RAM and is checkpointed into the metadata area when it has
changed and the device has been idle for ``meta_idle_quiet_ms`` (checked every
``meta_checkpoint_interval_sec``), and at close. At start the newest valid
checkpoint is loaded, so keys, bytes and usage survive a restart.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.disk_limits import NO_DISK_LIMITS, DiskLimits
from lmcache_core.storage.l2.object_format import (
    HEADER_SIZE,
    CorruptObject,
    check_header,
    key_digest,
)
from lmcache_core.storage.l2.slots import SlotEntry, SlotTable
from lmcache_l2_raw_block.block_file import BlockFile, aligned_buffer
from lmcache_l2_raw_block.checkpoint import CheckpointArea, Recovery, encode_index
from lmcache_l2_raw_block.config import RawBlockAdapterConfig

logger = logging.getLogger("lmcache.l2.raw_block")

SLOT_MAGIC = b"LMCBLK01"
SLOT_HEADER = struct.Struct("<8sQQ")
"""magic, slot identity, payload length."""
FRAME_OFFSET = SLOT_HEADER.size
"""Where the object frame sits in the slot header (format ``framed``)."""


class NoFreeSlot(RuntimeError):
    """Every slot holds an object (a failed store)."""


def split_views(
    views: Sequence[memoryview], count: int
) -> tuple[list[memoryview], list[memoryview]]:
    """``views`` cut after their first ``count`` bytes: (the views of those, the rest)."""
    head: list[memoryview] = []
    tail: list[memoryview] = []
    for given in views:
        view = given.cast("B") if given.format != "B" or given.ndim != 1 else given
        if count >= view.nbytes:
            head.append(view)
            count -= view.nbytes
        elif count:
            head.append(view[:count])
            tail.append(view[count:])
            count = 0
        else:
            tail.append(view)
    return head, tail


def slot_identity(key: ObjectKey) -> int:
    """The u64 a slot header names its key by."""
    return int.from_bytes(key_digest(key)[:8], "little")


@dataclass(frozen=True)
class RawBlockLayout:
    """How the device is cut up.

    Attributes:
        device_path: The block device or regular file.
        slot_bytes: Size of one slot, header included.
        header_bytes: Size of a slot's header block.
        block_align: I/O alignment; the size of a checkpoint header block.
        meta_total_bytes: Size of the metadata area at offset 0.
        meta_magic: Magic of the checkpoint containers (8 ASCII characters).
        meta_version: Version of the checkpoints written and accepted.
    """

    device_path: str
    slot_bytes: int
    header_bytes: int = 4096
    block_align: int = 4096
    meta_total_bytes: int = 256 * 1024 * 1024
    meta_magic: str = "LMCIDX01"
    meta_version: int = 1


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the index is checkpointed.

    Attributes:
        periodic: Write checkpoints while running (else only at close).
        interval_s: How often the checkpoint thread looks for a dirty index.
        idle_quiet_s: A checkpoint waits until no I/O happened for this long.
        load_on_start: Recover the index from the newest valid checkpoint at start.
        verify_on_load: At start, read every recovered slot's header and drop bad ones.
        persist: Keep the objects at close; False erases the checkpoints at start
            and at close and never writes one.
    """

    periodic: bool = True
    interval_s: float = 60.0
    idle_quiet_s: float = 0.1
    load_on_start: bool = True
    verify_on_load: bool = False
    persist: bool = True


class RawBlockL2Adapter(L2AdapterV1):
    """Objects in fixed slots of a block device or file, with a checkpointed index.

    Args:
        layout: The device and how it is cut up.
        policy: When the index is checkpointed and how it is recovered.
        device_bytes: Bytes of the device to use (0: all of it); a regular file
            that does not exist is created and preallocated to this size.
        capacity_bytes: Capacity to report and enforce; None (default) uses
            ``total_slots`` times the largest object a slot holds; 0 is unlimited
            (the slots still bound it).
        object_format: ``framed`` or ``raw``.
        use_odirect: Open the device with ``O_DIRECT`` (aligned bounce buffers for
            unaligned data).
        max_io_bytes: Largest single transfer (None: no limit).
        num_workers: Threads running the blocking I/O.
        disk_limits: For a regular file: the watermark and minimum free space of
            its file system, kept when the file is created or extended and, while
            the file is sparse, at every store admission (a store may allocate a
            whole slot). A block device refuses them.

    Raises:
        ValueError: A layout the device cannot hold, or a device that cannot be
            opened as configured (see :class:`BlockFile`).
    """

    def __init__(
        self,
        layout: RawBlockLayout,
        policy: CheckpointPolicy | None = None,
        *,
        device_bytes: int = 0,
        capacity_bytes: int | None = None,
        object_format: ObjectFormat = "framed",
        use_odirect: bool = False,
        max_io_bytes: int | None = None,
        num_workers: int = 4,
        disk_limits: DiskLimits = NO_DISK_LIMITS,
    ) -> None:
        _check_layout(layout, object_format, use_odirect)
        self.layout = layout
        self.policy = policy or CheckpointPolicy()
        self.payload_limit = layout.slot_bytes - layout.header_bytes
        self.file = BlockFile(
            layout.device_path,
            size_bytes=device_bytes,
            direct=use_odirect,
            align=layout.block_align,
            max_io=max_io_bytes,
            bounce_bytes=layout.slot_bytes,
            bounce_limit=num_workers,
            disk_limits=disk_limits,
        )
        try:
            self.total_slots = (self.file.size_bytes - layout.meta_total_bytes) // layout.slot_bytes
            if self.total_slots < 1:
                raise ValueError(
                    f"{layout.device_path}: {self.file.size_bytes} bytes hold the metadata area "
                    f"({layout.meta_total_bytes}) but no slot of {layout.slot_bytes} bytes"
                )
            self.area = CheckpointArea(
                self.file,
                meta_total_bytes=layout.meta_total_bytes,
                block_align=layout.block_align,
                magic=layout.meta_magic.encode("ascii"),
                version=layout.meta_version,
            )
        except BaseException:
            self.file.close()
            raise
        self.slots = SlotTable(self.total_slots)
        frame = HEADER_SIZE if object_format == "framed" else 0
        super().__init__(
            "raw_block",
            capacity_bytes=self.total_slots * (self.payload_limit + frame)
            if capacity_bytes is None
            else capacity_bytes,
            object_format=object_format,
            num_workers=num_workers,
        )
        self.disk_limits = disk_limits
        # A store into a hole of a sparse file may allocate its whole slot.
        self.room_unit = layout.slot_bytes
        self.recovery = Recovery(reason="not started")
        self.checkpoints_written = 0
        self.checkpoint_errors = 0
        self.no_free_slot = 0
        self._next_seq = 1
        self._checkpointed_version = 0
        self._last_io = time.monotonic()
        self._meta_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._started = False

    # -- start, checkpoints ----------------------------------------------------------------

    def layout_fields(self) -> dict[str, Any]:
        """The fields a checkpoint must match to be used."""
        return {
            "device_path": self.layout.device_path,
            "block_align": self.layout.block_align,
            "header_bytes": self.layout.header_bytes,
            "slot_bytes": self.layout.slot_bytes,
            "meta_total_bytes": self.layout.meta_total_bytes,
            "meta_magic": self.layout.meta_magic,
            "format": self.object_format,
        }

    def start(self) -> None:
        """Recover the index, seed usage from it, then start the checkpoint thread."""
        if self._started:
            raise RuntimeError("raw_block: start() was already called")
        self._started = True
        policy = self.policy
        if not policy.persist:
            self.area.erase()
            self.recovery = Recovery(reason="persist_enabled is false: checkpoints erased")
        elif policy.load_on_start:
            self.recovery = self.area.recover(
                self.layout_fields(), self.total_slots, self.payload_limit
            )
        else:
            found = self.area.recover(self.layout_fields(), self.total_slots, self.payload_limit)
            self.recovery = Recovery(
                next_seq=found.next_seq, reason="load_checkpoint_on_init is false: started empty"
            )
        entries = self.recovery.entries
        if policy.verify_on_load:
            entries = self._verified(entries)
        self.slots = SlotTable(self.total_slots, entries)
        self._next_seq = self.recovery.next_seq
        # The index equals the checkpoint it came from, unless entries were dropped or an
        # existing checkpoint was not used: then a new one is written at once, so a crash
        # cannot bring back what this start left out.
        ignored = self.recovery.seq is None and self._next_seq > 1
        stale = ignored or self.recovery.dropped > 0
        self._checkpointed_version = -1 if stale else self.slots.version
        logger.info("raw_block: %s: %s", self.layout.device_path, self.recovery.reason)
        super().start()
        if policy.persist and self._checkpointed_version == -1:
            self.checkpoint()
        if policy.persist and policy.periodic:
            self._thread = threading.Thread(
                target=self._checkpoint_loop, name="lmcache-l2-raw-block-checkpoint", daemon=True
            )
            self._thread.start()

    def checkpoint(self) -> bool:
        """Write the index now if it changed since the last checkpoint.

        Returns:
            Whether a checkpoint was written.
        """
        with self._meta_lock:
            version, entries = self.slots.snapshot()
            if version == self._checkpointed_version:
                return False
            payload = encode_index(self.layout_fields(), entries)
            self.area.write(self._next_seq, payload)
            self._next_seq += 1
            self._checkpointed_version = version
            self.checkpoints_written += 1
            return True

    @property
    def dirty(self) -> bool:
        """The index changed since the last checkpoint."""
        return self.slots.version != self._checkpointed_version

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            # Wait for a quiet device, so a checkpoint does not compete with a burst of I/O.
            while self.dirty and not self._stop.is_set():
                idle = time.monotonic() - self._last_io
                if idle < self.policy.idle_quiet_s:
                    self._stop.wait(self.policy.idle_quiet_s - idle)
                    continue
                try:
                    self.checkpoint()
                except Exception:
                    self.checkpoint_errors += 1
                    logger.exception("raw_block: checkpoint failed")
                break

    def _verified(self, entries: dict[ObjectKey, SlotEntry]) -> dict[ObjectKey, SlotEntry]:
        """The entries whose slot header (and frame header) names their key and length."""
        header = self._header_buffer()
        kept: dict[ObjectKey, SlotEntry] = {}
        for key, entry in entries.items():
            try:
                self.file.read_into(self._offset(entry.slot), [header])
                self._check_slot_header(key, entry, header)
                if self.object_format == "framed":
                    check_header(key, header[FRAME_OFFSET:], entry.length)
            except (OSError, CorruptObject) as exc:
                self.recovery.dropped += 1
                logger.warning("raw_block: slot %d dropped at start: %s", entry.slot, exc)
                continue
            kept[key] = entry
        return kept

    # -- introspection -------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        """Slots a store can take now."""
        return self.slots.free_slots

    def location_of(self, key: ObjectKey) -> tuple[int, int] | None:
        """(byte offset of the slot, payload length) of ``key``, or None."""
        entry = self.slots.get(key)
        return None if entry is None else (self._offset(entry.slot), entry.length)

    def _room_bytes(self) -> int | None:
        """The file system's room within the disk limits; None when writes cannot grow the file.

        A preallocated file (or a device) takes no further space when slots are
        written, so only a sparse file is gated; its room is measured live at each
        admission, so nothing needs rebuilding after a restart.
        """
        if not self.disk_limits.enabled or self.file.fully_allocated():
            return None
        return self.disk_limits.room(self.file.directory)

    def _allocated_bytes(self) -> int | None:
        """Disk space the file occupies now; None once it is closed."""
        try:
            return self.file.allocated_bytes()
        except OSError:
            return None

    def status(self) -> dict[str, Any]:
        """The base status plus the device, slot counts, checkpoints and recovery."""
        status = super().status()
        status.update(
            device_path=self.layout.device_path,
            high_watermark=self.disk_limits.high_watermark,
            min_free_bytes=self.disk_limits.min_free_bytes,
            allocated_bytes=self._allocated_bytes(),
            slot_bytes=self.layout.slot_bytes,
            total_slots=self.total_slots,
            free_slots=self.free_slots,
            no_free_slot=self.no_free_slot,
            use_odirect=self.file.direct,
            checkpoints_written=self.checkpoints_written,
            checkpoint_errors=self.checkpoint_errors,
            checkpoint_seq=self._next_seq - 1,
            index_dirty=self.dirty,
            recovery=self.recovery.reason,
            recovered_objects=len(self.recovery.entries),
            dropped_at_recovery=self.recovery.dropped,
        )
        return status

    # -- the implementation -----------------------------------------------------------------

    def _offset(self, slot: int) -> int:
        return self.layout.meta_total_bytes + slot * self.layout.slot_bytes

    def _header_buffer(self) -> memoryview:
        """This thread's aligned slot-header buffer (aligned so O_DIRECT can use it as is)."""
        buffer: memoryview | None = getattr(self._local, "header", None)
        if buffer is None:
            buffer = aligned_buffer(self.layout.header_bytes, self.layout.block_align)
            self._local.header = buffer
        return buffer

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        views = [memoryview(part).cast("B") for part in parts]
        frame, payload = (
            (views[0], views[1]) if self.object_format == "framed" else (None, views[0])
        )
        if payload.nbytes > self.payload_limit:
            raise ValueError(
                f"an object of {payload.nbytes} bytes does not fit a slot "
                f"({self.payload_limit} payload bytes)"
            )
        slot = self.slots.take()
        if slot is None:
            # Every slot holds an object: a failed store, counted, never a silent success.
            self.no_free_slot += 1
            raise NoFreeSlot("No free slots")
        header = self._header_buffer()
        header[:] = bytes(len(header))
        SLOT_HEADER.pack_into(header, 0, SLOT_MAGIC, slot_identity(key), payload.nbytes)
        if frame is not None:
            header[FRAME_OFFSET : FRAME_OFFSET + frame.nbytes] = frame
        self._last_io = time.monotonic()
        try:
            self.file.write(self._offset(slot), [header, payload])
        except BaseException:
            self.slots.abandon(slot)
            raise
        # Published only now: a reader never sees a half-written slot.
        self.slots.publish(key, SlotEntry(slot, payload.nbytes))
        self._last_io = time.monotonic()

    def _exists(self, key: ObjectKey) -> bool:
        return key in self.slots

    def _get(self, key: ObjectKey, size: int) -> bytearray | None:
        data = bytearray(size)
        return data if self._get_into(key, [memoryview(data)]) else None

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        """Read ``key``'s stored object (frame, then payload) into ``parts`` with one preadv.

        The payload lands in the parts straight from the device; the frame is copied
        out of the slot header. False, with nothing read, when the parts' total is not
        the object's size; False when the slot header does not match (the entry is then
        dropped).
        """
        entry = self.slots.borrow(key)
        if entry is None:
            return False
        try:
            frame = HEADER_SIZE if self.object_format == "framed" else 0
            if sum(part.nbytes for part in parts) != frame + entry.length:
                return False  # the caller's buffer has another size: a miss, nothing read
            frame_parts, payload_parts = split_views(parts, frame)
            header = self._header_buffer()
            self._last_io = time.monotonic()
            self.file.read_into(self._offset(entry.slot), [header, *payload_parts])
            try:
                self._check_slot_header(key, entry, header)
            except CorruptObject as exc:
                self._drop(key, entry, exc)
                return False
            position = FRAME_OFFSET
            for part in frame_parts:
                part[:] = header[position : position + part.nbytes]
                position += part.nbytes
            return True
        finally:
            self.slots.end_borrow(entry.slot)

    def _check_slot_header(self, key: ObjectKey, entry: SlotEntry, header: memoryview) -> None:
        magic, identity, length = SLOT_HEADER.unpack_from(header)
        if magic != SLOT_MAGIC:
            raise CorruptObject(f"slot {entry.slot}: no slot magic")
        if identity != slot_identity(key):
            raise CorruptObject(f"slot {entry.slot} holds another key")
        if length != entry.length:
            raise CorruptObject(
                f"slot {entry.slot} holds {length} bytes, the index says {entry.length}"
            )

    def _drop(self, key: ObjectKey, entry: SlotEntry, reason: Exception) -> None:
        """Forget an object whose slot failed its check: later lookups miss it."""
        self.corrupt += 1
        logger.warning("raw_block: %s: dropped from the index", reason)
        if self.slots.remove(key, expected=entry) is not None:
            with self._lock:
                self._set_size(key, None)

    def _remove(self, key: ObjectKey) -> bool:
        return self.slots.remove(key) is not None

    def _known_objects(self) -> dict[ObjectKey, int]:
        frame = HEADER_SIZE if self.object_format == "framed" else 0
        return {key: entry.length + frame for key, entry in self.slots.snapshot()[1].items()}

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self._started and self.policy.persist:
                self.checkpoint()
            elif self._started:
                self.area.erase()
        except Exception:
            # Closing must still release the device; the previous checkpoint stays valid.
            self.checkpoint_errors += 1
            logger.exception("raw_block: the final checkpoint failed")
        finally:
            self.slots.clear()
            self.file.close()


def _check_layout(layout: RawBlockLayout, object_format: ObjectFormat, direct: bool) -> None:
    """Reject layouts this adapter cannot use.

    Raises:
        ValueError: Naming the field at fault.
    """
    align = layout.block_align
    if align <= 0 or align & (align - 1):
        raise ValueError(f"block_align must be a power of two, not {align}")
    if layout.slot_bytes % align or layout.meta_total_bytes % align:
        raise ValueError(
            f"slot_bytes and meta_total_bytes must be multiples of block_align ({align})"
        )
    if layout.slot_bytes <= layout.header_bytes:
        raise ValueError("slot_bytes must be larger than header_bytes")
    needed = FRAME_OFFSET + (HEADER_SIZE if object_format == "framed" else 0)
    if layout.header_bytes < needed:
        raise ValueError(
            f"header_bytes must be at least {needed} with format {object_format!r} "
            "(the slot header holds the object frame)"
        )
    if direct and layout.header_bytes % align:
        raise ValueError(
            f"with use_odirect, header_bytes must be a multiple of block_align ({align})"
        )
    if len(layout.meta_magic.encode("ascii")) != 8:
        raise ValueError("meta_magic must be 8 ASCII characters")


def build_raw_block(
    config: RawBlockAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> RawBlockL2Adapter:
    """Build the ``raw_block`` adapter from its validated ``--l2-adapter`` JSON.

    Args:
        config: The adapter's configuration (options this adapter cannot honour
            were already refused by its validator).
        context: The adapter context (unused: this adapter needs no server setting).
    """
    del context
    layout = RawBlockLayout(
        device_path=config.device_path,
        slot_bytes=config.slot_bytes,
        header_bytes=config.header_bytes,
        block_align=config.block_align,
        meta_total_bytes=config.meta_total_bytes,
        meta_magic=config.meta_magic,
        meta_version=config.meta_version,
    )
    policy = CheckpointPolicy(
        periodic=config.meta_enable_periodic,
        interval_s=config.meta_checkpoint_interval_sec,
        idle_quiet_s=config.meta_idle_quiet_ms / 1000,
        load_on_start=config.load_checkpoint_on_init,
        verify_on_load=config.meta_verify_on_load,
        persist=config.persist_enabled,
    )
    return RawBlockL2Adapter(
        layout,
        policy,
        device_bytes=config.capacity_bytes,
        object_format=config.format,
        use_odirect=config.use_odirect,
        max_io_bytes=config.max_data_transfer_size,
        num_workers=config.num_store_workers + config.num_lookup_workers + config.num_load_workers,
        disk_limits=config.disk_limits(),
    )
