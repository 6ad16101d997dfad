"""The framed L2 object header: a round trip, and every kind of damage is caught."""

from __future__ import annotations

import struct

import blake3
import pytest
import xxhash

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2 import object_format
from lmcache_core.storage.l2.object_format import (
    FLAG_XXH3,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Checksum,
    CorruptObject,
    check_header,
    frame,
    key_digest,
    verify,
)

KEY = ObjectKey(b"\x01" * 32, "org/model", 0x01000100, 0, "tenant-a")
PAYLOAD = bytes(range(256)) * 17


def test_header_layout_and_round_trip() -> None:
    header = frame(KEY, PAYLOAD)
    assert len(header) == HEADER_SIZE == 48
    magic, version, flags, digest, length = struct.unpack_from("<8sII16sQ", header)
    assert (magic, version, flags) == (MAGIC, VERSION, FLAG_XXH3)  # new frames: XXH3
    assert digest == key_digest(KEY)
    assert length == len(PAYLOAD)
    check_header(KEY, header, len(PAYLOAD))
    verify(KEY, header, PAYLOAD)
    verify(KEY, memoryview(header), memoryview(PAYLOAD))


def test_empty_payload_round_trips() -> None:
    verify(KEY, frame(KEY, b""), b"")


@pytest.mark.parametrize(
    "other",
    [
        KEY._replace(chunk_hash=b"\x02" * 32),
        KEY._replace(model_name="org/other"),
        KEY._replace(kv_rank=0x02010201),
        KEY._replace(object_group_id=1),
        KEY._replace(cache_salt=""),
        KEY._replace(cache_salt="tenant-b"),
    ],
)
def test_every_key_field_changes_the_digest(other: ObjectKey) -> None:
    assert key_digest(other) != key_digest(KEY)
    with pytest.raises(CorruptObject, match="another key"):
        verify(other, frame(KEY, PAYLOAD), PAYLOAD)


def flipped(data: bytes, offset: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def test_bad_magic() -> None:
    with pytest.raises(CorruptObject, match="magic"):
        verify(KEY, flipped(frame(KEY, PAYLOAD), 0), PAYLOAD)


def test_bad_version() -> None:
    header = bytearray(frame(KEY, PAYLOAD))
    struct.pack_into("<I", header, 8, VERSION + 1)
    with pytest.raises(CorruptObject, match="version"):
        verify(KEY, bytes(header), PAYLOAD)


def test_flipped_key_digest() -> None:
    with pytest.raises(CorruptObject, match="another key"):
        verify(KEY, flipped(frame(KEY, PAYLOAD), 20), PAYLOAD)


@pytest.mark.parametrize("kept", [0, 1, HEADER_SIZE - 1])
def test_truncated_header(kept: int) -> None:
    with pytest.raises(CorruptObject, match="truncated"):
        verify(KEY, frame(KEY, PAYLOAD)[:kept], PAYLOAD)


@pytest.mark.parametrize("kept", [0, 1, len(PAYLOAD) - 1])
def test_truncated_payload(kept: int) -> None:
    with pytest.raises(CorruptObject, match="expected"):
        verify(KEY, frame(KEY, PAYLOAD), PAYLOAD[:kept])


def test_payload_longer_than_the_header_says() -> None:
    with pytest.raises(CorruptObject, match="expected"):
        verify(KEY, frame(KEY, PAYLOAD), PAYLOAD + b"\x00")


def test_check_header_alone_checks_the_length() -> None:
    header = frame(KEY, PAYLOAD)
    with pytest.raises(CorruptObject, match="expected"):
        check_header(KEY, header, len(PAYLOAD) + 1)


@pytest.mark.parametrize("offset", [0, 1000, len(PAYLOAD) - 1])
def test_flipped_payload_byte_fails_the_checksum(offset: int) -> None:
    header = frame(KEY, PAYLOAD)
    check_header(KEY, header, len(PAYLOAD))  # the header alone cannot tell
    with pytest.raises(CorruptObject, match="checksum"):
        verify(KEY, header, flipped(PAYLOAD, offset))


def test_flipped_checksum_byte() -> None:
    with pytest.raises(CorruptObject, match="checksum"):
        verify(KEY, flipped(frame(KEY, PAYLOAD), HEADER_SIZE - 1), PAYLOAD)


def test_corrupt_object_is_a_value_error() -> None:
    assert issubclass(CorruptObject, ValueError)


def test_new_frames_carry_xxh3_of_the_payload() -> None:
    header = frame(KEY, PAYLOAD)
    assert header[40:] == xxhash.xxh3_64_intdigest(PAYLOAD).to_bytes(8, "little")


def old_blake3_frame(payload: bytes) -> bytes:
    """A frame as written before XXH3 (flags 0, blake3), built by hand from the layout."""
    digest = blake3.blake3(payload).digest(length=8)
    return struct.pack("<8sII16sQ8s", MAGIC, VERSION, 0, key_digest(KEY), len(payload), digest)


def test_frames_written_before_xxh3_are_still_read() -> None:
    old = old_blake3_frame(PAYLOAD)
    assert frame(KEY, PAYLOAD, Checksum.BLAKE3) == old
    verify(KEY, old, PAYLOAD)
    with pytest.raises(CorruptObject, match="checksum"):
        verify(KEY, old, flipped(PAYLOAD, 7))


def test_the_flag_names_the_checksum_so_a_swapped_flag_fails() -> None:
    header = bytearray(frame(KEY, PAYLOAD))
    struct.pack_into("<I", header, 12, 0)  # claims blake3 over an XXH3 checksum
    with pytest.raises(CorruptObject, match="checksum"):
        verify(KEY, bytes(header), PAYLOAD)


def test_unknown_flags_are_refused() -> None:
    header = bytearray(frame(KEY, PAYLOAD))
    struct.pack_into("<I", header, 12, 0x2 | FLAG_XXH3)
    with pytest.raises(CorruptObject, match="flags"):
        verify(KEY, bytes(header), PAYLOAD)


def test_write_checksum_selects_the_format_of_new_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(object_format, "write_checksum", Checksum.BLAKE3)
    assert frame(KEY, PAYLOAD) == old_blake3_frame(PAYLOAD)
