"""Object keys of a lookup's prefix: chunk-major order, rows, and the bounded memo."""

from __future__ import annotations

import msgspec

from lmcache_core.engine import chunk_keys as module
from lmcache_core.engine.chunk_keys import ChunkKeys
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.protocol.types import WireCacheKey

CHUNK = 4


def wire_key(
    chunks: int, *, worker_id: int | None, world_size: int, salt: str = ""
) -> WireCacheKey:
    tokens = list(range(1, chunks * CHUNK + 1))
    return WireCacheKey(
        model_name="m",
        world_size=world_size,
        worker_id=worker_id,
        token_ids=msgspec.Raw(msgspec.msgpack.encode(tokens)),
        start=0,
        end=len(tokens),
        request_id="r",
        cache_salt=salt,
    )


def test_prefix_keys_are_chunk_major_with_one_row_per_chunk() -> None:
    keys = ChunkKeys(TokenHashCache(make_hasher("blake3"), CHUNK))
    key = wire_key(3, worker_id=None, world_size=2)
    hashes = [bytes([i]) * 32 for i in range(3)]
    flat, rows = keys.prefix_keys(key, hashes)
    rank0, rank1 = keys.keys(key, hashes, 0), keys.keys(key, hashes, 1)
    assert rows == [[rank0[i], rank1[i]] for i in range(3)]
    assert flat == [k for row in rows for k in row]
    single = wire_key(3, worker_id=1, world_size=2)
    assert keys.prefix_keys(single, hashes) == (rank1, [[k] for k in rank1])


def test_prefix_keys_are_remembered_per_prefix_and_namespace_within_bounds() -> None:
    keys = ChunkKeys(TokenHashCache(make_hasher("blake3"), CHUNK))
    key = wire_key(2, worker_id=None, world_size=1)
    hashes = [b"a" * 32, b"b" * 32]
    first = keys.prefix_keys(key, hashes)
    assert keys.prefix_keys(key, hashes) is first  # the same lists: nothing built again
    salted = keys.prefix_keys(wire_key(2, worker_id=None, world_size=1, salt="s"), hashes)
    assert salted is not first and salted[0][0].cache_salt == "s"
    assert keys.prefix_keys(key, hashes[:1]) == (first[0][:1], first[1][:1])  # a shorter one
    long = [bytes([i % 256]) * 32 for i in range(module.PREFIX_MEMO_MAX_KEYS + 1)]
    assert keys.prefix_keys(key, long) is not keys.prefix_keys(key, long)  # too long to keep
    for n in range(module.PREFIX_MEMO_ENTRIES + 1):
        keys.prefix_keys(key, [n.to_bytes(32, "big")])
    assert len(keys._prefixes) == module.PREFIX_MEMO_ENTRIES
    assert keys.prefix_keys(key, hashes) is not first  # the oldest fell out
