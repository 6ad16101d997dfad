"""Our client sends a key's tokens last; the server reads both orders alike."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.protocol.codec import (
    AMBIGUITY_WINDOW,
    ClientCodec,
    ProtocolError,
    ServerCodec,
    _fields_after_tokens,
    _tokens_inside,
    _tokens_last,
)
from lmcache_core.protocol.ops import OPS
from lmcache_core.protocol.types import CacheKey, pack_token_ids

TOKENS = [0, 1, 127, 128, 65535, 65536, 127999] * 100
E = msgspec.msgpack.encode


def key(tokens: list[int] | msgspec.Raw) -> CacheKey:
    return CacheKey("m", 2, None, tokens, 0, 512, "r", "salt", {"a": 1}, 3)


def test_our_client_puts_the_tokens_last_and_keeps_every_field() -> None:
    for tokens in (TOKENS, pack_token_ids(TOKENS)):
        frame = ClientCodec().request_frames(1, "lookup", [key(tokens), 1])[2]
        decoded = msgpack.unpackb(frame, raw=False)
        assert list(decoded)[-1] == "token_ids"
        assert decoded == msgspec.structs.asdict(key(TOKENS))


def test_the_server_decodes_both_orders_to_the_same_key() -> None:
    codec, spec = ServerCodec(), OPS["lookup"]
    ours = ClientCodec().request_frames(1, "lookup", [key(TOKENS), 1])[2:]
    upstream_order = [msgspec.msgpack.encode(key(TOKENS)), msgspec.msgpack.encode(1)]
    assert list(msgpack.unpackb(upstream_order[0], raw=False))[3] == "token_ids"
    a, b = codec.decode_args(spec, ours), codec.decode_args(spec, upstream_order)
    assert a == b
    assert bytes(a[0].token_ids) == msgspec.msgpack.encode(TOKENS)


NAMES = st.sampled_from(
    ["token_ids", "©token_ids", "x\u00a9token_ids", "r", "model", "start", "¥start", "x¥start"]
)
"""Strings that hold the tokens' map key or the next one's (``start``), or their bytes
(0xa9 is "©"'s second byte, 0xa5 "¥"'s)."""


@settings(max_examples=150, deadline=None)
@given(
    model=NAMES,
    request_id=NAMES,
    salt=st.sampled_from(["", "token_ids", "s"]),
    configs=st.one_of(
        st.none(), st.dictionaries(NAMES, st.one_of(NAMES, st.lists(NAMES, max_size=2)))
    ),
    tokens_last=st.booleans(),
)
def test_a_tokens_key_name_inside_other_fields_never_misleads_the_decoder(
    model: str, request_id: str, salt: str, configs: dict[str, Any] | None, tokens_last: bool
) -> None:
    """The fast path takes the first "token_ids" bytes only when all before it decodes."""
    tokens = TOKENS[:512]
    key = CacheKey(model, 2, 1, tokens, 0, 512, request_id, salt, configs, 1)
    if tokens_last:
        frame = ClientCodec().request_frames(1, "lookup", [key, 1])[2]
    else:
        frame = msgspec.msgpack.encode(key)
    decoded = ServerCodec().decode_args(OPS["lookup"], [frame, E(1)])[0]
    assert bytes(decoded.token_ids) == msgspec.msgpack.encode(tokens)
    assert (decoded.model_name, decoded.request_id, decoded.cache_salt) == (model, request_id, salt)
    assert (decoded.request_configs, decoded.worker_id, decoded.num_kv_readers) == (configs, 1, 1)


def test_the_tokens_last_fast_path_decodes_our_keys_and_refuses_bad_fields() -> None:
    frame = ClientCodec().request_frames(1, "lookup", [key(TOKENS), 1])[2]
    fast = _tokens_last(frame)
    assert fast is not None and bytes(fast.token_ids) == msgspec.msgpack.encode(TOKENS)
    assert fast == ServerCodec().decode_args(OPS["lookup"], [frame, E(1)])[0]
    bad = (
        ClientCodec().request_frames(1, "lookup", [key(TOKENS), 1])[2].replace(b"\xa1m", b"\x01", 1)
    )
    assert _tokens_last(bad) is None  # the model name is not a string: the general path reports
    with pytest.raises(ProtocolError, match="lookup argument 1"):
        ServerCodec().decode_args(OPS["lookup"], [bad, E(1)])


START_BYTES_TOKENS = [42355, 116, 97, 114, 116]
"""Tokens whose msgpack bytes hold the ``start`` name: 0xcd a5 73, then 't', 'a', 'r', 't'."""


def upstream_frame(tokens: list[int], **fields: Any) -> bytes:
    """A key in upstream's field order (the tokens fourth, ``start`` after them)."""
    values = {"request_id": "r", "cache_salt": "", "request_configs": None, **fields}
    return E(CacheKey("m", 1, None, tokens, 0, len(tokens), **values, num_kv_readers=1))


def walked(frame: bytes) -> dict[str, Any]:
    """The key as a full decode reads it (the reference)."""
    decoded = msgpack.unpackb(frame, raw=False)
    decoded["token_ids"] = E(decoded["token_ids"])
    return decoded


def as_dict(key: Any) -> dict[str, Any]:
    fields = msgspec.structs.asdict(key)
    fields["token_ids"] = bytes(fields["token_ids"])
    return fields


