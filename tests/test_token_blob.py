"""The uint32 blob form of a key's tokens: packed, validated and decoded like the list form."""

from __future__ import annotations

import msgspec
import pytest

from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.protocol.types import (
    WireCacheKey,
    decode_token_ids,
    pack_token_blob,
    pack_token_ids,
    raw_array_length,
    token_blob,
)

C = 16


@pytest.mark.parametrize("count", [0, 3, 64, 20000])  # bin 8, bin 16 and bin 32 headers
def test_a_blob_holds_the_tokens_in_order(count: int) -> None:
    tokens = [(i * 2654435761) % (1 << 32) for i in range(count)]
    raw = bytes(pack_token_blob(tokens))
    assert raw[0] in (0xC4, 0xC5, 0xC6)
    assert raw_array_length(raw) == count
    assert list(decode_token_ids(raw)) == tokens
    payload = token_blob(raw)
    assert payload is not None
    assert bytes(payload) == b"".join(t.to_bytes(4, "little") for t in tokens)
    assert token_blob(bytes(pack_token_ids(tokens))) is None  # the list form is not a blob


def test_malformed_blobs_are_refused() -> None:
    for bad in (
        msgspec.msgpack.encode(b"abc"),  # not whole uint32 values
        msgspec.msgpack.encode(b"abcd") + b"x",  # trailing bytes
        b"\xc5\x00",  # a truncated header
        b"\xc4\x08abcd",  # shorter than it says
    ):
        with pytest.raises(ValueError, match="token_ids"):
            token_blob(bad)
        with pytest.raises(ValueError):
            raw_array_length(bad)
    with pytest.raises(OverflowError):
        pack_token_blob([1 << 32])


def test_a_key_with_a_blob_is_bounded_by_its_token_count() -> None:
    raw = pack_token_blob(list(range(2 * C)))
    fields = {"model_name": "m", "world_size": 1, "worker_id": None, "request_id": "r"}
    assert WireCacheKey(**fields, token_ids=raw, start=0, end=2 * C).end == 2 * C
    with pytest.raises(ValueError, match="past the 32 tokens"):
        WireCacheKey(**fields, token_ids=raw, start=0, end=2 * C + 1)


def test_the_chunk_hashes_are_the_same_in_either_form() -> None:
    tokens = [70000 + i for i in range(5 * C + 3)]
    cache = TokenHashCache(make_hasher("blake3"), C)
    from_list = cache.hashes(bytes(pack_token_ids(tokens)), 5)
    from_blob = cache.hashes(bytes(pack_token_blob(tokens)), 5)
    assert from_blob == from_list and len(from_list) == 5
