"""Behaviour specific to the ``s3`` adapter: names, bytes, addressing, outages, restart."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lmcache_l2_s3 import adapter as s3_adapter
from lmcache_l2_s3.adapter import (
    S3L2Adapter,
    build_s3,
    is_local_host,
    parse_endpoint,
)
from lmcache_l2_s3.config import S3AdapterConfig

from lmcache_core.storage.keys import FORBIDDEN_SALT_CHARACTERS, ObjectKey, pack_kv_rank
from lmcache_core.storage.l2.key_names import native_key_name, parse_native_key_name
from lmcache_core.storage.l2.object_format import HEADER_SIZE, MAGIC
from lmcache_core.testing.l2_conformance import empty_buffers, untouched

HASH = bytes(range(32))
KEY = ObjectKey(HASH, "meta-llama/Llama-3.1-8B", pack_kv_rank(2, 1), 0, "")
WAIT_S = 30.0


def key(i: int = 0, **fields: Any) -> ObjectKey:
    return KEY._replace(chunk_hash=i.to_bytes(4, "big") + HASH[4:], **fields)


@pytest.fixture
def make(
    moto_server: Any, adapter_kwargs: Callable[..., dict[str, Any]]
) -> Iterator[Callable[..., S3L2Adapter]]:
    made: list[S3L2Adapter] = []

    def factory(bucket: str, *, start: bool = True, server: Any = None, **kwargs: Any) -> Any:
        endpoint = kwargs.pop("endpoint", None) or f"s3://{bucket}.{(server or moto_server).host}"
        adapter = S3L2Adapter(endpoint, **adapter_kwargs(**kwargs))
        made.append(adapter)
        if start:
            adapter.start()
        return adapter

    yield factory
    for adapter in made:
        adapter.close()


def listing(client: Any, bucket: str) -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", ())}


# -- names -------------------------------------------------------------------------------


def test_object_names_are_upstreams() -> None:
    assert native_key_name(KEY) == f"meta-llama/Llama-3.1-8B@02010201@0@{HASH.hex()}"
    salted = KEY._replace(object_group_id=26, cache_salt="tenant-a", kv_rank=1)
    assert native_key_name(salted) == f"meta-llama/Llama-3.1-8B@00000001@1a@{HASH.hex()}@tenant-a"


def upstream_s3_name(k: ObjectKey) -> str:
    """Upstream's ``s3`` object name, spelled out here as the reference."""
    parts = [k.model_name, f"{k.kv_rank:08x}", f"{k.object_group_id:x}", k.chunk_hash.hex()]
    return "@".join([*parts, k.cache_salt] if k.cache_salt else parts)


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
def test_shared_key_names_are_the_s3_names_byte_for_byte(k: ObjectKey) -> None:
    # The adapter names objects with the core's key_names module: the names must be
    # the very strings upstream's s3 adapter (and this adapter before) wrote.
    assert s3_adapter.native_key_name is native_key_name
    assert native_key_name(k).encode() == upstream_s3_name(k).encode()
    assert parse_native_key_name(upstream_s3_name(k)) == k


@pytest.mark.parametrize(
    "k", [KEY, key(1, cache_salt="t"), key(2, object_group_id=255), key(3, kv_rank=0xFFFFFFFF)]
)
def test_names_parse_back(k: ObjectKey) -> None:
    assert parse_native_key_name(native_key_name(k)) == k


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        f"m@02010201@0@{HASH.hex()}@",  # empty salt part
        f"m@2010201@0@{HASH.hex()}",  # rank not 8 digits
        f"m@02010201@00@{HASH.hex()}",  # group not canonical
        f"m@02010201@0@{HASH.hex().upper()}",
        f"m@02010201@0@{HASH.hex()}0",  # odd hash length
        f"@02010201@0@{HASH.hex()}",
        f"m@02010201@0@{HASH.hex()}@a@b",
        f"m@02010201@0@{HASH.hex()}@" + "s" * 129,
    ],
)
def test_foreign_names_do_not_parse(name: str) -> None:
    assert parse_native_key_name(name) is None


