"""Frame encoding and decoding for both ends of the wire.

A request is ``[uid, op, arg1 ... argN]`` (the server's ROUTER adds the peer
identity in front); a reply is ``[uid, op]`` or ``[uid, op, result]``; every frame
is msgpack on its own. ``op`` is upstream's legacy numeric id when it has one,
else the operation name; the server accepts both and echoes the op frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import msgspec

from lmcache_core.protocol.api_key_frame import key_frame
from lmcache_core.protocol.errors import ERROR_OP, ErrorCode, ErrorInfo, exception_for
from lmcache_core.protocol.ops import KNOWN_UNSUPPORTED, LEGACY_IDS, OPS, OpSpec
from lmcache_core.protocol.types import (
    DEVICE_HANDLE_EXT,
    AnyDeviceHandle,
    CacheKey,
    KeyFields,
    WireCacheKey,
)

_encoder = msgspec.msgpack.Encoder()
_any_decoder = msgspec.msgpack.Decoder()
_handle_decoder = msgspec.msgpack.Decoder(AnyDeviceHandle)
_error_decoder = msgspec.msgpack.Decoder(ErrorInfo)


class ProtocolError(Exception):
    """A request the server cannot decode; answered with an error reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        super().__init__(message)


def encode(value: Any) -> bytes:
    """One msgpack frame."""
    return _encoder.encode(value)


def encode_op(name: str) -> bytes:
    """The op frame: the legacy id when the op has one, else its name."""
    spec = OPS.get(name)
    legacy = spec.legacy_id if spec is not None else KNOWN_UNSUPPORTED.get(name)
    return _encoder.encode(legacy if legacy is not None else name)


def decode_op(frame: bytes) -> str:
    """The operation name of an op frame.

    Raises:
        ProtocolError: Not an int or str, or an unknown legacy id.
    """
    try:
        value = _any_decoder.decode(frame)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:  # UnicodeDecodeError too
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"undecodable op frame: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the op frame must be an int id or a name")
    if isinstance(value, int):
        if value not in LEGACY_IDS:
            raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown operation id {value}")
        return LEGACY_IDS[value]
    return value


def encode_device_handle(handle: AnyDeviceHandle) -> msgspec.msgpack.Ext:
    """A device handle as upstream sends it: Ext type 1 around the tagged struct."""
    return msgspec.msgpack.Ext(DEVICE_HANDLE_EXT, _encoder.encode(handle))


def decode_device_handles(exts: Sequence[msgspec.msgpack.Ext]) -> list[AnyDeviceHandle]:
    """Decode the ``kv_cache`` argument of ``register_kv_cache``.

    Raises:
        ProtocolError: An element is not a device-handle Ext or fails validation.
    """
    handles = []
    for index, ext in enumerate(exts):
        if ext.code != DEVICE_HANDLE_EXT:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"kv_cache[{index}]: Ext type {ext.code}, expected 1"
            )
        try:
            handles.append(_handle_decoder.decode(ext.data))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"kv_cache[{index}]: {exc}") from None
    return handles


