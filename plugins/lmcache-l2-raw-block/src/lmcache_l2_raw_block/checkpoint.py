"""The index checkpoints of ``raw_block``: two mirrored containers in the metadata area.

The metadata area ``[0, meta_total_bytes)`` holds two containers of
``meta_total_bytes // 2`` bytes (rounded down to ``block_align``). A container
starts with one ``block_align``-sized header block, packed as ``<8sIQQI``::

    magic (meta_magic) | version (meta_version) | seq | payload length | crc32(payload)

and the payload starts at the next block: compact JSON of the layout fields and
the index::

    {"layout": {"device_path": ..., "block_align": ..., ...},
     "entries": [[chunk_hash_hex, model_name, kv_rank, object_group_id, cache_salt,
                  slot, length], ...]}

Checkpoint ``seq`` goes to container ``seq % 2``, so the newest checkpoint never
overwrites the previous one: a checkpoint torn by a crash fails its CRC and the
other container still holds a complete, older one. The payload is written and
synced before its header, so a valid header always describes a complete payload.

Recovery takes the newest container whose magic and CRC are good. If its version
or any layout field differs from the adapter's, it is ignored and the adapter
starts empty (an older checkpoint is not used either: the writer of the newer one
may have reused its slots).
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.storage.keys import ObjectKey, validate_cache_salt
from lmcache_core.storage.l2.slots import SlotEntry
from lmcache_l2_raw_block.block_file import BlockFile

logger = logging.getLogger("lmcache.l2.raw_block")

CONTAINER_HEADER = struct.Struct("<8sIQQI")
"""magic, version, seq, payload length, crc32 of the payload."""


class CheckpointTooLarge(ValueError):
    """The index does not fit a checkpoint container (raise meta_total_bytes)."""


@dataclass
class Recovery:
    """What recovery found in the metadata area.

    Attributes:
        entries: The recovered index (empty when nothing usable was found).
        seq: The seq of the checkpoint used, or None.
        next_seq: The seq the next checkpoint gets (above every valid one seen).
        reason: A one-line account, for logs and status.
        dropped: Entries of the checkpoint that were malformed, out of range or
            shared a slot with another entry.
    """

    entries: dict[ObjectKey, SlotEntry] = field(default_factory=dict)
    seq: int | None = None
    next_seq: int = 1
    reason: str = "no checkpoint"
    dropped: int = 0


@dataclass(frozen=True)
class _Found:
    container: int
    seq: int
    version: int
    payload: bytes


def encode_index(layout: dict[str, Any], entries: dict[ObjectKey, SlotEntry]) -> bytes:
    """The checkpoint payload: compact JSON of the layout and the index."""
    rows = [
        [
            key.chunk_hash.hex(),
            key.model_name,
            key.kv_rank,
            key.object_group_id,
            key.cache_salt,
            entry.slot,
            entry.length,
        ]
        for key, entry in entries.items()
    ]
    return json.dumps({"layout": layout, "entries": rows}, separators=(",", ":")).encode()


def decode_row(row: Any) -> tuple[ObjectKey, SlotEntry]:
    """One index row back to its key and entry.

    Raises:
        ValueError: The row is malformed.
    """
    if not isinstance(row, list) or len(row) != 7:
        raise ValueError("an index row is a list of 7 fields")
    chunk, model, rank, group, salt, slot, length = row
    ints = (rank, group, slot, length)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in ints):
        raise ValueError("kv_rank, object_group_id, slot and length are integers")
    if not (isinstance(chunk, str) and isinstance(model, str) and isinstance(salt, str)):
        raise ValueError("chunk hash, model name and cache salt are strings")
    if min(ints) < 0:
        raise ValueError("negative field")
    validate_cache_salt(salt)
    return ObjectKey(bytes.fromhex(chunk), model, rank, group, salt), SlotEntry(slot, length)


class CheckpointArea:
    """Reads and writes the two checkpoint containers of a device.

    Args:
        file: The open device.
        meta_total_bytes: Size of the metadata area.
        block_align: Size of a container's header block.
        magic: The 8-byte checkpoint magic.
        version: The checkpoint version written and accepted.

    Raises:
        ValueError: The area cannot hold two containers of two blocks each.
    """

    def __init__(
        self,
        file: BlockFile,
        *,
        meta_total_bytes: int,
        block_align: int,
        magic: bytes,
        version: int,
    ) -> None:
        if len(magic) != 8:
            raise ValueError("the checkpoint magic is 8 bytes")
        self.container_bytes = meta_total_bytes // 2 // block_align * block_align
        if self.container_bytes < 2 * block_align:
            raise ValueError(
                f"meta_total_bytes must hold two containers of two blocks: "
                f"at least {4 * block_align} bytes"
            )
        self.file = file
        self.block_align = block_align
        self.magic = magic
        self.version = version

    @property
    def max_payload_bytes(self) -> int:
        """The largest index payload one container holds."""
        return self.container_bytes - self.block_align

    def write(self, seq: int, payload: bytes) -> None:
        """Write checkpoint ``seq`` into container ``seq % 2``, durably.

        Raises:
            CheckpointTooLarge: ``payload`` does not fit a container.
        """
        if len(payload) > self.max_payload_bytes:
            raise CheckpointTooLarge(
                f"the index checkpoint needs {len(payload)} bytes; a container holds "
                f"{self.max_payload_bytes} (raise meta_total_bytes)"
            )
        start = (seq % 2) * self.container_bytes
        self.file.write(start + self.block_align, [memoryview(payload)])
        self.file.sync()  # also makes the slots the index points at durable
        header = bytearray(self.block_align)
        CONTAINER_HEADER.pack_into(
            header, 0, self.magic, self.version, seq, len(payload), zlib.crc32(payload)
        )
        self.file.write(start, [memoryview(header)])
        self.file.sync()

    def erase(self) -> None:
        """Zero both header blocks: no checkpoint survives."""
        for container in (0, 1):
            offset = container * self.container_bytes
            self.file.write(offset, [memoryview(bytearray(self.block_align))])
        self.file.sync()

    def recover(self, layout: dict[str, Any], total_slots: int, max_length: int) -> Recovery:
        """The index of the newest valid checkpoint, if its version and layout match.

        Args:
            layout: The adapter's layout fields; the checkpoint's must be equal.
            total_slots: Entries at or beyond this slot are dropped (a smaller device).
            max_length: Entries longer than this are dropped.
        """
        found = [item for item in (self._read(0), self._read(1)) if item is not None]
        if not found:
            return Recovery()
        newest = max(found, key=lambda item: item.seq)
        recovery = Recovery(next_seq=newest.seq + 1)
        where = f"checkpoint seq {newest.seq} (container {newest.container})"
        if newest.version != self.version:
            recovery.reason = f"{where} has version {newest.version}, not {self.version}: ignored"
            return recovery
        try:
            document = json.loads(newest.payload)
            saved_layout, rows = document["layout"], document["entries"]
            if not isinstance(rows, list):
                raise ValueError("entries is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            recovery.reason = f"{where} is not a valid index ({exc}): ignored"
            return recovery
        if saved_layout != layout:
            differ = sorted(
                name
                for name in set(layout) | set(saved_layout or {})
                if (saved_layout or {}).get(name) != layout.get(name)
            )
            recovery.reason = f"{where} has another layout ({', '.join(differ)}): ignored"
            return recovery
        used: set[int] = set()
        for row in rows:
            try:
                key, entry = decode_row(row)
            except ValueError:
                recovery.dropped += 1
                continue
            if entry.slot >= total_slots or entry.length > max_length or entry.slot in used:
                recovery.dropped += 1
                continue
            used.add(entry.slot)
            recovery.entries.pop(key, None)  # a key listed twice keeps its last row
            recovery.entries[key] = entry
        recovery.seq = newest.seq
        recovery.reason = f"{where}: {len(recovery.entries)} objects"
        return recovery

    def _read(self, container: int) -> _Found | None:
        """Container ``container``'s checkpoint, or None without a good magic and CRC."""
        start = container * self.container_bytes
        header = bytearray(self.block_align)
        self.file.read_into(start, [memoryview(header)])
        magic, version, seq, length, crc = CONTAINER_HEADER.unpack_from(header)
        if magic != self.magic:
            return None
        if length > self.max_payload_bytes:
            logger.warning("raw_block: container %d claims %d bytes: ignored", container, length)
            return None
        payload = bytearray(length)
        self.file.read_into(start + self.block_align, [memoryview(payload)])
        if zlib.crc32(payload) != crc:
            logger.warning(
                "raw_block: checkpoint seq %d (container %d) fails its CRC", seq, container
            )
            return None
        return _Found(container, seq, version, bytes(payload))
