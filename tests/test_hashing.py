"""Chunk hashers: upstream's blake3 vectors, sha256_cbor against cbor2, the memos."""

from __future__ import annotations

import array
import hashlib
import os
import subprocess
import sys

import cbor2
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmcache_core.engine import token_cache
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import (
    Blake3Hasher,
    RequestHashes,
    Sha256CborHasher,
    canonical_cbor,
    chunk_hashes,
    make_hasher,
    pack_tokens,
)

# Upstream LMCache 0.5.6, blake3, chunk size 4, tokens 1..8 (the reference's vectors).
NONE_HASH = "7e3eff9ef7613a50340eb12677ee03b83ac759fcba9bb32705f07248d56d473b"
H1 = "6309ed506b8721905753f5c73c070bb21c3aafbd9b474b1e231f41368b71123c"
H2 = "98efc76eafb06cfe774c31ff151f300b61a614c27982a211bb8cdbd83a8c0e19"


def test_blake3_matches_the_upstream_vectors() -> None:
    hasher = make_hasher("blake3")
    assert hasher.none_hash.hex() == NONE_HASH
    assert [h.hex() for h in chunk_hashes(hasher, list(range(1, 9)), 4)] == [H1, H2]
    assert hasher.chain(bytes.fromhex(H1), [5, 6, 7, 8]).hex() == H2


def test_only_complete_chunks_are_hashed() -> None:
    hasher = make_hasher("blake3")
    assert len(chunk_hashes(hasher, list(range(11)), 4)) == 2
    assert chunk_hashes(hasher, list(range(3)), 4) == []
    assert len(chunk_hashes(hasher, list(range(100)), 4, num_chunks=3)) == 3


@pytest.mark.parametrize("bad", [[-1], [2**32], [1, 2**40]])
def test_tokens_must_fit_uint32(bad: list[int]) -> None:
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\)"):
        pack_tokens(bad)
    with pytest.raises(ValueError):
        make_hasher("sha256_cbor").chain(b"x", bad)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=300))
def test_pack_tokens_is_big_endian_uint32(tokens: list[int]) -> None:
    import struct

    assert pack_tokens(tokens) == struct.pack(f">{len(tokens)}I", *tokens)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.binary(max_size=40)
        | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=5),
        max_leaves=20,
    )
)
def test_canonical_cbor_matches_cbor2(value: object) -> None:
    assert canonical_cbor(value) == cbor2.dumps(value, canonical=True)


def test_sha256_cbor_is_vllms_scheme_and_deterministic() -> None:
    hasher = Sha256CborHasher(seed="0")
    assert hasher.none_hash == hashlib.sha256(cbor2.dumps("0", canonical=True)).digest()
    tokens = list(range(256))
    expected = hashlib.sha256(
        cbor2.dumps((hasher.none_hash, tuple(tokens), None), canonical=True)
    ).digest()
    assert chunk_hashes(hasher, tokens, 256) == [expected]
    assert Sha256CborHasher(seed="1").none_hash != hasher.none_hash


