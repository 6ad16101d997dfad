"""A msgpack token list decoded from an earlier one: only the bytes after their shared prefix.

msgspec builds a Python int per token (about 25 ns each: 0.4 ms for 64 chunks of
256 tokens), and no vectorised decoder can replace it in general: a token's
width (1, 2, 3, 5 or 9 bytes) is given by its own header byte, so where the
n-th token starts depends on every token before it, and real prompts mix widths
(token ids below and above 65536). What a server sees often, though, is a
prompt that starts like a recent one: the same documents and a new question, a
request looked up again with its new tokens, a conversation's next turn. Their
msgpack bodies share a byte prefix, and the tokens inside it are the recent
prompt's. So a list is decoded as ``base tokens[:i]`` plus msgspec's decode of
its remaining bytes only, where ``i`` counts the base's tokens whose bytes lie
wholly in the shared prefix.

That is exact, not a guess: the base was decoded by msgspec from its bytes, and
its token boundaries are known (:func:`token_ends`, checked against the bytes
themselves: the header byte at every boundary and the total length). Parsing is
deterministic, so the new list, having the same bytes up to there, has the same
tokens up to there; the rest is checked by msgspec and the uint32 range as a
full decode would be. Whatever this does not cover (no base, a base whose bytes
use other widths than the shortest, a header this module does not read) is
decoded in full by msgspec.
"""

from __future__ import annotations

import array

import msgspec
import numpy as np
import numpy.typing as npt

Ends = npt.NDArray[np.uint32]

_tokens_decoder = msgspec.msgpack.Decoder(list[int])
_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, OverflowError, TypeError)
_HEADS = np.array([0, 0, 0xCC, 0xCD, 0, 0xCE], dtype=np.uint8)
"""A token's header byte by its width (the shortest encoding of a uint32 above 0x7f)."""


def array_header(raw: bytes) -> tuple[int, int] | None:
    """``(count, header length)`` of a msgpack array, or None if ``raw`` does not start with one."""
    if not raw:
        return None
    first = raw[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC and len(raw) >= 3:
        return int.from_bytes(raw[1:3], "big"), 3
    if first == 0xDD and len(raw) >= 5:
        return int.from_bytes(raw[1:5], "big"), 5
    return None


def _header_of(count: int) -> bytes:
    """The shortest msgpack array header for ``count`` elements."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def decode_full(raw: bytes) -> array.array[int]:
    """``raw`` (a msgpack array of uint32 values) as a uint32 array, by msgspec.

    Raises:
        ValueError: ``raw`` is not a msgpack array of uint32 values.
    """
    try:
        return array.array("I", _tokens_decoder.decode(raw))
    except _ERRORS as exc:
        raise ValueError(f"token_ids must be an array of uint32 values: {exc}") from None


def token_ends(raw: bytes, ids: npt.NDArray[np.uint32]) -> Ends | None:
    """Where each token of ``raw`` ends, relative to the array's body; None if unknown.

    ``ids`` are ``raw`` decoded. The ends assume the shortest encoding of each
    value (what msgspec and msgpack write); they are returned only when the
    bytes agree: the body's length is their sum and the header byte at every
    token's start is the one that width has (a positive fixint below 0x80,
    0xcc, 0xcd, 0xce), so parsing ``raw`` meets exactly these boundaries.
    """
    header = array_header(raw)
    if header is None or header[0] != len(ids):
        return None
    small = ids < 0x80
    # 1 byte below 0x80, 2 below 0x100, 3 below 0x10000, else 5 (booleans summed as uint8:
    # nested np.where with scalars is several times slower).
    widths = (
        (~small).view(np.uint8)
        + (ids >= 0x100).view(np.uint8)
        + ((ids >= 0x10000).view(np.uint8) << 1)
        + np.uint8(1)
    )
    ends = np.cumsum(widths, dtype=np.uint32)
    start = header[1]
    if start + (int(ends[-1]) if len(ends) else 0) != len(raw):
        return None
    if not len(ids):
        return ends
    body = np.frombuffer(raw, dtype=np.uint8, offset=start)
    heads = np.empty(len(ids), dtype=np.uint8)
    heads[0] = body[0]
    heads[1:] = body.take(ends[:-1])
    # The fixints' value, the others' type byte (_HEADS is 0 at width 1).
    expected = _HEADS.take(widths) + ids.astype(np.uint8) * small.view(np.uint8)
    if not np.array_equal(heads, expected):
        return None
    return ends


def shared_body_bytes(raw: bytes, base: bytes) -> int:
    """How many leading bytes the two arrays' bodies (after their headers) have in common."""
    header, base_header = array_header(raw), array_header(base)
    if header is None or base_header is None:
        return 0
    body = np.frombuffer(raw, dtype=np.uint8, offset=header[1])
    other = np.frombuffer(base, dtype=np.uint8, offset=base_header[1])
    return _first_difference(body, other)