class _KeyDecoder:
    """Decodes a :class:`WireCacheKey` frame without walking its tokens twice.

    msgspec would walk every token element even into a ``Raw`` field (about 9 ns
    each); msgpack's C ``skip`` finds the end of the token array twice as fast,
    and the other fields are tiny. When the tokens are the map's last entry (our
    client sends them so, see :class:`_TokensLastKey`) they run to the end of the
    frame and are not walked at all: 77 us saved on a 64-chunk key.
    """

    def decode(self, frame: bytes) -> WireCacheKey:
        """The key of ``frame``; the tokens stay raw msgpack (see :class:`WireCacheKey`)."""
        key = _tokens_last(frame) or _tokens_inside(frame) if type(frame) is bytes else None
        if key is not None:
            return key
        at = frame.find(_TOKENS_NAME, 1) if type(frame) is bytes else -1
        if at > 0:
            try:  # the entries before the tokens only: the 64 KB after them are not copied in
                return self._decode(frame, at + len(_TOKENS_NAME))
            except msgpack.OutOfData:
                pass  # those bytes lay inside an earlier value: read the frame whole
        return self._decode(frame, len(frame))

    @staticmethod
    def _decode(frame: bytes, fed: int) -> WireCacheKey:
        """:meth:`decode` with the unpacker given ``frame[:fed]``, the rest only to walk tokens.

        Raises:
            msgpack.OutOfData: The entries before the tokens run past ``fed``.
        """
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(frame) + 1)
        unpacker.feed(memoryview(frame)[:fed] if fed < len(frame) else frame)
        fields: dict[str, Any] = {}
        raw_tokens: bytes | memoryview | None = None
        count = unpacker.read_map_header()
        for index in range(count):
            name = unpacker.unpack()
            if name == "token_ids":
                begin = unpacker.tell()
                if index == count - 1:
                    # The tokens end the frame (our client puts them last): no walk to
                    # find their end. Not checked element by element here; the token
                    # hash cache decodes them strictly the first time it sees these
                    # bytes (a bad frame then fails the request with bad_request), and
                    # identical bytes are the same valid list (the cache is keyed by
                    # their digest).
                    raw_tokens = frame[begin:]
                    break
                after = _fields_after_tokens(frame, begin, count - index - 1)
                if after is not None and not after[1].keys() & {*fields, name}:
                    # Upstream's order: the tokens' end found without a walk (checked so).
                    end, rest = after
                    raw_tokens = memoryview(frame)[begin:end]
                    fields.update(rest)
                    break
                if fed < len(frame):
                    unpacker.feed(memoryview(frame)[fed:])
                    fed = len(frame)
                unpacker.skip()
                raw_tokens = frame[begin : unpacker.tell()]
            else:
                fields[name] = unpacker.unpack()
        else:
            if unpacker.tell() != len(frame):
                raise ValueError("trailing bytes after the key")
        if raw_tokens is None:
            raise ValueError("the key has no token_ids")
        header = msgspec.convert(fields, KeyFields)
        return WireCacheKey(**msgspec.structs.asdict(header), token_ids=msgspec.Raw(raw_tokens))


_TOKENS_NAME = b"\xa9token_ids"
"""The map key ``"token_ids"`` in msgpack (a fixstr of 9 bytes)."""
_fields_decoder = msgspec.msgpack.Decoder(KeyFields)


AMBIGUITY_WINDOW = 4096
"""Bytes before a found ``start`` name searched for a second place that would also do."""
_START_NAME = b"\xa5start"
"""The map key ``"start"`` in msgpack: the entry after the tokens in upstream's keys."""


def _fields_after_tokens(
    frame: bytes, begin: int, entries: int
) -> tuple[int, dict[str, Any]] | None:
    """Where the tokens starting at ``begin`` end, and the ``entries`` map entries after them.

    Upstream's clients send a key's fields in their declaration order, the tokens
    fourth and ``start`` right after them: finding the tokens' end by walking
    them (msgpack's C ``skip``) costs 147 us at 64 chunks, most of the key's
    decode. Here the last ``start`` name in the frame is taken instead, and the
    rest decoded from it: that place is taken only if the decode yields exactly
    ``entries`` whole entries, each name once, ending at the frame's end, and
    no other place in the :data:`AMBIGUITY_WINDOW` bytes before it does so too.

    The real place passes in a well-formed frame, and every occurrence of the
    name inside the tokens lies before it; one after it lies inside a later
    value (a request id holding that name and the encoded entries after it).
    Taking such a place can only fail the request, never answer it wrongly:
    the tokens would then end with the real entries' bytes, and tokens are
    checked strictly before any use (by the token hash cache, the blend prompt
    cache or the blob's exact length), as those of a frame that ends with them
    are (:class:`_KeyDecoder`). Any doubt gives None: the caller walks them.
    """
    found: tuple[int, dict[str, Any]] | None = None
    at = len(frame)
    floor = begin
    while True:
        at = frame.rfind(_START_NAME, floor, at)
        if at < 0:
            return found
        rest = _entries_to_end(frame, at, entries)
        if rest is not None:
            if found is not None:
                return None  # two places would do: walk the tokens instead
            found = (at, rest)
            # Only a place close before it could be the real one (a value holding the
            # name lies inside the entries after the tokens, which are small).
            floor = max(begin, at - AMBIGUITY_WINDOW)


def _entries_to_end(frame: bytes, at: int, entries: int) -> dict[str, Any] | None:
    """``frame[at:]`` as exactly ``entries`` map entries with string names; None if not."""
    return _entries(memoryview(frame)[at:], entries)


_fields_map_decoder = msgspec.msgpack.Decoder(dict[str, Any])
UPSTREAM_ENTRIES_BEFORE_TOKENS = 3
"""``model_name``, ``world_size`` and ``worker_id``: what upstream's keys hold before the tokens."""


