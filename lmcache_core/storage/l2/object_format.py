"""The header every framed L2 object carries, so a bad object is a miss, never wrong KV.

Layout (little-endian), 48 bytes, then the payload:

====== ======= ============================================================
offset  size   field
====== ======= ============================================================
0       8      magic ``LMCL2OB1``
8       4      format version (1)
12      4      flags (0)
16      16     key digest: blake3 of the object key's canonical bytes
32      8      payload length
40      8      checksum: the first 8 bytes of blake3 of the payload
====== ======= ============================================================

A torn write, a truncated file, flipped bytes or an object stored under another
key all fail :func:`unframe`. The adapter option ``"format": "raw"`` skips the
header for byte-compatibility with stores written by upstream LMCache.
"""

from __future__ import annotations

import struct

import blake3

from lmcache_core.storage.keys import ObjectKey

MAGIC = b"LMCL2OB1"
VERSION = 1
_HEADER = struct.Struct("<8sII16sQ8s")
HEADER_SIZE = _HEADER.size


class CorruptObject(ValueError):
    """A stored object failed its header check (treated as a miss)."""


def key_digest(key: ObjectKey) -> bytes:
    """A 16-byte digest naming the key (model, rank, group, salt and chunk hash)."""
    text = f"{key.model_name}@{key.kv_rank:08x}@{key.object_group_id:x}@{key.cache_salt}@"
    return blake3.blake3(text.encode() + key.chunk_hash).digest(length=16)


def frame(key: ObjectKey, payload: bytes | memoryview) -> bytes:
    """The header for ``payload`` stored under ``key`` (write it before the payload)."""
    checksum = blake3.blake3(payload).digest(length=8)
    return _HEADER.pack(MAGIC, VERSION, 0, key_digest(key), len(payload), checksum)


def check_header(key: ObjectKey, header: bytes | memoryview, payload_size: int) -> None:
    """Validate a header before reading the payload it describes.

    Raises:
        CorruptObject: Wrong magic, version, key or length.
    """
    if len(header) < HEADER_SIZE:
        raise CorruptObject("truncated header")
    magic, version, _flags, digest, length, _checksum = _HEADER.unpack(header[:HEADER_SIZE])
    if magic != MAGIC or version != VERSION:
        raise CorruptObject("not an LMCache L2 object (magic or version)")
    if digest != key_digest(key):
        raise CorruptObject("object stored under another key")
    if length != payload_size:
        raise CorruptObject(f"payload is {length} bytes, expected {payload_size}")


def verify(key: ObjectKey, header: bytes | memoryview, payload: bytes | memoryview) -> None:
    """Validate a header and its payload's checksum.

    Raises:
        CorruptObject: Any mismatch.
    """
    check_header(key, header, len(payload))
    expected = _HEADER.unpack(header[:HEADER_SIZE])[5]
    if blake3.blake3(payload).digest(length=8) != expected:
        raise CorruptObject("payload checksum mismatch")
