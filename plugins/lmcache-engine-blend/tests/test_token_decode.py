"""Decoding a token list from a recent one's bytes gives exactly what msgspec gives."""

from __future__ import annotations

import array
import struct

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmcache_engine_blend.token_decode import decode_after, decode_full, token_ends

U32 = st.integers(min_value=0, max_value=2**32 - 1)
# Every width: fixint, uint8, uint16, uint32, and values near each boundary.
TOKEN = st.one_of(U32, st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1]))


def widened(tokens: list[int], wide: list[bool]) -> bytes:
    """A valid msgpack array whose chosen tokens use a longer width than the shortest."""
    out = bytearray(b"\xdd" + len(tokens).to_bytes(4, "big"))
    for token, wider in zip(tokens, wide, strict=False):
        out += b"\xcf" + struct.pack(">Q", token) if wider else msgspec.msgpack.encode(token)
    out += b"".join(msgspec.msgpack.encode(t) for t in tokens[len(wide) :])
    return bytes(out)


def reference(raw: bytes) -> list[int] | None:
    try:
        return list(decode_full(raw))
    except ValueError:
        return None


def ours(raw: bytes, base: bytes) -> list[int] | None:
    base_ids = decode_full(base)
    ends = token_ends(base, np.frombuffer(base_ids, dtype=np.uint32))
    if ends is None:
        return reference(raw)
    try:
        out = decode_after(raw, base, base_ids, ends)
    except ValueError:
        return None
    if out is None:
        return reference(raw)
    ids, new_ends, shared = out
    assert list(ids[:shared]) == list(base_ids[:shared])
    if new_ends is not None:  # the ends given for the new list are its own
        assert np.array_equal(new_ends, token_ends(raw, np.frombuffer(ids, dtype=np.uint32)))
    return list(ids)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(TOKEN, max_size=80),
    st.lists(TOKEN, max_size=40),
    st.integers(min_value=0, max_value=80),
    st.lists(st.booleans(), max_size=20),
    st.integers(min_value=-3, max_value=3),
)
def test_equal_to_msgspec_for_related_lists(
    base_tokens: list[int], tail: list[int], cut: int, wide: list[bool], trim: int
) -> None:
    """A base and a list that shares a prefix with it, with non-shortest encodings and
    truncated, padded or miscounted bytes: the same tokens as msgspec, or both refuse."""
    base = msgspec.msgpack.encode(base_tokens)
    tokens = base_tokens[:cut] + tail
    raw = widened(tokens, wide) if any(wide) else msgspec.msgpack.encode(tokens)
    if trim < 0:
        raw = raw[:trim]
    elif trim > 0:
        raw = raw + bytes([trim]) * trim
    assert ours(raw, base) == reference(raw)
    assert ours(raw, widened(base_tokens, wide)) == reference(raw)  # a base of other widths


@settings(max_examples=200, deadline=None)
@given(st.lists(TOKEN, min_size=1, max_size=60), st.binary(max_size=12), st.integers(0, 60))
def test_equal_to_msgspec_for_arbitrary_bytes_after_a_prefix(
    base_tokens: list[int], junk: bytes, cut: int
) -> None:
    base = msgspec.msgpack.encode(base_tokens)
    header = msgspec.msgpack.encode([*base_tokens[: min(cut, len(base_tokens))], 0])[:-1]
    for raw in (header + junk, base[: len(base) - 1] + junk, base + junk):
        assert ours(raw, base) == reference(raw)


def test_ends_are_known_only_for_the_shortest_encoding() -> None:
    tokens = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1]
    raw = msgspec.msgpack.encode(tokens)
    ends = token_ends(raw, np.array(tokens, dtype=np.uint32))
    assert ends is not None and ends.tolist() == [1, 2, 4, 6, 9, 12, 17, 22]
    assert token_ends(widened(tokens, [False, True]), np.array(tokens, dtype=np.uint32)) is None
    assert token_ends(raw, np.array(tokens[:-1], dtype=np.uint32)) is None  # not its decode


def test_full_decode_refuses_what_is_not_uint32() -> None:
    assert decode_full(msgspec.msgpack.encode([1, 2])) == array.array("I", [1, 2])
    for bad in ([2**32], [-1], ["a"], [True], {"a": 1}):
        with pytest.raises(ValueError, match="uint32"):
            decode_full(msgspec.msgpack.encode(bad))