def test_stored_objects_have_exact_names(make: Any, bucket: str, s3_client: Any) -> None:
    adapter = make(bucket)
    keys = [KEY, key(1, cache_salt="tenant-a")]
    assert adapter.submit_store(keys, [b"a" * 10, b"b" * 20]).result(WAIT_S) == [True, True]
    assert listing(s3_client, bucket) == {
        f"meta-llama/Llama-3.1-8B@02010201@0@{HASH.hex()}": 10 + HEADER_SIZE,
        f"meta-llama/Llama-3.1-8B@02010201@0@{key(1).chunk_hash.hex()}@tenant-a": 20 + HEADER_SIZE,
    }


def test_raw_object_is_the_payload_and_framed_has_the_header(
    make: Any, moto_server: Any, s3_client: Any
) -> None:
    payload = bytes(range(256)) * 40
    raw_bucket, framed_bucket = moto_server.make_bucket(), moto_server.make_bucket()
    raw = make(raw_bucket, object_format="raw")
    framed = make(framed_bucket)
    assert raw.submit_store([KEY], [payload]).result(WAIT_S) == [True]
    assert framed.submit_store([KEY], [memoryview(payload)]).result(WAIT_S) == [True]
    name = native_key_name(KEY)
    raw_object = s3_client.get_object(Bucket=raw_bucket, Key=name)
    assert raw_object["Body"].read() == payload
    assert raw_object["ContentType"] == "application/octet-stream"
    framed_bytes = s3_client.get_object(Bucket=framed_bucket, Key=name)["Body"].read()
    assert framed_bytes[:8] == MAGIC and framed_bytes[HEADER_SIZE:] == payload


@pytest.mark.parametrize("delta", [-1, 1])
def test_get_of_another_length_is_a_miss(
    make: Any, bucket: str, s3_client: Any, delta: int
) -> None:
    adapter = make(bucket, object_format="raw")
    assert adapter.submit_store([KEY], [b"x" * 1000]).result(WAIT_S) == [True]
    # Replaced behind the adapter: the index says 1000 bytes, the bucket disagrees.
    s3_client.put_object(Bucket=bucket, Key=native_key_name(KEY), Body=b"y" * (1000 + delta))
    buffers = empty_buffers([1000])
    assert adapter.submit_load([KEY], buffers).result(WAIT_S) == [False]
    assert untouched(buffers[0])
    assert adapter.status()["errors"] == 0


def test_lookup_asks_the_bucket_every_time(make: Any, bucket: str, s3_client: Any) -> None:
    adapter = make(bucket)
    assert adapter.submit_store([KEY], [b"z" * 64]).result(WAIT_S) == [True]
    assert adapter.submit_lookup_and_lock([KEY]).result(WAIT_S) == [True]
    adapter.unlock([KEY])
    s3_client.delete_object(Bucket=bucket, Key=native_key_name(KEY))  # behind its back
    assert adapter.submit_lookup_and_lock([KEY]).result(WAIT_S) == [False]
    assert adapter.delete([KEY]) == 0
    assert adapter.keys() == []


def test_a_batch_runs_in_parallel(make: Any, bucket: str) -> None:
    adapter = make(bucket, num_io_threads=8)
    threads: set[str] = set()
    original = adapter._put

    def put(k: ObjectKey, parts: Any) -> None:
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        original(k, parts)

    adapter._put = put  # type: ignore[method-assign]
    keys = [key(i) for i in range(16)]
    assert adapter.submit_store(keys, [b"p" * 100] * 16).result(WAIT_S) == [True] * 16
    assert len(threads) > 1
    assert all(name.startswith("lmcache-l2-s3-io") for name in threads)


# -- restart -------------------------------------------------------------------------------


