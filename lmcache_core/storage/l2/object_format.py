"""The header every framed L2 object carries, so a bad object is a miss, never wrong KV.

Layout (little-endian), 48 bytes, then the payload:

====== ======= ============================================================
offset  size   field
====== ======= ============================================================
0       8      magic ``LMCL2OB1``
8       4      format version (1)
12      4      flags: bit 0 set = the checksum is XXH3-64, clear = blake3
16      16     key digest: blake3 of the object key's canonical bytes
32      8      payload length
40      8      checksum of the payload: XXH3-64 (little-endian) when flag
               bit 0 is set, else the first 8 bytes of blake3
====== ======= ============================================================

New frames carry XXH3-64 (about ten times blake3's single-thread speed, so the
checksum no longer bounds an ``fs`` store); frames written before it (flags 0,
blake3) are still read and verified. The header names its own checksum, so a
reader never guesses. A torn write, a truncated file, flipped bytes or an
object stored under another key all fail :func:`verify`. The adapter option
``"format": "raw"`` skips the header for byte-compatibility with stores written
by upstream LMCache.
"""

from __future__ import annotations

import enum
import struct

import blake3
import xxhash

from lmcache_core.storage.keys import ObjectKey

MAGIC = b"LMCL2OB1"
VERSION = 1
_HEADER = struct.Struct("<8sII16sQ8s")
HEADER_SIZE = _HEADER.size
FLAG_XXH3 = 0x1
_KNOWN_FLAGS = FLAG_XXH3


class Checksum(enum.Enum):
    """The payload checksums a frame may carry."""

    BLAKE3 = "blake3"
    XXH3 = "xxh3"


write_checksum = Checksum.XXH3
"""The checksum new frames get (benchmarks set ``BLAKE3`` to measure the old format)."""


class CorruptObject(ValueError):
    """A stored object failed its header check (treated as a miss)."""


def key_digest(key: ObjectKey) -> bytes:
    """A 16-byte digest naming the key (model, rank, group, salt and chunk hash)."""
    text = f"{key.model_name}@{key.kv_rank:08x}@{key.object_group_id:x}@{key.cache_salt}@"
    return blake3.blake3(text.encode() + key.chunk_hash).digest(length=16)


def payload_checksum(payload: bytes | memoryview, checksum: Checksum) -> bytes:
    """The 8 checksum bytes of ``payload``."""
    if checksum is Checksum.XXH3:
        return xxhash.xxh3_64_intdigest(payload).to_bytes(8, "little")
    return blake3.blake3(payload).digest(length=8)


def frame(key: ObjectKey, payload: bytes | memoryview, checksum: Checksum | None = None) -> bytes:
    """The header for ``payload`` stored under ``key`` (write it before the payload).

    Args:
        key: The object's key.
        payload: Its bytes.
        checksum: The checksum to carry (default: :data:`write_checksum`, XXH3).
    """
    kind = checksum or write_checksum
    flags = FLAG_XXH3 if kind is Checksum.XXH3 else 0
    digest = payload_checksum(payload, kind)
    return _HEADER.pack(MAGIC, VERSION, flags, key_digest(key), len(payload), digest)


def check_header(key: ObjectKey, header: bytes | memoryview, payload_size: int) -> None:
    """Validate a header before reading the payload it describes.

    Raises:
        CorruptObject: Wrong magic, version, flags, key or length.
    """
    if len(header) < HEADER_SIZE:
        raise CorruptObject("truncated header")
    magic, version, flags, digest, length, _checksum = _HEADER.unpack(header[:HEADER_SIZE])
    if magic != MAGIC or version != VERSION:
        raise CorruptObject("not an LMCache L2 object (magic or version)")
    if flags & ~_KNOWN_FLAGS:
        raise CorruptObject(f"unknown header flags {flags:#x}")
    if digest != key_digest(key):
        raise CorruptObject("object stored under another key")
    if length != payload_size:
        raise CorruptObject(f"payload is {length} bytes, expected {payload_size}")


def verify(key: ObjectKey, header: bytes | memoryview, payload: bytes | memoryview) -> None:
    """Validate a header and its payload's checksum (the one the header names).

    Raises:
        CorruptObject: Any mismatch.
    """
    check_header(key, header, len(payload))
    _magic, _version, flags, _digest, _length, expected = _HEADER.unpack(header[:HEADER_SIZE])
    kind = Checksum.XXH3 if flags & FLAG_XXH3 else Checksum.BLAKE3
    if payload_checksum(payload, kind) != expected:
        raise CorruptObject("payload checksum mismatch")