def _entries(data: memoryview, entries: int) -> dict[str, Any] | None:
    """``data`` as exactly ``entries`` map entries with distinct string names; None if not.

    One msgspec call on the entries behind a map header of that count (a
    ``msgpack.Unpacker`` per call and two unpacks per entry cost three times as
    much): too few bytes, trailing bytes, a name that is not a string or a
    malformed value fail the decode; a repeated name leaves fewer entries.
    """
    if not 0 <= entries <= 15:
        return None
    try:
        fields = _fields_map_decoder.decode(bytes((0x80 | entries,)) + data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return fields if len(fields) == entries else None


def _tokens_inside(frame: bytes) -> WireCacheKey | None:
    """A key whose tokens lie inside its map (upstream's clients: the fourth of ten entries).

    What :meth:`_KeyDecoder._decode` does for such a key, in msgspec calls instead
    of an unpacker walking the entries: the entries before the first tokens name
    are the one count of whole entries that fills those bytes exactly (entries
    parse one way, so at most one count ends exactly there; none does when the
    name lies inside a value), those after the tokens are found by
    :func:`_fields_after_tokens`. A repeated name, or any doubt, gives None: the
    caller's general path decodes the frame (and reports what is wrong with it).
    Saves about two thirds of the decode of an upstream client's key.
    """
    head = frame[0] if frame else 0
    if not 0x81 <= head <= 0x8F:
        return None
    count = head & 0x0F
    at = frame.find(_TOKENS_NAME, 1)
    if at < 0:
        return None
    before = memoryview(frame)[1:at]
    # Upstream's count first: a count that does not fit costs a decode error (2 us each).
    for entries in (UPSTREAM_ENTRIES_BEFORE_TOKENS, *range(count)):
        fields = _entries(before, entries) if entries < count else None
        if fields is not None:
            break
    else:
        return None
    begin = at + len(_TOKENS_NAME)
    after = _fields_after_tokens(frame, begin, count - entries - 1)
    if after is None or after[1].keys() & {*fields, "token_ids"}:
        return None
    end, rest = after
    fields.update(rest)
    return _wire_key(msgspec.convert(fields, KeyFields), memoryview(frame)[begin:end])


def _wire_key(fields: KeyFields, tokens: memoryview) -> WireCacheKey:
    """The key of ``fields`` and raw ``tokens`` (named one by one: a third cheaper than asdict)."""
    return WireCacheKey(
        model_name=fields.model_name,
        world_size=fields.world_size,
        worker_id=fields.worker_id,
        token_ids=msgspec.Raw(tokens),
        start=fields.start,
        end=fields.end,
        request_id=fields.request_id,
        cache_salt=fields.cache_salt,
        request_configs=fields.request_configs,
        num_kv_readers=fields.num_kv_readers,
    )


def _tokens_last(frame: bytes) -> WireCacheKey | None:
    """A key whose tokens are its map's last entry, without copying or walking them.

    The fields before the tokens are decoded by one msgspec call, as a map of one
    entry fewer; the tokens are a view of the frame's rest (a 64-chunk key:
    about 3 us instead of 15, two 65 KB copies fewer). The first ``"token_ids"``
    name in the frame is taken for the tokens' key only if everything before it
    decodes to exactly that many whole entries: a name inside a string or a
    nested value leaves a value cut short, and the tokens in the middle of the
    map (upstream's clients) leave entries missing; either fails to decode and
    gives ``None``, and the caller's general path decodes the frame (and reports
    what is wrong with it). What follows the name is checked as
    :class:`_KeyDecoder` checks the tokens of its own last entry: lazily, by the
    token hash cache.
    """
    head = frame[0] if frame else 0
    if not 0x81 <= head <= 0x8F:  # a fixmap: our client's keys (ten entries)
        return None
    at = frame.find(_TOKENS_NAME, 1)
    if at < 0:
        return None
    try:
        fields = _fields_decoder.decode(bytes((head - 1,)) + frame[1:at])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return _wire_key(fields, memoryview(frame)[at + len(_TOKENS_NAME) :])


class ServerCodec:
    """Decodes request frames and encodes replies (one instance per server)."""

    def __init__(self) -> None:
        self._decoders = {
            name: [
                _KeyDecoder() if arg is WireCacheKey else msgspec.msgpack.Decoder(arg)
                for arg in spec.server_args
            ]
            for name, spec in OPS.items()
        }

    def decode_args(self, spec: OpSpec, frames: Sequence[bytes]) -> list[Any]:
        """Decode the argument frames of ``spec``, strictly by count and type.

        Raises:
            ProtocolError: Wrong frame count, or a frame of the wrong type or value.
        """
        decoders = self._decoders[spec.name]
        if len(frames) != len(decoders):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"{spec.name} takes {len(decoders)} argument frames, got {len(frames)}",
            )
        args = []
        for index, (decoder, frame) in enumerate(zip(decoders, frames, strict=True)):
            try:
                args.append(decoder.decode(frame))
            except (
                msgspec.DecodeError,
                msgspec.ValidationError,
                msgpack.UnpackException,
                ValueError,  # also UnicodeDecodeError, and the structs' own checks
                TypeError,  # a map key that is not a string, for example
                RecursionError,  # absurdly nested input
            ) as exc:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"{spec.name} argument {index + 1}: {exc}"
                ) from None
        return args

    @staticmethod
    def result_frames(spec: OpSpec, result: Any) -> list[bytes]:
        """The frames after ``[uid, op]`` of a successful reply."""
        if result is None:
            return []
        return [_encoder.encode(result)]

    @staticmethod
    def error_frames(code: ErrorCode, message: str, op: str = "") -> list[bytes]:
        """``[op="__error__", ErrorInfo]`` frames of an error reply."""
        return [_encoder.encode(ERROR_OP), _encoder.encode(ErrorInfo(code.value, message, op))]


