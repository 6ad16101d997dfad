"""Our client sends a key's tokens last; the server reads both orders alike."""

from __future__ import annotations

import msgpack
import msgspec

from lmcache_core.protocol.codec import ClientCodec, ServerCodec
from lmcache_core.protocol.ops import OPS
from lmcache_core.protocol.types import CacheKey, pack_token_ids

TOKENS = [0, 1, 127, 128, 65535, 65536, 127999] * 100


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