def test_usage_is_rebuilt_from_the_listing(make: Any, bucket: str, s3_client: Any) -> None:
    adapter = make(bucket)
    keys = [key(i, cache_salt="tenant-a" if i % 2 else "") for i in range(23)]
    sizes = [100 + i for i in range(23)]
    assert adapter.submit_store(keys, [b"q" * n for n in sizes]).result(WAIT_S) == [True] * 23
    usage = adapter.usage()
    adapter.close()
    s3_client.put_object(Bucket=bucket, Key="README.txt", Body=b"not a key")
    s3_client.put_object(Bucket=bucket, Key="m@1@0@zz", Body=b"not a key either")

    reopened = make(bucket, start=False)
    reopened.list_page_size = 5  # several pages
    reopened.start()
    assert sorted(reopened.keys()) == sorted(keys)
    assert reopened.usage() == usage
    assert usage.by_salt["tenant-a"] == sum(n + HEADER_SIZE for i, n in enumerate(sizes) if i % 2)
    buffers = empty_buffers(sizes)
    assert reopened.submit_load(keys, buffers).result(WAIT_S) == [True] * 23


def test_persist_false_deletes_its_objects_at_close(make: Any, bucket: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=bucket, Key="other.txt", Body=b"kept")
    adapter = make(bucket, persist=False)
    assert adapter.submit_store([KEY, key(1)], [b"a", b"b"]).result(WAIT_S) == [True, True]
    adapter.close()
    assert listing(s3_client, bucket) == {"other.txt": 4}


# -- outages ----------------------------------------------------------------------------------


def test_server_outage_fails_calls_fast_and_recovery_needs_no_restart(
    make: Any, own_moto_server: Any
) -> None:
    server = own_moto_server
    bucket = server.make_bucket()
    adapter = make(bucket, server=server, max_attempts=1, connect_timeout_s=1.0)
    stored = [key(i) for i in range(4)]
    assert adapter.submit_store(stored, [b"s" * 256] * 4).result(WAIT_S) == [True] * 4

    server.stop()
    began = time.monotonic()
    for _ in range(5):  # far past upstream's breaker (3 errors): it never trips for good
        fresh = [key(100), key(101)]
        assert adapter.submit_store(fresh, [b"f" * 10] * 2).result(WAIT_S) == [False, False]
        assert adapter.submit_lookup_and_lock(stored).result(WAIT_S) == [False] * 4
        buffers = empty_buffers([256] * 4)
        assert adapter.submit_load(stored, buffers).result(WAIT_S) == [False] * 4
        assert all(untouched(buffer) for buffer in buffers)
        assert adapter.delete(stored[:1]) == 0
    assert time.monotonic() - began < 10.0, "calls to a dead server must fail fast"
    status = adapter.status()
    assert status["errors"] == 5 * (2 + 4 + 4 + 1)
    assert status["consecutive_failures"] >= status["errors"]
    assert status["last_error"]
    assert status["is_healthy"] is True
    assert sorted(adapter.keys()) == sorted(stored)  # a failed delete forgets nothing

    # An adapter started during the outage comes up empty instead of failing.
    late = make(bucket, server=server, max_attempts=1, connect_timeout_s=1.0)
    assert late.keys() == [] and late.status()["errors"] == 1

    server.start()  # a fresh server: the bucket and its objects are gone
    server.client().create_bucket(Bucket=bucket)
    for a in (adapter, late):
        assert a.submit_store([key(7)], [b"r" * 32]).result(WAIT_S) == [True]
        buffers = empty_buffers([32])
        assert a.submit_load([key(7)], buffers).result(WAIT_S) == [True]
        assert bytes(buffers[0]) == b"r" * 32
        assert a.status()["consecutive_failures"] == 0
    assert adapter.submit_lookup_and_lock(stored).result(WAIT_S) == [False] * 4


def test_a_missing_bucket_fails_per_call(make: Any, moto_server: Any) -> None:
    adapter = make("no-such-bucket-here")
    assert adapter.status()["errors"] == 1  # the listing at start
    assert adapter.keys() == []
    assert adapter.submit_store([KEY], [b"a"]).result(WAIT_S) == [False]
    assert adapter.status()["errors"] == 2
    assert adapter.status()["last_error"].startswith("put_object: NoSuchBucket")


