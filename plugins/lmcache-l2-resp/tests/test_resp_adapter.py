"""Behaviour specific to the ``resp`` adapter: key names, values, AUTH, outages, restart."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lmcache_l2_resp import adapter as resp_adapter
from lmcache_l2_resp.adapter import RespL2Adapter, build_resp
from lmcache_l2_resp.config import ENV_FALLBACKS, RespAdapterConfig
from lmcache_l2_resp.node_clients import redis_key_to_object_key
from lmcache_l2_resp.testing import ACL_PASSWORD, ACL_USER, PASSWORD, RedisServer, needs_redis

from lmcache_core.storage.keys import FORBIDDEN_SALT_CHARACTERS, ObjectKey, pack_kv_rank
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.storage.l2.object_format import HEADER_SIZE, MAGIC, frame

HASH = bytes(range(32))
KEY = ObjectKey(HASH, "meta-llama/Llama-3.1-8B", pack_kv_rank(2, 1), 0, "")
KEY_NAME = f"meta-llama/Llama-3.1-8B@02010201@0@{HASH.hex()}"
FAST = {"socket_timeout_s": 0.5, "connect_timeout_s": 0.5}


def key(i: int = 0, **fields: Any) -> ObjectKey:
    return KEY._replace(chunk_hash=i.to_bytes(4, "big") + HASH[4:], **fields)


def store_many(adapter: RespL2Adapter, keys: list[ObjectKey], payloads: list[bytes]) -> list[bool]:
    return adapter.submit_store(keys, payloads).result(timeout=10)


def store(adapter: RespL2Adapter, k: ObjectKey, payload: bytes | memoryview) -> bool:
    return adapter.submit_store([k], [payload]).result(timeout=10)[0]


def lookup(adapter: RespL2Adapter, k: ObjectKey) -> bool:
    found = adapter.submit_lookup_and_lock([k]).result(timeout=10)[0]
    adapter.unlock([k])
    return found


def load(adapter: RespL2Adapter, k: ObjectKey, size: int) -> bytes | None:
    buffer = bytearray(b"\xa5" * size)
    ok = adapter.submit_load([k], [memoryview(buffer)]).result(timeout=10)[0]
    if not ok:
        assert buffer == b"\xa5" * size, "a miss wrote into the buffer"
    return bytes(buffer) if ok else None


@pytest.fixture
def make() -> Iterator[Any]:
    made: list[RespL2Adapter] = []

    def factory(server: RedisServer, *, start: bool = True, **kwargs: Any) -> RespL2Adapter:
        adapter = RespL2Adapter(server.host, server.port, **kwargs)
        made.append(adapter)
        if start:
            adapter.start()
        return adapter

    yield factory
    for adapter in made:
        adapter.close()


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    """The module's plain server, emptied."""
    redis_server.flush()
    return redis_server


def names(server: RedisServer) -> list[str]:
    with server.client() as client:
        return sorted(name.decode() for name in client.keys("*"))


# -- key names (no server needed) ------------------------------------------------------------


def test_key_names_are_upstreams() -> None:
    assert native_key_name(KEY) == KEY_NAME
    salted = KEY._replace(object_group_id=0x1F, cache_salt="tenant-a", kv_rank=0x01000100)
    assert native_key_name(salted) == (f"meta-llama/Llama-3.1-8B@01000100@1f@{HASH.hex()}@tenant-a")
    for k in (KEY, salted, key(5, model_name="m", kv_rank=0)):
        assert redis_key_to_object_key(native_key_name(k)) == k
        assert redis_key_to_object_key(native_key_name(k).encode()) == k


def upstream_resp_name(k: ObjectKey) -> str:
    """Upstream's native ``resp`` key string, spelled out here as the reference."""
    name = f"{k.model_name}@{k.kv_rank:08x}@{k.object_group_id:x}@{k.chunk_hash.hex()}"
    return f"{name}@{k.cache_salt}" if k.cache_salt else name