def test_sha256_cbor_is_stable_across_processes_without_pythonhashseed() -> None:
    script = (
        "from lmcache_core.hashing import make_hasher, chunk_hashes;"
        "print(chunk_hashes(make_hasher('sha256_cbor'), list(range(512)), 256)[-1].hex())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    runs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(runs) == 1


def test_builtin_hasher_chains_eight_byte_hashes() -> None:
    hasher = make_hasher("builtin")
    hashes = chunk_hashes(hasher, list(range(8)), 4)
    assert [len(h) for h in hashes] == [8, 8]
    assert hashes[0] != hashes[1]


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown hash algorithm 'md5'"):
        make_hasher("md5")


def test_request_memo_recomputes_from_the_first_changed_chunk() -> None:
    hasher = Blake3Hasher()
    memo = RequestHashes(hasher, 4)
    first = list(range(12))
    assert memo.hashes(first) == chunk_hashes(hasher, first, 4)
    changed = [*first[:4], 99, *first[5:]]  # chunk 1 differs: chunks 1 and 2 change
    again = memo.hashes(changed)
    assert again == chunk_hashes(hasher, changed, 4)
    assert (
        again[0] == chunk_hashes(hasher, first, 4)[0]
        and again[1] != chunk_hashes(hasher, first, 4)[1]
    )
    longer = [*changed, 1, 2, 3, 4]
    assert memo.hashes(longer) == chunk_hashes(hasher, longer, 4)


def test_token_cache_hits_by_content_and_rejects_bad_tokens() -> None:
    cache = TokenHashCache(Blake3Hasher(), 4, entries=2)
    raw = msgspec.msgpack.encode(list(range(1, 9)))
    assert [h.hex() for h in cache.hashes(raw, 2)] == [H1, H2]
    assert cache.hashes(raw, 1) == [bytes.fromhex(H1)]
    assert (cache.hits, cache.misses) == (1, 1)
    with pytest.raises(ValueError, match="3 chunks requested"):
        cache.hashes(raw, 3)
    with pytest.raises(ValueError, match="token_ids"):
        cache.hashes(msgspec.msgpack.encode(["a", "b"]), 0)
    for n in range(3):  # bounded: older entries fall out
        cache.hashes(msgspec.msgpack.encode(list(range(n, n + 8))), 2)
    assert len(cache._cache) == 2


def test_token_cache_compares_the_bytes_behind_a_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every list gets the same fingerprint: only the kept bytes tell them apart.
    monkeypatch.setattr(token_cache, "_fingerprint", lambda _raw: 7)
    cache = TokenHashCache(Blake3Hasher(), 4)
    first = msgspec.msgpack.encode(list(range(1, 9)))
    other = msgspec.msgpack.encode(list(range(2, 10)))
    assert [h.hex() for h in cache.hashes(first, 2)] == [H1, H2]
    assert cache.hashes(other, 2) == chunk_hashes(Blake3Hasher(), list(range(2, 10)), 4)
    assert (cache.hits, cache.misses) == (0, 2)  # the collision was a miss, not a wrong hit
    assert cache.hashes(memoryview(other), 2) == cache.hashes(other, 2)  # a view hits too
    assert (cache.hits, len(cache._cache), cache.held_bytes) == (2, 1, len(other))


def test_token_cache_is_bounded_by_bytes() -> None:
    lists = [msgspec.msgpack.encode(list(range(n, n + 8))) for n in range(4)]
    cache = TokenHashCache(Blake3Hasher(), 4, max_bytes=2 * len(lists[0]))
    for raw in lists:
        cache.hashes(raw, 2)
    assert len(cache._cache) == 2 and cache.held_bytes == 2 * len(lists[0])
    huge = msgspec.msgpack.encode(list(range(64)))  # longer than the whole bound: not kept
    assert len(cache.hashes(huge, 16)) == 16
    assert len(cache._cache) == 2 and cache.held_bytes == 2 * len(lists[0])
    cache.hashes(lists[3], 2)  # still there (the most recent one)
    assert cache.hits == 1


def test_token_cache_primed_with_a_decoded_list_hits_without_decoding() -> None:
    cache = TokenHashCache(Blake3Hasher(), 4, entries=2)
    tokens = list(range(1, 9))
    raw = msgspec.msgpack.encode(tokens)
    cache.prime(raw, tokens)
    assert [h.hex() for h in cache.hashes(raw, 2)] == [H1, H2]
    assert (cache.hits, cache.misses) == (1, 0)
    cache.prime(raw, [0] * 8)  # already cached: kept as it was
    assert [h.hex() for h in cache.hashes(raw, 2)] == [H1, H2]
    with pytest.raises(ValueError):
        cache.prime(msgspec.msgpack.encode([2**32] * 4), [2**32] * 4)


def test_token_cache_primed_with_a_uint32_array_hashes_as_from_the_list() -> None:
    """The blend engine shares its uint32 array: same hashes, and the memo still compares."""
    cache = TokenHashCache(Blake3Hasher(), 4, entries=2)
    tokens = list(range(1, 9))
    raw = msgspec.msgpack.encode(tokens)
    cache.prime(raw, array.array("I", tokens))
    assert [h.hex() for h in cache.hashes(raw, 2)] == [H1, H2]
    assert (cache.hits, cache.misses) == (1, 0)
    memo = RequestHashes(Blake3Hasher(), 4)
    assert [h.hex() for h in memo.hashes(array.array("I", tokens))] == [H1, H2]
    changed = memo.hashes(array.array("I", [*tokens[:4], 0, 0, 0, 0]))
    assert changed[0].hex() == H1 and changed[1].hex() != H2
    assert [h.hex() for h in memo.hashes(tokens)] == [H1, H2]  # a list after an array


def test_token_cache_primed_with_known_hashes_hashes_only_the_rest() -> None:
    """The blend engine offers the hashes of chunks a recent list shares: the same result."""
    tokens = list(range(1, 13))
    raw = msgspec.msgpack.encode(tokens)
    expected = TokenHashCache(Blake3Hasher(), 4).prime(raw, tokens)
    assert [h.hex() for h in expected[:2]] == [H1, H2] and len(expected) == 3
    cache = TokenHashCache(Blake3Hasher(), 4)
    marker = b"\x01" * 32  # not a real hash: shows the known ones are taken, not recomputed
    primed = cache.prime(raw, array.array("I", tokens), [expected[0], marker, b"extra"])
    assert primed[:2] == [expected[0], marker] and len(primed) == 3
    assert cache.hashes(raw, 3) == primed and (cache.hits, cache.misses) == (1, 0)
    assert cache.prime(raw, tokens) == primed  # cached: returned as kept
    shorter = TokenHashCache(Blake3Hasher(), 4)
    assert shorter.prime(raw, tokens, [expected[0]]) == expected  # one known, two hashed


class RecordingBinder:
    """A TokenBinder that says which hashes it holds and records what it is told."""

    def __init__(self) -> None:
        self.bound: set[bytes] = set()
        self.told: list[tuple[list[bytes], bytes]] = []

    def is_bound(self, chunk_hash: bytes) -> bool:
        return chunk_hash in self.bound

    def bind_raw(self, hashes: list[bytes], raw_tokens: bytes, chunk_size: int) -> None:
        self.told.append((list(hashes), raw_tokens))
        self.bound.update(hashes)


def test_kept_hashes_are_bound_again_only_once_their_binding_expired() -> None:
    """keep_bound: what a hit in hashes() does, for hashes an engine kept from prime()."""
    cache = TokenHashCache(Blake3Hasher(), 4, entries=2)
    raw = msgspec.msgpack.encode(list(range(1, 9)))
    cache.keep_bound([b"x"], raw)  # no binder: nothing to tell
    binder = RecordingBinder()
    cache.binder = binder
    kept = cache.prime(raw, list(range(1, 9)))
    assert binder.told == [(kept, raw)]
    cache.keep_bound(kept, raw)  # still bound: not told again
    assert len(binder.told) == 1
    binder.bound.clear()  # the log let the bindings go
    cache.keep_bound(kept, raw)
    assert binder.told[-1] == (kept, raw) and len(binder.told) == 2
    cache.keep_bound([], raw)  # nothing to bind
    assert len(binder.told) == 2