# -- endpoints and addressing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "tls_off", "style", "expected"),
    [
        (
            "s3://bucket.s3.us-east-1.amazonaws.com",
            False,
            "auto",
            ("bucket", "s3.us-east-1.amazonaws.com", "https", "virtual"),
        ),
        (
            "bucket.s3.us-east-1.amazonaws.com/",
            False,
            "auto",
            ("bucket", "s3.us-east-1.amazonaws.com", "https", "virtual"),
        ),
        ("lmcache.localhost:9000", True, "auto", ("lmcache", "localhost:9000", "http", "path")),
        ("s3://b.127.0.0.1:9000", True, "auto", ("b", "127.0.0.1:9000", "http", "path")),
        ("b.[::1]:9000", False, "auto", ("b", "[::1]:9000", "https", "path")),
        ("b.10.0.0.7", False, "auto", ("b", "10.0.0.7", "https", "path")),
        ("b.minio.internal:9000", True, "auto", ("b", "minio.internal:9000", "http", "virtual")),
        ("b.minio.internal:9000", True, "path", ("b", "minio.internal:9000", "http", "path")),
        ("b.127.0.0.1:9000", True, "virtual", ("b", "127.0.0.1:9000", "http", "virtual")),
    ],
)
def test_parse_endpoint(
    endpoint: str, tls_off: bool, style: Any, expected: tuple[str, ...]
) -> None:
    parsed = parse_endpoint(endpoint, disable_tls=tls_off, addressing_style=style)
    assert (parsed.bucket, parsed.host, parsed.scheme, parsed.addressing_style) == expected
    assert parsed.url == f"{expected[2]}://{expected[1]}"


@pytest.mark.parametrize(
    "endpoint", ["s3://", "bucket", ".host", "bucket.", "https://b.h", "b.h/x"]
)
def test_parse_endpoint_rejects(endpoint: str) -> None:
    with pytest.raises(ValueError, match="s3_endpoint"):
        parse_endpoint(endpoint)


def test_is_local_host() -> None:
    assert is_local_host("localhost") and is_local_host("LOCALHOST:80")
    assert is_local_host("192.168.1.2:9000") and is_local_host("[fe80::1]:9000")
    assert not is_local_host("s3.amazonaws.com") and not is_local_host("bucket.localhost.dev")


def _url(adapter: S3L2Adapter) -> str:
    return str(
        adapter._client.generate_presigned_url(
            "get_object", Params={"Bucket": adapter.bucket, "Key": "k@1"}
        )
    )


def test_request_urls_follow_the_addressing_style(adapter_kwargs: Any) -> None:
    virtual = S3L2Adapter(
        "s3://bkt.s3.eu-west-1.amazonaws.com", **adapter_kwargs(disable_tls=False)
    )
    path = S3L2Adapter("bkt.127.0.0.1:9000", **adapter_kwargs())
    try:
        assert _url(virtual).startswith("https://bkt.s3.eu-west-1.amazonaws.com/k%401?")
        assert _url(path).startswith("http://127.0.0.1:9000/bkt/k%401?")
    finally:
        virtual.close()
        path.close()


