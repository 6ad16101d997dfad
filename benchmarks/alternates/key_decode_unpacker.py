"""``--alternate`` patch: upstream-ordered keys decoded by the unpacker, as before stop 28.

While the switch is on, the codec's ``_tokens_inside`` fast path declines, so a
key with its tokens inside the map (upstream's clients) is decoded by
``_KeyDecoder._decode``'s ``msgpack.Unpacker`` walk of the entries, and the
entries after the tokens by the msgspec call that replaced an unpacker there
(not switched).

The key is decoded before the handler that sets the switch from the request id
(``live_alternate/sitecustomize.py``) runs, so this patch reads the round from
the frame itself (the request id's last ``-``-separated field, both sides paying
that search) instead of the switch, which would still be the previous round's.
"""

from __future__ import annotations

from typing import Any

from lmcache_core.protocol import codec

_REQUEST_ID = b"\xaarequest_id"


def odd_round(frame: bytes) -> bool:
    """Whether the key's request id ends in an odd round number (a fixstr id)."""
    at = frame.rfind(_REQUEST_ID)
    if at < 0 or not 0xA0 <= frame[at + 11] <= 0xBF:
        return False
    start = at + 12
    tail = frame[start : start + (frame[at + 11] & 0x1F)].rsplit(b"-", 1)[-1]
    return tail.isdigit() and int(tail) % 2 == 1


def install(switch: Any) -> None:
    """Make the inside fast path decline for keys of odd rounds (``switch`` unused)."""
    inside = codec._tokens_inside

    def switched(frame: bytes) -> Any:
        return None if odd_round(frame) else inside(frame)

    codec._tokens_inside = switched
