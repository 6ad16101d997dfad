"""Chunk hashers (``--hash-algorithm``) and the per-request hash memo.

A chunk's hash chains from the previous chunk's hash, so it identifies the whole
prefix up to and including that chunk. Only complete chunks are hashed. The
``blake3`` scheme is byte-for-byte upstream LMCache's, so keys agree across
implementations.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import threading
from array import array
from collections.abc import Sequence
from typing import Protocol

import blake3

ALGORITHMS = ("builtin", "sha256_cbor", "blake3")
SHA256_CBOR_DEFAULT_SEED = "0"
"""Seed of the first parent when PYTHONHASHSEED is unset (vLLM would pick random bytes)."""


class ChunkHasher(Protocol):
    """Hashes one chunk of tokens given its parent's hash."""

    name: str
    none_hash: bytes
    """The parent of the first chunk."""

    def chain(self, parent: bytes, tokens: Sequence[int]) -> bytes:
        """The hash of ``tokens`` following a prefix whose hash is ``parent``."""
        ...


def pack_tokens(tokens: Sequence[int]) -> bytes:
    """Tokens as big-endian uint32, as upstream hashes them.

    Raises:
        ValueError: A token id is negative or does not fit in 32 bits.
    """
    try:
        packed = array("I", tokens)
    except OverflowError:
        raise ValueError("token ids must be integers in [0, 2**32)") from None
    if packed.itemsize != 4:  # pragma: no cover - no such platform in practice
        return struct.pack(f">{len(tokens)}I", *tokens)
    if sys.byteorder == "little":
        packed.byteswap()
    return packed.tobytes()


class Blake3Hasher:
    """``blake3(parent || tokens as big-endian uint32)``, 32-byte digests."""

    name = "blake3"
    # Upstream's convention: the hash of an int parent 0 (8-byte big-endian) and token 0.
    none_hash = blake3.blake3(bytes(12)).digest()

    def chain(self, parent: bytes, tokens: Sequence[int]) -> bytes:
        """See :class:`ChunkHasher`."""
        return self.chain_packed(parent, pack_tokens(tokens))

    @staticmethod
    def chain_packed(parent: bytes, packed: bytes | memoryview) -> bytes:
        """Like :meth:`chain` for tokens already packed with :func:`pack_tokens`."""
        hasher = blake3.blake3(parent)
        hasher.update(packed)
        return hasher.digest()


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise ValueError(f"{value} does not fit in a CBOR head")


def canonical_cbor(value: object) -> bytes:  # noqa: PLR0911 - one return per CBOR type
    """Canonical CBOR (RFC 8949 §4.2.1) of None, bool, int, str, bytes and sequences.

    Enough for ``(parent, tokens, None)``; shortest-form heads, as ``cbor2``'s
    ``canonical=True`` writes them.
    """
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return _cbor_head(0, value) if value >= 0 else _cbor_head(1, -1 - value)
    if isinstance(value, bytes):
        return _cbor_head(2, len(value)) + value
    if isinstance(value, str):
        data = value.encode()
        return _cbor_head(3, len(data)) + data
    if isinstance(value, (tuple, list)):
        return _cbor_head(4, len(value)) + b"".join(canonical_cbor(item) for item in value)
    raise TypeError(f"cannot CBOR-encode {type(value).__name__}")


class Sha256CborHasher:
    """vLLM's ``sha256_cbor``: sha256 of the canonical CBOR of ``(parent, tokens, None)``.

    The first parent is ``sha256_cbor(PYTHONHASHSEED)``, as in vLLM when the seed
    is set; without it the seed ``"0"`` is used instead of vLLM's random bytes, so
    keys are stable across restarts and the same on every server.
    """

    name = "sha256_cbor"

    def __init__(self, seed: str | None = None) -> None:
        chosen = seed if seed is not None else os.environ.get("PYTHONHASHSEED")
        self.seed = chosen if chosen is not None else SHA256_CBOR_DEFAULT_SEED
        self.none_hash = hashlib.sha256(canonical_cbor(self.seed)).digest()

    def chain(self, parent: bytes, tokens: Sequence[int]) -> bytes:
        """See :class:`ChunkHasher`."""
        if any(t < 0 or t >= 1 << 32 for t in tokens):
            raise ValueError("token ids must be integers in [0, 2**32)")
        return hashlib.sha256(canonical_cbor((parent, tuple(tokens), None))).digest()