def test_virtual_hosted_requests_reach_the_server(
    make: Any, moto_server: Any, bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"  # what a wildcard DNS entry for *.localhost would answer
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    adapter = make(
        bucket, endpoint=f"{bucket}.localhost:{moto_server.port}", addressing_style="virtual"
    )
    assert adapter.endpoint.addressing_style == "virtual"
    assert _url(adapter).startswith(f"http://{bucket}.localhost:{moto_server.port}/")
    assert adapter.submit_store([KEY], [b"v" * 99]).result(WAIT_S) == [True]
    assert native_key_name(KEY) in listing(s3_client, bucket)
    buffers = empty_buffers([99])
    assert adapter.submit_load([KEY], buffers).result(WAIT_S) == [True]
    assert bytes(buffers[0]) == b"v" * 99


# -- building from the configuration ------------------------------------------------------------


def test_build_from_config(moto_server: Any, bucket: str) -> None:
    config = S3AdapterConfig.model_validate(
        {
            "type": "s3",
            "s3_endpoint": f"s3://{bucket}.{moto_server.host}",
            "s3_region": "us-east-1",
            "s3_num_io_threads": 5,
            "disable_tls": True,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "max_capacity_gb": 0.5,
            "format": "raw",
            "persist_enabled": False,
        }
    )
    adapter = build_s3(config)
    try:
        adapter.start()
        assert adapter.bucket == bucket
        assert adapter.endpoint.url == moto_server.url
        assert adapter.endpoint.addressing_style == "path"
        assert adapter.capacity_bytes == s3_adapter.GIB // 2
        assert adapter.object_format == "raw" and adapter.persist is False
        assert adapter.num_io_threads == 5
        assert adapter._client.meta.config.max_pool_connections == 5
        assert adapter._client.meta.config.retries["total_max_attempts"] == 3
        assert adapter._client.meta.config.connect_timeout == 5.0
        assert adapter.submit_store([KEY], [b"c" * 10]).result(WAIT_S) == [True]
        status = adapter.status()
        assert status["type"] == "s3" and status["bucket"] == bucket
    finally:
        adapter.close()


def test_build_uses_the_default_chain_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    config = S3AdapterConfig.model_validate(
        {"type": "s3", "s3_endpoint": "b.s3.amazonaws.com", "s3_region": "us-west-2"}
    )
    adapter = build_s3(config)
    try:
        assert adapter._client._request_signer._credentials.access_key == "from-env"
        assert adapter.endpoint.addressing_style == "virtual"
        assert adapter.endpoint.scheme == "https"
    finally:
        adapter.close()


def test_s3express_needs_a_directory_bucket(adapter_kwargs: Any) -> None:
    with pytest.raises(ValueError, match="directory bucket"):
        S3L2Adapter("b.s3.amazonaws.com", enable_s3express=True, **adapter_kwargs())
    adapter = S3L2Adapter(
        "data--usw2-az1--x-s3.s3express-usw2-az1.us-west-2.amazonaws.com",
        enable_s3express=True,
        **adapter_kwargs(),
    )
    assert adapter.bucket == "data--usw2-az1--x-s3"
    adapter.close()


def test_rejects_half_credentials(adapter_kwargs: Any) -> None:
    with pytest.raises(ValueError, match="both"):
        S3L2Adapter("b.h", **adapter_kwargs(secret_access_key=None))


# -- bodies read straight into scratch buffers (what the L2 tier asks for) -------------------


@pytest.mark.parametrize("object_format", ["framed", "raw"])
def test_scratch_buffers_are_filled_in_place_and_still_verified(
    make: Any, bucket: str, s3_client: Any, object_format: str
) -> None:
    adapter = make(bucket, object_format=object_format)
    adapter.buffers_are_scratch = True
    sizes = (1, 70_000, 2 * s3_adapter.READ_WINDOW + 5)  # more than one read window
    payloads = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    keys = [key(i) for i in range(3)]
    assert adapter.submit_store(keys, payloads).result(WAIT_S) == [True] * 3
    buffers = [bytearray(size) for size in sizes]
    views = [memoryview(b) for b in buffers]
    assert adapter.submit_load(keys, views).result(WAIT_S) == [True] * 3
    assert [bytes(b) for b in buffers] == payloads
    wrong = [memoryview(bytearray(69_999)), memoryview(bytearray(3))]
    assert adapter.submit_load([keys[1], key(9)], wrong).result(WAIT_S) == [False, False]
    if object_format == "framed":
        name = native_key_name(keys[1])
        data = bytearray(s3_client.get_object(Bucket=bucket, Key=name)["Body"].read())
        data[HEADER_SIZE + 35_000] ^= 0x08
        s3_client.put_object(Bucket=bucket, Key=name, Body=bytes(data))
        assert adapter.submit_load([keys[1]], [views[1]]).result(WAIT_S) == [False]
        assert adapter.status()["corrupt_objects"] == 1
    assert adapter.status()["errors"] == 0