@pytest.mark.parametrize(
    "tokens",
    [TOKENS, START_BYTES_TOKENS * 50, TOKENS + START_BYTES_TOKENS, START_BYTES_TOKENS + TOKENS],
)
@pytest.mark.parametrize("request_id", ["r", "¥start", "x" * 300])
def test_upstreams_order_finds_the_tokens_end_without_walking_them(
    tokens: list[int], request_id: str
) -> None:
    frame = upstream_frame(tokens, request_id=request_id, request_configs={"a": [1, "¥start"]})
    begin = frame.find(b"\xa9token_ids") + 10
    found = _fields_after_tokens(frame, begin, 6)
    assert found is not None  # the shortcut serves upstream's keys, whatever the tokens
    assert frame[begin : found[0]] == E(tokens)
    decoded = ServerCodec().decode_args(OPS["lookup"], [frame, E(1)])[0]
    assert as_dict(decoded) == walked(frame)


def crafted_configs(padding: int) -> dict[str, Any]:
    """request_configs whose bytes hold a whole fake tail: start, end, request_id, salt, configs.

    With the real ``num_kv_readers`` after it, decoding from the fake ``start`` gives
    exactly the six entries the real place gives: two places would do.
    """
    fake = msgspec.msgpack.encode(
        {"start": 0, "end": 4, "request_id": "evil", "cache_salt": "", "request_configs": None}
    )[1:]  # the entries without their map header
    return {"pad": "p" * padding, "x": fake}


def test_two_places_that_would_both_do_make_the_decoder_walk_the_tokens() -> None:
    frame = upstream_frame(TOKENS, request_configs=crafted_configs(0))
    begin = frame.find(b"\xa9token_ids") + 10
    assert _fields_after_tokens(frame, begin, 6) is None  # ambiguous
    decoded = ServerCodec().decode_args(OPS["lookup"], [frame, E(1)])[0]
    assert as_dict(decoded) == walked(frame)
    assert decoded.request_id == "r"


def test_a_fake_place_beyond_the_window_can_only_fail_the_tokens_never_pass_them() -> None:
    frame = upstream_frame(TOKENS, request_configs=crafted_configs(AMBIGUITY_WINDOW))
    decoded = ServerCodec().decode_args(OPS["lookup"], [frame, E(1)])[0]
    assert decoded.request_id == "evil"  # the fake place was taken, and so the tokens end
    with pytest.raises(msgspec.DecodeError):  # with the real entries: not a list, refused
        msgspec.msgpack.decode(bytes(decoded.token_ids), type=list[int])


def test_a_tail_that_is_not_whole_entries_falls_back_to_the_walk() -> None:
    frame = upstream_frame(TOKENS)
    with pytest.raises(ProtocolError, match="lookup argument 1"):
        ServerCodec().decode_args(OPS["lookup"], [frame[:-1], E(1)])
    repeated = frame.replace(b"\xaacache_salt", b"\xaamodel_name", 1)  # a name given twice
    begin = frame.find(b"\xa9token_ids") + 10
    assert _fields_after_tokens(repeated, begin, 6) is not None
    with pytest.raises(ProtocolError):
        ServerCodec().decode_args(OPS["lookup"], [repeated, E(1)])


def test_upstreams_keys_take_the_inside_fast_path_and_agree_with_the_walk() -> None:
    for tokens in (TOKENS, START_BYTES_TOKENS * 50):
        frame = upstream_frame(tokens, request_configs={"a": [1, "¥start"]})
        fast = _tokens_inside(frame)
        assert fast is not None  # upstream's clients' layout: no unpacker, no walk
        assert as_dict(fast) == walked(frame)


FIELDS: dict[str, Any] = {
    "model_name": "m",
    "world_size": 2,
    "worker_id": 1,
    "token_ids": TOKENS[:300],
    "start": 0,
    "end": 300,
    "request_id": "r",
    "cache_salt": "s",
    "request_configs": None,
    "num_kv_readers": 1,
}


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(list(FIELDS)),
    request_id=NAMES,
    model=NAMES,
    configs=st.one_of(st.none(), st.dictionaries(NAMES, NAMES, max_size=2)),
)
def test_any_field_order_decodes_as_the_walk_does_fast_path_or_not(
    order: list[str], request_id: str, model: str, configs: dict[str, Any] | None
) -> None:
    """The inside fast path answers the walk's key or nothing, whatever the order and names."""
    values = {**FIELDS, "request_id": request_id, "model_name": model, "request_configs": configs}
    frame = E({name: values[name] for name in order})
    reference = walked(frame)
    fast = _tokens_inside(frame)
    if fast is not None:
        assert as_dict(fast) == reference
    assert as_dict(ServerCodec().decode_args(OPS["lookup"], [frame, E(1)])[0]) == reference


def test_the_inside_fast_path_refuses_repeated_names_and_cut_frames() -> None:
    frame = upstream_frame(TOKENS)
    repeated = frame.replace(b"\xaacache_salt", b"\xaamodel_name", 1)
    assert _tokens_inside(repeated) is None  # the general path decides (and refuses it)
    assert _tokens_inside(frame[:-1]) is None
    before_twice = frame.replace(b"\xaaworld_size", b"\xaamodel_name", 1)
    assert _tokens_inside(before_twice) is None
