"""Decoding a token list from a recent one's bytes gives exactly what msgspec gives."""

from __future__ import annotations

import array
import struct

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmcache_engine_blend.token_decode import TokenEnds, decode_after, decode_full, token_ends

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
    out = decoded_after(raw, base, base_ids, TokenEnds(ends))
    return None if out is False else reference(raw) if out is None else list(out[0])


def decoded_after(
    raw: bytes, base: bytes, base_ids: array.array[int], base_ends: TokenEnds
) -> tuple[array.array[int], TokenEnds] | bool | None:
    """decode_after, its ends checked against the list's own; False where it refused."""
    try:
        out = decode_after(raw, base, base_ids, base_ends)
    except ValueError:
        return False
    if out is None:
        return None
    ids, new_ends, shared = out
    assert list(ids[:shared]) == list(base_ids[:shared])
    # The ends given for the new list are its own: the head's at once, all when asked past it.
    own = token_ends(raw, np.frombuffer(ids, dtype=np.uint32))
    head = new_ends.head.copy()
    full = new_ends.covering(len(raw))
    if own is not None:
        assert np.array_equal(head, own[: len(head)]) and np.array_equal(full, own)
    else:  # the rest's bytes are not the shortest encoding: only the head is known
        assert len(full) >= len(head) and np.array_equal(full[: len(head)], head)
    return ids, new_ends


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


@settings(max_examples=200, deadline=None)
@given(
    st.lists(TOKEN, min_size=1, max_size=60),
    st.lists(st.lists(TOKEN, max_size=20), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=90), min_size=4, max_size=4),
)
def test_a_chain_of_lists_each_based_on_the_last_decodes_as_msgspec(
    first: list[int], tails: list[list[int]], cuts: list[int]
) -> None:
    """Each list shares a prefix of the one before (shorter or longer than what that one
    shared with its own base): the rest's ends are found when a later list needs them."""
    tokens = first
    raw = msgspec.msgpack.encode(tokens)
    ids = decode_full(raw)
    own = token_ends(raw, np.frombuffer(ids, dtype=np.uint32))
    assert own is not None
    ends = TokenEnds(own)
    for tail, cut in zip(tails, cuts, strict=False):
        tokens = tokens[:cut] + tail
        new_raw = msgspec.msgpack.encode(tokens)
        # Not through decoded_after, which asks for every end: the rest's stay unexamined
        # until a later list shares past the head.
        out = decode_after(new_raw, raw, ids, ends)
        if out is None:  # nothing shared: decoded in full, the chain starts again
            ids = decode_full(new_raw)
            own = token_ends(new_raw, np.frombuffer(ids, dtype=np.uint32))
            assert own is not None
            ends = TokenEnds(own)
        else:
            ids, ends, _ = out
        assert list(ids) == tokens
        raw = new_raw


def decoded_base() -> tuple[list[int], bytes, array.array[int], TokenEnds]:
    """A 300-token list as a base: its tokens, bytes, decode and ends."""
    base_tokens = list(range(100, 400))
    base = msgspec.msgpack.encode(base_tokens)
    base_ids = decode_full(base)
    own = token_ends(base, np.frombuffer(base_ids, dtype=np.uint32))
    assert own is not None
    return base_tokens, base, base_ids, TokenEnds(own)


def test_the_rest_ends_are_computed_only_when_a_list_shares_past_the_head() -> None:
    base_tokens, base, base_ids, own = decoded_base()
    middle = [*base_tokens[:200], 7, 8, 9]
    out = decode_after(msgspec.msgpack.encode(middle), base, base_ids, own)
    assert out is not None
    ids, ends, shared = out
    assert shared == 200 and len(ends.head) == 200 and ends._rest is not None
    shorter = [*middle[:150], 1]  # shares less than the head: the rest stays unexamined
    raw = msgspec.msgpack.encode(middle)
    assert decode_after(msgspec.msgpack.encode(shorter), raw, ids, ends) is not None
    assert ends._rest is not None and len(ends.head) == 200
    longer = [*middle, 10]  # shares past the head: the rest's ends are found
    out = decode_after(msgspec.msgpack.encode(longer), raw, ids, ends)
    assert out is not None and out[2] == len(middle)
    assert ends._rest is None and len(ends.head) == len(middle)


def test_sharing_part_of_the_first_rest_token_leaves_the_rest_unexamined() -> None:
    base_tokens, base, base_ids, own = decoded_base()
    first = [*base_tokens[:200], 70000, 5]  # the rest starts with a 5-byte token
    raw = msgspec.msgpack.encode(first)
    out = decode_after(raw, base, base_ids, own)
    assert out is not None
    ids, ends, _ = out
    # 70001 shares 0xce and two value bytes with 70000: no whole token more.
    second = [*base_tokens[:200], 70001]
    out = decode_after(msgspec.msgpack.encode(second), raw, ids, ends)
    assert out is not None and out[2] == 200 and list(out[0]) == second
    assert ends._rest is not None
