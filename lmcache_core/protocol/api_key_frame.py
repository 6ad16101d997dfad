"""How a request carries an API key over ZeroMQ.

Upstream's 0.5.7 line loads request-transport keys (``LMCACHE_API_KEY``,
``--api-key-file``) but defines no ZeroMQ wire form for them, so this one is
ours. An authenticated request puts one extra frame between the uid and the op
frame::

    [uid, KEY_FRAME_MARKER + key (UTF-8), op, *args]

The marker starts with byte ``0xc1``, which msgpack never uses, so the frame can
never be taken for an op frame: a server without keys configured recognizes it
and drops it; a server that knows nothing of keys answers "bad op frame" rather
than running the request under a wrong reading. Requests without the frame are
exactly upstream 0.5.6's, so its clients keep working against a server without
keys. The key is sent in clear, like the HTTP header: run the transport on
loopback or a trusted network, or tunnel it.
"""

from __future__ import annotations

KEY_FRAME_MARKER = b"\xc1lmcache-api-key:"
MAX_KEY_BYTES = 1024
"""Longer presented keys are refused without comparing them."""


def key_frame(api_key: str) -> bytes:
    """The frame that carries ``api_key``."""
    return KEY_FRAME_MARKER + api_key.encode("utf-8")


def is_key_frame(frame: bytes) -> bool:
    """Whether ``frame`` is a key frame (checked before decoding the op frame)."""
    return frame.startswith(KEY_FRAME_MARKER)


def presented_key(frame: bytes) -> bytes | None:
    """The key a key frame carries, or ``None`` when it is empty or too long."""
    key = frame[len(KEY_FRAME_MARKER) :]
    if not key or len(key) > MAX_KEY_BYTES:
        return None
    return key
