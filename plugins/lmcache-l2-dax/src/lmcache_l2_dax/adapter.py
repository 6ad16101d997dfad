"""``DaxL2Adapter``: fixed slots in memory-mapped Device-DAX devices (the L2 adapter ``dax``).

Each device (a ``/dev/dax*`` character device, or a regular file, created or
extended to its configured size) is mapped with :func:`mmap.mmap` and split into
fixed slots of ``slot_bytes``. An object is one buffer in one slot: a stored
object larger than a slot fails. The index (key -> device, slot, length) and the
free-slot list live in RAM, like upstream's: the cache is empty after a restart.

A store copies its bytes into a free slot and only then publishes the index
entry, so a reader never sees a half-written slot; re-storing a key writes a new
slot and then frees the old one. A load copies the slot's bytes out while holding
a borrow on the slot; a slot freed while borrowed (delete or overwrite) is reused
only once its borrows drain.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.slots import SlotEntry, SlotTable
from lmcache_l2_dax.config import DaxAdapterConfig

logger = logging.getLogger("lmcache.l2.dax")

GIB = 1 << 30


@dataclass(frozen=True)
class DaxRegion:
    """One device to map: its path and how many bytes of it."""

    path: str
    size_bytes: int


class _MappedDevice:
    """One mapped device or file."""

    def __init__(self, region: DaxRegion) -> None:
        self.path = region.path
        self.size_bytes = region.size_bytes
        if region.size_bytes <= 0:
            raise ValueError(f"{region.path}: the size to map must be > 0")
        path = Path(region.path)
        exists = path.exists()
        if exists and not (stat.S_ISCHR(path.stat().st_mode) or path.is_file()):
            raise ValueError(f"{region.path} is neither a character device nor a regular file")
        fd = os.open(region.path, os.O_RDWR | (0 if exists else os.O_CREAT), 0o600)
        try:
            if path.is_file() and os.fstat(fd).st_size < region.size_bytes:
                os.ftruncate(fd, region.size_bytes)  # create or extend a regular file (sparse)
            self.mm = mmap.mmap(
                fd, region.size_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            os.close(fd)

    def close(self) -> None:
        self.mm.close()


class DaxL2Adapter(L2AdapterV1):
    """Objects in fixed slots of memory-mapped devices, with a volatile index.

    Args:
        regions: The devices (or files) to map, in order.
        slot_bytes: Size of one slot; a stored object (header included) must fit.
        capacity_bytes: Capacity to report and enforce; None (default) uses
            ``total slots * slot_bytes``, 0 means unlimited (slots still bound it).
        object_format: ``framed`` or ``raw``.
        num_workers: Threads running the blocking work.
    """

    def __init__(
        self,
        regions: Sequence[DaxRegion],
        *,
        slot_bytes: int,
        capacity_bytes: int | None = None,
        object_format: ObjectFormat = "framed",
        num_workers: int = 4,
    ) -> None:
        if slot_bytes <= 0:
            raise ValueError("slot_bytes must be > 0")
        if not regions:
            raise ValueError("the dax adapter needs at least one device")
        paths = [region.path for region in regions]
        if len(set(paths)) != len(paths):
            raise ValueError("a device is listed more than once")
        for region in regions:
            if region.size_bytes < slot_bytes:
                raise ValueError(
                    f"{region.path}: {region.size_bytes} bytes hold no slot of {slot_bytes} bytes"
                )
        self.slot_bytes = slot_bytes
        self._devices: list[_MappedDevice] = []
        try:
            for region in regions:
                self._devices.append(_MappedDevice(region))
        except BaseException:
            for device in self._devices:
                device.close()
            raise
        # Slots are numbered across the devices in order; _first_slot[i] is device i's first.
        self._first_slot: list[int] = []
        total = 0
        for device in self._devices:
            self._first_slot.append(total)
            total += device.size_bytes // slot_bytes
        self.total_slots = total
        self.slots = SlotTable(total)
        super().__init__(
            "dax",
            capacity_bytes=self.total_slots * slot_bytes
            if capacity_bytes is None
            else capacity_bytes,
            object_format=object_format,
            num_workers=num_workers,
        )

    # -- introspection (tests, status) ------------------------------------------------

    @property
    def free_slots(self) -> int:
        """Slots ready for a store (not counting freed slots still borrowed)."""
        return self.slots.free_slots

    def _locate(self, slot: int) -> tuple[_MappedDevice, int]:
        """The device holding global ``slot`` and the slot's byte offset in it."""
        index = bisect.bisect_right(self._first_slot, slot) - 1
        return self._devices[index], (slot - self._first_slot[index]) * self.slot_bytes

    def location_of(self, key: ObjectKey) -> tuple[str, int, int] | None:
        """(device path, byte offset, stored length) of ``key``, or None."""
        entry = self.slots.get(key)
        if entry is None:
            return None
        device, offset = self._locate(entry.slot)
        return device.path, offset, entry.length

    def status(self) -> dict[str, Any]:
        """The base status plus the slot size, slot counts and device paths."""
        status = super().status()
        status["slot_bytes"] = self.slot_bytes
        status["total_slots"] = self.total_slots
        status["free_slots"] = self.slots.free_slots
        status["devices"] = [device.path for device in self._devices]
        return status

    # -- the implementation -------------------------------------------------------------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        views = [memoryview(part).cast("B") for part in parts]
        length = sum(view.nbytes for view in views)
        if length > self.slot_bytes:
            raise ValueError(
                f"an object of {length} bytes does not fit a {self.slot_bytes}-byte slot"
            )
        slot = self.slots.take()
        if slot is None:
            raise RuntimeError("no free dax slot")
        device, offset = self._locate(slot)
        try:
            for view in views:
                device.mm[offset : offset + view.nbytes] = view
                offset += view.nbytes
        except BaseException:
            self.slots.abandon(slot)
            raise
        # Published only now: a reader never sees a half-written slot.
        self.slots.publish(key, SlotEntry(slot, length))

    def _exists(self, key: ObjectKey) -> bool:
        return key in self.slots

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        del size  # the stored length is known; the base class checks it
        entry = self.slots.borrow(key)
        if entry is None:
            return None
        try:
            device, offset = self._locate(entry.slot)
            return device.mm[offset : offset + entry.length]
        finally:
            self.slots.end_borrow(entry.slot)

    def _remove(self, key: ObjectKey) -> bool:
        return self.slots.remove(key) is not None

    def _close(self) -> None:
        self.slots.clear()
        for device in self._devices:
            device.close()


def build_dax(
    config: DaxAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> DaxL2Adapter:
    """Build the ``dax`` adapter from its validated ``--l2-adapter`` JSON.

    Args:
        config: The adapter's configuration.
        context: The adapter context (unused: this adapter needs no server setting).

    Raises:
        ValueError: ``hotplug_enabled`` is set (hot-plug is not implemented).
    """
    del context
    if config.hotplug_enabled:
        raise ValueError(
            "dax: hot-plug is not implemented; remove hotplug_enabled (or set it to false)"
        )
    load_workers = config.num_load_workers or min(4, os.cpu_count() or 1)
    regions = [
        DaxRegion(device.device_path, int(device.max_dax_size_gb * GIB))
        for device in config.device_list()
    ]
    return DaxL2Adapter(
        regions,
        slot_bytes=config.slot_bytes,
        object_format=config.format,
        num_workers=config.num_store_workers + config.num_lookup_workers + load_workers,
    )