# Lone surrogates (category Cs) are excluded: names are UTF-8 strings from the wire,
# where msgpack cannot carry them, and they have no UTF-8 encoding to compare.
ANY_KEY = st.builds(
    ObjectKey,
    chunk_hash=st.binary(min_size=1, max_size=64),
    model_name=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="@"),
        min_size=1,
        max_size=40,
    ),
    kv_rank=st.integers(0, 0xFFFFFFFF),
    object_group_id=st.integers(0, 0xFFFFFFFF),
    cache_salt=st.text(
        st.characters(
            blacklist_categories=("Cs",), blacklist_characters="".join(FORBIDDEN_SALT_CHARACTERS)
        ),
        max_size=128,
    ),
)


@given(ANY_KEY)
def test_shared_key_names_are_the_resp_names_byte_for_byte(k: ObjectKey) -> None:
    # The adapter names keys with the core's key_names module: the names must be the
    # very strings upstream's resp connector (and this adapter before) wrote.
    assert resp_adapter.native_key_name is native_key_name
    name = upstream_resp_name(k)
    assert native_key_name(k).encode() == name.encode()
    assert redis_key_to_object_key(name) == k
    assert redis_key_to_object_key(name.encode()) == k


@pytest.mark.parametrize(
    "name",
    [
        "unrelated",
        "a@b@c",
        f"m@0x020102@0@{HASH.hex()}",  # the fs adapter's 0x form
        f"m@2010201@0@{HASH.hex()}",  # 7 rank digits
        f"m@02010201@0@{HASH.hex().upper()}",  # not canonical hex
        f"m@02010201@00@{HASH.hex()}",  # leading zero in the group
        f"m@02010201@0@{HASH.hex()}@",  # empty salt part
        f"m@02010201@0@{HASH.hex()}@a@b",
        f"m@02010201@0@{HASH.hex()[:-1]}",  # odd-length hash
        f"@02010201@0@{HASH.hex()}",
        f"m@02010201@0@{HASH.hex()}@{'s' * 200}",  # salt too long
        b"\xff@02010201@0@00",
    ],
)
def test_foreign_names_do_not_parse(name: str | bytes) -> None:
    assert redis_key_to_object_key(name) is None


# -- values on the server ------------------------------------------------------------------------


@needs_redis
def test_stored_under_upstream_names(server: RedisServer, make: Any) -> None:
    adapter = make(server, object_format="raw")
    salted = key(1, cache_salt="tenant-a", object_group_id=2)
    assert store_many(adapter, [KEY, salted], [b"a" * 10, b"b" * 20]) == [True, True]
    assert names(server) == sorted([KEY_NAME, native_key_name(salted)])
    assert native_key_name(salted).endswith("@2@" + salted.chunk_hash.hex() + "@tenant-a")


@needs_redis
def test_raw_value_is_the_payload(server: RedisServer, make: Any) -> None:
    adapter = make(server, object_format="raw")
    payload = bytes(range(256)) * 40
    assert store(adapter, KEY, memoryview(bytearray(payload)))
    with server.client() as client:
        assert client.get(KEY_NAME) == payload
    assert adapter.usage().used_bytes == len(payload)


@needs_redis
def test_framed_value_is_header_then_payload(server: RedisServer, make: Any) -> None:
    adapter = make(server)
    payload = b"kv" * 500
    assert store(adapter, KEY, payload)
    with server.client() as client:
        value = client.get(KEY_NAME)
    assert value == frame(KEY, payload) + payload
    assert value[:8] == MAGIC and len(value) == HEADER_SIZE + len(payload)


@needs_redis
def test_a_value_written_by_upstream_loads(server: RedisServer, make: Any) -> None:
    payload = b"\x01\x02" * 2048
    with server.client() as client:
        client.set(KEY_NAME, payload)  # as upstream's resp connector writes it
    adapter = make(server, object_format="raw")
    assert adapter.keys() == [KEY] and adapter.usage().used_bytes == len(payload)
    assert lookup(adapter, KEY)
    assert load(adapter, KEY, len(payload)) == payload