class BuiltinHasher:
    """Python's ``hash((parent, tokens, None))`` as 8 big-endian bytes.

    Only stable across processes with the same ``PYTHONHASHSEED``.
    """

    name = "builtin"
    none_hash = hash((0, (0,), None)).to_bytes(8, "big", signed=True)

    def chain(self, parent: bytes, tokens: Sequence[int]) -> bytes:
        """See :class:`ChunkHasher`."""
        parent_int = int.from_bytes(parent, "big", signed=True)
        return hash((parent_int, tuple(tokens), None)).to_bytes(8, "big", signed=True)


def make_hasher(algorithm: str) -> ChunkHasher:
    """The hasher selected by ``--hash-algorithm``.

    Raises:
        ValueError: Unknown algorithm.
    """
    if algorithm == "blake3":
        return Blake3Hasher()
    if algorithm == "sha256_cbor":
        return Sha256CborHasher()
    if algorithm == "builtin":
        return BuiltinHasher()
    raise ValueError(f"unknown hash algorithm {algorithm!r}; choices: {', '.join(ALGORITHMS)}")


def seed_identity(hasher: ChunkHasher) -> str | None:
    """What ``hasher``'s chain depends on besides the tokens, as a client names it.

    ``sha256_cbor``: its seed; ``builtin``: ``PYTHONHASHSEED`` (None when unset:
    the process's hashes are then random, and nobody else can reproduce them);
    ``blake3``: the empty string (it has no seed).
    """
    if isinstance(hasher, Sha256CborHasher):
        return hasher.seed
    if isinstance(hasher, BuiltinHasher):
        return os.environ.get("PYTHONHASHSEED")
    return ""


def chunk_hashes(
    hasher: ChunkHasher,
    tokens: Sequence[int],
    chunk_size: int,
    *,
    start_chunk: int = 0,
    parent: bytes | None = None,
    num_chunks: int | None = None,
) -> list[bytes]:
    """Hashes of the complete chunks of ``tokens`` from chunk ``start_chunk`` on.

    Args:
        hasher: The algorithm.
        tokens: The whole token list (from token 0).
        chunk_size: Tokens per chunk.
        start_chunk: First chunk to hash; ``parent`` must then be the hash of the
            chunk before it.
        parent: The previous chunk's hash (``None`` for the first chunk).
        num_chunks: Stop after this many complete chunks (all of them when None).

    Returns:
        One hash per chunk; a trailing partial chunk is ignored.
    """
    total = len(tokens) // chunk_size
    if num_chunks is not None:
        total = min(total, num_chunks)
    previous = hasher.none_hash if parent is None else parent
    result: list[bytes] = []
    if isinstance(hasher, Blake3Hasher):
        begin, end = start_chunk * chunk_size, total * chunk_size
        packed = memoryview(pack_tokens(tokens[begin:end]))
        step = chunk_size * 4
        for offset in range(0, len(packed), step):
            previous = hasher.chain_packed(previous, packed[offset : offset + step])
            result.append(previous)
        return result
    for index in range(start_chunk, total):
        previous = hasher.chain(previous, tokens[index * chunk_size : (index + 1) * chunk_size])
        result.append(previous)
    return result


class RequestHashes:
    """The chunk hashes of one request, recomputed only where its tokens changed.

    Upstream kept stale hashes when a request id was reused with other tokens; this
    memo compares the new tokens with the ones it hashed, chunk by chunk, and
    reuses only the prefix that is still identical.
    """

    def __init__(self, hasher: ChunkHasher, chunk_size: int) -> None:
        self.hasher = hasher
        self.chunk_size = chunk_size
        self._tokens: Sequence[int] = []
        self._hashes: list[bytes] = []
        self._lock = threading.Lock()

    def hashes(self, tokens: Sequence[int], num_chunks: int | None = None) -> list[bytes]:
        """Hashes of the first ``num_chunks`` complete chunks (all when None)."""
        size = self.chunk_size
        wanted = len(tokens) // size if num_chunks is None else min(num_chunks, len(tokens) // size)
        with self._lock:
            valid = 0
            limit = min(len(self._hashes), wanted)
            while valid < limit and (
                tokens[valid * size : (valid + 1) * size]
                == self._tokens[valid * size : (valid + 1) * size]
            ):
                valid += 1
            if valid < wanted:
                parent = self._hashes[valid - 1] if valid else None
                fresh = chunk_hashes(
                    self.hasher, tokens, size, start_chunk=valid, parent=parent, num_chunks=wanted
                )
                self._hashes[valid:] = fresh
                # A slice is a copy already (a list's, or a uint32 array's: no ints built).
                self._tokens = tokens[: wanted * size]
            return self._hashes[:wanted]