def _width(token: int) -> int:
    """Bytes of ``token``'s shortest msgpack encoding (a uint32)."""
    return 1 if token < 0x80 else 2 if token < 0x100 else 3 if token < 0x10000 else 5


class TokenEnds:
    """A list's token ends: those it took from its base, and the rest's found when first needed.

    :func:`decode_after` knows the ends of the tokens a list shares with its base
    (the base's own), but the rest's need :func:`token_ends` over their bytes, a
    dozen numpy calls. A list based on this one later usually shares less than
    that head (the same documents, another question), so the rest's ends are
    computed only for a caller that asks past the head.

    Args:
        head: Exact ends of the first ``len(head)`` tokens.
        rest: The rest's raw msgpack array, its tokens and the head's last end
            (None: nothing after the head, or its ends are unknown).
    """

    __slots__ = ("_rest", "head")

    def __init__(
        self, head: Ends, rest: tuple[bytes, npt.NDArray[np.uint32], int] | None = None
    ) -> None:
        self.head = head
        self._rest = rest

    def covering(self, nbytes: int) -> Ends:
        """Exact ends of a leading run of tokens, every token ending within ``nbytes`` included.

        Fewer only where the rest's ends are unknown (its bytes are not the
        shortest encoding): then only the head's tokens can be shared.
        """
        rest = self._rest
        if rest is None:
            return self.head
        rest_raw, rest_ids, head_end = rest
        # The rest's first token ends no sooner than its shortest encoding would (a list
        # that shares a byte or two of it, a header byte most often, shares no more tokens).
        if head_end + _width(int(rest_ids[0])) <= nbytes:
            self._rest = None
            rest_ends = token_ends(rest_raw, rest_ids)
            if rest_ends is not None:
                self.head = np.concatenate((self.head, rest_ends + np.uint32(head_end)))
        return self.head


def decode_after(
    raw: bytes, base: bytes, base_ids: array.array[int], base_ends: TokenEnds
) -> tuple[array.array[int], TokenEnds, int] | None:
    """``raw`` decoded as ``base``'s tokens it shares plus its own rest; None if nothing is shared.

    Args:
        raw: The list to decode.
        base: An earlier list, decoded as ``base_ids`` with ends ``base_ends``.
        base_ids: ``base``'s tokens.
        base_ends: ``base``'s token ends.

    Returns:
        The tokens, their ends (the rest's found lazily, see :class:`TokenEnds`),
        and how many of the tokens came from the base.

    Raises:
        ValueError: ``raw`` is not a msgpack array of uint32 values.
    """
    header = array_header(raw)
    if header is None:
        return None
    count, start = header
    shared_bytes = shared_body_bytes(raw, base)
    ends = base_ends.covering(shared_bytes)
    # A uint32 needle: a Python int made numpy cast all the ends to int64 first (a 128 KB
    # copy at 64 chunks, most of this function's time on a live server).
    shared = int(ends.searchsorted(np.uint32(shared_bytes), side="right"))
    if shared == 0:
        return None
    if shared > count:  # the count says fewer tokens than the bytes hold: msgspec's error
        decode_full(raw)
        return None  # (not reached: decode_full raised; were it not, the caller decodes in full)
    head_end = int(ends[shared - 1])
    rest_raw = _header_of(count - shared) + raw[start + head_end :]
    rest = decode_full(rest_raw)
    ids = base_ids[:shared] + rest  # one array of the final size (extend grew and copied it)
    rest_ids = np.frombuffer(rest, dtype=np.uint32)
    return (
        ids,
        TokenEnds(ends[:shared], (rest_raw, rest_ids, head_end) if len(rest) else None),
        shared,
    )


def shared_blob_tokens(payload: memoryview, base_payload: memoryview) -> int:
    """How many leading tokens two uint32 blobs (``token_blob`` payloads) have in common."""
    ids = np.frombuffer(payload, dtype="<u4")
    other = np.frombuffer(base_payload, dtype="<u4")
    return _first_difference(ids, other)


def _first_difference(one: npt.NDArray[np.generic], other: npt.NDArray[np.generic]) -> int:
    """The first index at which the two arrays differ (the shorter's length if none).

    ``argmax`` of the booleans stops at the first True, where ``flatnonzero``
    scans them all and builds an array (5 us against 10 at 64 KB).
    """
    size = min(len(one), len(other))
    differ = one[:size] != other[:size]
    first = int(differ.argmax()) if size else 0
    return first if size and differ[first] else size
