"""Our client sends a key's tokens last; the server reads both orders alike."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.protocol.codec import ClientCodec, ProtocolError, ServerCodec, _tokens_last
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


NAMES = st.sampled_from(["token_ids", "©token_ids", "x\u00a9token_ids", "r", "model"])
"""Strings that hold the tokens' map key, or its bytes (0xa9 is "©"'s second byte)."""


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