class _TokensLastKey(msgspec.Struct):
    """:class:`CacheKey` on the wire from our client: the same map, tokens last.

    A msgpack map's entries may come in any order (upstream's server, built on
    msgspec, reads them by name), and with the tokens last the server finds
    where they end without walking them (see :class:`_KeyDecoder`).
    """

    model_name: str
    world_size: int
    worker_id: int | None
    start: int
    end: int
    request_id: str
    cache_salt: str
    request_configs: dict[str, Any] | None
    num_kv_readers: int
    token_ids: list[int] | msgspec.Raw


def _encode_arg(arg: Any) -> bytes:
    if type(arg) is CacheKey:
        arg = _TokensLastKey(
            arg.model_name,
            arg.world_size,
            arg.worker_id,
            arg.start,
            arg.end,
            arg.request_id,
            arg.cache_salt,
            arg.request_configs,
            arg.num_kv_readers,
            arg.token_ids,
        )
    return _encoder.encode(arg)


class ClientCodec:
    """Encodes requests and decodes replies (one instance per client).

    Args:
        api_key: The key every request carries (a key frame after the uid, see
            :mod:`lmcache_core.protocol.api_key_frame`), or ``None``: upstream
            0.5.6's frames exactly.
    """

    def __init__(self, api_key: str | None = None) -> None:
        self._key_frames = [key_frame(api_key)] if api_key is not None else []
        self._result_decoders = {
            name: msgspec.msgpack.Decoder(spec.result) if spec.result is not None else None
            for name, spec in OPS.items()
        }
        self._op_frames = {name: encode_op(name) for name in (*OPS, *KNOWN_UNSUPPORTED)}

    def request_frames(self, uid: int, op: str, args: Sequence[Any]) -> list[bytes]:
        """``[uid, (key,) op, *args]`` for ``op``; raises ValueError on a wrong arg count."""
        spec = OPS.get(op)
        if spec is not None and len(args) != len(spec.server_args):
            raise ValueError(f"{op} takes {len(spec.server_args)} arguments, got {len(args)}")
        op_frame = self._op_frames.get(op) or _encoder.encode(op)
        return [
            _encoder.encode(uid),
            *self._key_frames,
            op_frame,
            *(_encode_arg(arg) for arg in args),
        ]

    def decode_reply(self, op: str, frames: Sequence[bytes]) -> Any:
        """The result of a reply ``[op, *result]`` (uid already stripped).

        Raises:
            RemoteError: The reply is an error reply (its typed subclass).
        """
        if frames and frames[0] == _ERROR_OP_FRAME:
            info = (
                _error_decoder.decode(frames[1]) if len(frames) > 1 else ErrorInfo("internal", "")
            )
            raise exception_for(info)
        if len(frames) < 2:
            return None
        decoder = self._result_decoders.get(op)
        return decoder.decode(frames[1]) if decoder is not None else _any_decoder.decode(frames[1])


_ERROR_OP_FRAME = _encoder.encode(ERROR_OP)