@needs_redis
@pytest.mark.parametrize("fmt", ["raw", "framed"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_a_value_of_the_wrong_length_is_a_miss(
    server: RedisServer, make: Any, fmt: str, delta: int
) -> None:
    adapter = make(server, object_format=fmt)
    assert store(adapter, KEY, b"x" * 100)
    with server.client() as client:
        value = client.get(KEY_NAME)
        client.set(KEY_NAME, value + b"y" if delta > 0 else value[:-1])
    assert load(adapter, KEY, 100) is None
    assert adapter.status()["errors"] == 0


@needs_redis
def test_missing_key_and_delete(server: RedisServer, make: Any) -> None:
    adapter = make(server)
    assert not lookup(adapter, KEY)
    assert load(adapter, KEY, 10) is None
    assert store(adapter, KEY, b"x")
    assert adapter.delete([KEY]) == 1
    assert names(server) == []
    assert adapter.delete([KEY]) == 0


@needs_redis
def test_concurrent_stores_of_one_key_leave_one_value(server: RedisServer, make: Any) -> None:
    adapter = make(server, object_format="raw", num_workers=8)
    size = 256 * 1024
    payloads = [bytes([i]) * size for i in range(16)]
    futures = [adapter.submit_store([KEY], [p]) for p in payloads]
    stop = threading.Event()
    seen: list[bytes | None] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(load(adapter, KEY, size))

    thread = threading.Thread(target=reader)
    thread.start()
    assert all(f.result(timeout=30)[0] for f in futures)
    stop.set()
    thread.join()
    assert names(server) == [KEY_NAME]
    assert all(data is None or data in payloads for data in seen)
    assert adapter.usage().used_bytes == size


@needs_redis
def test_pool_holds_num_workers_connections(server: RedisServer, make: Any) -> None:
    adapter = make(server, num_workers=3)
    assert adapter._connections.max_connections == 3
    keys = [key(i) for i in range(40)]
    assert store_many(adapter, keys, [b"p"] * 40) == [True] * 40
    buffers = [memoryview(bytearray(1)) for _ in keys]
    assert adapter.submit_load(keys, buffers).result(timeout=10) == [True] * 40
    assert [bytes(b) for b in buffers] == [b"p"] * 40
    with server.client() as client:
        # At most num_workers for values (SET, GET) and num_workers for other
        # commands, plus this client's.
        assert len(client.client_list()) <= 2 * 3 + 1


# -- restart: the index comes back through SCAN -------------------------------------------------


@needs_redis
@pytest.mark.parametrize("fmt", ["raw", "framed"])
def test_usage_rebuilt_by_scan_after_reopen(server: RedisServer, make: Any, fmt: str) -> None:
    first = make(server, object_format=fmt)
    stored = {
        key(0): b"a" * 10,
        key(1, cache_salt="t1"): b"b" * 20,
        key(2, model_name="org/model", object_group_id=2, kv_rank=7): b"c" * 30,
    }
    # More keys than one SCAN/STRLEN batch holds.
    stored.update({key(100 + i): bytes([i % 256]) * (i % 50 + 1) for i in range(2500)})
    assert store_many(first, list(stored), list(stored.values())) == [True] * len(stored)
    with server.client() as client:  # other tenants of the same server are left alone
        client.set("unrelated", b"1")
        client.set(f"m@02010201@0@{HASH.hex().upper()}", b"22")
        client.hset(f"m@02010201@0@{HASH.hex()}", "field", "value")  # not a string
    usage = first.usage()
    first.close()
    second = make(server, object_format=fmt)
    assert sorted(second.keys()) == sorted(stored)
    assert second.usage() == usage
    assert usage.by_salt["t1"] == 20 + (HEADER_SIZE if fmt == "framed" else 0)
    for k in list(stored)[:5]:
        assert load(second, k, len(stored[k])) == stored[k]


@needs_redis
def test_persist_disabled_deletes_the_keys_at_close(server: RedisServer, make: Any) -> None:
    with server.client() as client:
        client.set("unrelated", b"1")
    adapter = make(server, persist=False)
    assert store_many(adapter, [key(i) for i in range(3)], [b"x"] * 3) == [True] * 3
    adapter.close()
    assert names(server) == ["unrelated"]


# -- AUTH --------------------------------------------------------------------------------------


@needs_redis
@pytest.mark.parametrize(
    ("username", "password"), [(None, PASSWORD), (ACL_USER, ACL_PASSWORD)], ids=["default", "acl"]
)
def test_auth_succeeds(
    auth_redis_server: RedisServer, make: Any, username: str | None, password: str
) -> None:
    auth_redis_server.flush()
    adapter = make(auth_redis_server, username=username, password=password)
    assert store(adapter, KEY, b"secret kv")
    assert lookup(adapter, KEY)
    assert load(adapter, KEY, 9) == b"secret kv"
    with auth_redis_server.client() as client:
        users = {entry["user"] for entry in client.client_list()}
    assert (username or "default") in users


@needs_redis
@pytest.mark.parametrize(
    ("username", "password"),
    [(None, "wrong"), (ACL_USER, "wrong"), ("nobody", ACL_PASSWORD)],
    ids=["default", "acl", "unknown-user"],
)
def test_refused_auth_fails_start_without_leaking_the_password(
    auth_redis_server: RedisServer, make: Any, username: str | None, password: str
) -> None:
    adapter = make(auth_redis_server, start=False, username=username, password=password)
    with pytest.raises(RuntimeError, match="refused AUTH") as caught:
        adapter.start()
    assert password not in str(caught.value)
    # Operations fail (counted), never raise.
    assert not store(adapter, KEY, b"x")
    assert not lookup(adapter, KEY)
    assert load(adapter, KEY, 1) is None
    assert adapter.status()["errors"] == 3


@needs_redis
def test_no_credentials_on_an_auth_server(auth_redis_server: RedisServer, make: Any) -> None:
    adapter = make(auth_redis_server, start=False)
    with pytest.raises(RuntimeError, match="refused AUTH"):
        adapter.start()
    assert not store(adapter, KEY, b"x")
    assert adapter.errors == 1


def test_username_needs_a_password() -> None:
    with pytest.raises(ValueError, match="password"):
        RespL2Adapter("127.0.0.1", 6379, username="lmcache")


# -- outages -----------------------------------------------------------------------------------


@needs_redis
def test_redis_killed_mid_run_then_restarted(own_redis_server: RedisServer, make: Any) -> None:
    adapter = make(own_redis_server, **FAST)
    keys = [key(i) for i in range(4)]
    assert store_many(adapter, keys[:2], [b"a" * 100, b"b" * 100]) == [True, True]
    used = adapter.usage().used_bytes

    own_redis_server.kill()
    began = time.monotonic()
    assert store_many(adapter, keys[2:], [b"c" * 100, b"d" * 100]) == [False, False]
    assert adapter.status()["errors"] == 2
    assert adapter.submit_lookup_and_lock(keys).result(timeout=10) == [False] * 4
    buffers = [memoryview(bytearray(b"\xa5" * 100)) for _ in keys]
    assert adapter.submit_load(keys, buffers).result(timeout=10) == [False] * 4
    assert all(bytes(b) == b"\xa5" * 100 for b in buffers)
    assert adapter.delete(keys[:1]) == 0  # fails, counted, never raises
    assert time.monotonic() - began < 10, "a dead server must make calls fail fast"
    assert adapter.status()["errors"] == 2 + 4 + 4 + 1
    assert adapter.status()["is_healthy"] is True
    assert adapter.usage().used_bytes == used  # a failed delete keeps the key indexed

    own_redis_server.start()  # same port, empty (nothing was saved)
    assert store_many(adapter, keys[2:], [b"c" * 100, b"d" * 100]) == [True, True]
    assert adapter.submit_lookup_and_lock(keys).result(timeout=10) == [False, False, True, True]
    adapter.unlock(keys)
    assert load(adapter, keys[3], 100) == b"d" * 100
    assert names(own_redis_server) == sorted(native_key_name(k) for k in keys[2:])


@needs_redis
def test_hung_redis_times_out_then_recovers(own_redis_server: RedisServer, make: Any) -> None:
    adapter = make(own_redis_server, num_workers=2, **FAST)
    assert store(adapter, KEY, b"x" * 10)
    own_redis_server.pause()
    try:
        began = time.monotonic()
        assert not store(adapter, key(1), b"y" * 10)
        assert not lookup(adapter, KEY)
        assert load(adapter, KEY, 10) is None
        assert time.monotonic() - began < 5, "socket timeouts must bound each call"
        assert adapter.errors == 3
    finally:
        own_redis_server.resume()
    assert store(adapter, key(2), b"z" * 10)
    assert load(adapter, KEY, 10) == b"x" * 10


@needs_redis
def test_unreachable_at_start_then_up(tmp_path: Any, make: Any) -> None:
    server = RedisServer(tmp_path / "redis")  # not started yet
    adapter = make(server, **FAST)  # start() finds nothing to index: an empty index
    assert adapter.keys() == [] and adapter.errors == 1
    assert not store(adapter, KEY, b"x")
    server.start()
    try:
        assert store(adapter, KEY, b"x")
        assert load(adapter, KEY, 1) == b"x"
    finally:
        adapter.close()
        server.stop()


# -- building -----------------------------------------------------------------------------------


def test_build_resp(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV_FALLBACKS.values():
        monkeypatch.delenv(variable, raising=False)
    config = RespAdapterConfig.model_validate(
        {
            "type": "resp",
            "host": "redis.internal",
            "port": 6380,
            "num_workers": 3,
            "username": "lmcache",
            "password": "change-me",
            "max_capacity_gb": 1.5,
            "format": "raw",
            "persist_enabled": False,
        }
    )
    adapter = build_resp(config)  # connects lazily: nothing is reached here
    try:
        assert (adapter.host, adapter.port, adapter.username) == ("redis.internal", 6380, "lmcache")
        kwargs = adapter._connections.connection_kwargs
        assert kwargs["password"] == "change-me" and kwargs["username"] == "lmcache"
        assert kwargs["socket_timeout"] == resp_adapter.DEFAULT_SOCKET_TIMEOUT_S
        assert kwargs["socket_connect_timeout"] == resp_adapter.DEFAULT_CONNECT_TIMEOUT_S
        assert adapter._connections.max_connections == 3
        assert adapter.capacity_bytes == int(1.5 * (1 << 30))
        assert adapter.object_format == "raw"
        assert adapter.persist is False
        status = adapter.status()
        assert status["type"] == "resp" and status["server"] == "redis.internal:6380"
        assert "change-me" not in repr(status)
    finally:
        adapter.close()  # nothing indexed, so nothing to delete: the server is never reached
    minimal = {"type": "resp", "host": "127.0.0.1", "port": 6379}
    unlimited = build_resp(RespAdapterConfig.model_validate(minimal))
    assert unlimited.capacity_bytes == 0 and unlimited.object_format == "framed"
    assert unlimited._connections.connection_kwargs["password"] is None
    assert unlimited._connections.max_connections == 8
    unlimited.close()


# -- values received straight into scratch buffers (what the L2 tier asks for) ---------------


@needs_redis
@pytest.mark.parametrize("fmt", ["raw", "framed"])
def test_scratch_buffers_are_filled_in_place_and_still_verified(
    server: RedisServer, make: Any, fmt: str
) -> None:
    adapter = make(server, object_format=fmt, num_workers=2)
    adapter.buffers_are_scratch = True
    sizes = (1, 70_000, 3 * 1024 * 1024 + 7)  # one value larger than a socket buffer
    payloads = [bytes(random.Random(size).randbytes(size)) for size in sizes]
    keys = [key(i) for i in range(3)]
    assert store_many(adapter, keys, payloads) == [True] * 3
    buffers = [bytearray(size) for size in sizes]
    loaded = adapter.submit_load(keys, [memoryview(b) for b in buffers]).result(timeout=10)
    assert loaded == [True] * 3
    assert [bytes(b) for b in buffers] == payloads
    # A value of another length: a miss, and the next loads still work (a fresh connection).
    short = [memoryview(bytearray(69_999))]
    assert adapter.submit_load([keys[1]], short).result(timeout=10) == [False]
    for _ in range(3):
        assert load(adapter, keys[2], sizes[2]) == payloads[2]
    if fmt == "framed":
        offset = HEADER_SIZE + 35_000
        with server.client() as client:  # flip one payload byte inside Redis
            byte = client.getrange(native_key_name(keys[1]), offset, offset)[0]
            client.setrange(native_key_name(keys[1]), offset, bytes([byte ^ 0x04]))
        before = adapter.corrupt
        scratch = [memoryview(bytearray(sizes[1]))]
        assert adapter.submit_load([keys[1]], scratch).result(timeout=10) == [False]
        assert adapter.corrupt == before + 1
    assert adapter.status()["errors"] == 0
