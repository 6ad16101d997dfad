"""``nixl_store`` on NIXL's OBJ back end against a real S3-protocol server (moto).

Skipped, saying why, where NIXL or moto is not installed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from lmcache_l2_nixl_store.testing import NIXL_API, NIXL_MISSING

pytest.importorskip(NIXL_API, reason=NIXL_MISSING)

from lmcache_l2_nixl_store.adapter import NixlStoreL2Adapter, build_nixl_store
from lmcache_l2_nixl_store.config import NixlStoreAdapterConfig
from lmcache_l2_nixl_store.nixl_io import open_storage

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import L2AdapterContext
from lmcache_core.testing.l2_conformance import (
    L2AdapterConformance,
    empty_buffers,
    make_keys,
    make_payloads,
    wait,
)

PAGE = 4096
TIMEOUT_S = 2.0
POOL = 160  # pages (objects): the largest conformance test stores a few 128 KiB objects


class TestNixlStoreObjConformance(L2AdapterConformance):
    """Framed and raw objects in a pool of S3 objects, one page each, moved by NIXL OBJ."""

    sizes = (1, 100, 4096, 4097, 3, 20000, 777)

    @pytest.fixture(autouse=True)
    def _server(self, moto_s3: Any) -> None:
        self.moto = moto_s3

    def make_adapter(
        self, tmp_path: Any, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        storage = open_storage("nixl_store", "OBJ", self.moto.obj_params(self.moto.make_bucket()))
        return NixlStoreL2Adapter(
            storage,
            pool_size=POOL,
            page_size=PAGE,
            capacity_bytes=capacity_bytes,
            object_format=object_format,
        )

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, NixlStoreL2Adapter)
        pages = adapter.pages_of(key)
        assert pages
        bucket = adapter.storage.params["bucket"]
        name = adapter.object_keys[pages[-1]]
        client = self.moto.client()
        data = bytearray(client.get_object(Bucket=bucket, Key=name)["Body"].read())
        data[-1] ^= 0xFF
        client.put_object(Bucket=bucket, Key=name, Body=bytes(data))
        return True


def test_pages_are_s3_objects_holding_the_bytes(moto_s3: Any) -> None:
    bucket = moto_s3.make_bucket()
    raw: dict[str, Any] = {
        "type": "nixl_store",
        "backend": "OBJ",
        "backend_params": moto_s3.obj_params(bucket),
        "pool_size": 8,
        "format": "raw",
    }
    adapter = build_nixl_store(NixlStoreAdapterConfig.model_validate(raw), L2AdapterContext())
    adapter.start()
    try:
        assert adapter.capacity_bytes == 8 * PAGE
        [key] = make_keys(1)
        [payload] = make_payloads([2 * PAGE + 10])
        assert wait(adapter.submit_store([key], [payload])) == [True]
        pages = adapter.pages_of(key)
        assert pages == [0, 1, 2]
        client = moto_s3.client()
        names = [adapter.object_keys[page] for page in pages]
        assert [name.rsplit("_", 1)[0] for name in names] == ["obj_0", "obj_1", "obj_2"]
        stored = b"".join(client.get_object(Bucket=bucket, Key=n)["Body"].read() for n in names)
        assert stored == payload
    finally:
        adapter.close()


def test_a_missing_bucket_fails_the_store_not_the_server(moto_s3: Any) -> None:
    storage = open_storage("nixl_store", "OBJ", moto_s3.obj_params("lmcache-no-such-bucket"))
    adapter = NixlStoreL2Adapter(storage, pool_size=4, page_size=PAGE)
    adapter.start()
    try:
        keys = make_keys(1)
        assert wait(adapter.submit_store(keys, make_payloads([100]))) == [False]
        assert adapter.status()["errors"] == 1
        assert adapter.status()["pool_free_pages"] == 4  # the pages went back
        assert wait(adapter.submit_lookup_and_lock(keys)) == [False]
    finally:
        adapter.close()


def test_a_server_that_dies_fails_transfers_within_the_timeout_and_recovery_needs_no_restart(
    own_moto_s3: Any,
) -> None:
    bucket = own_moto_s3.make_bucket()
    # With the server gone, NIXL's OBJ plugin (aws-sdk-cpp) retries inside the transfer
    # for longer than 20 s: the adapter's own bound is what answers.
    storage = open_storage(
        "nixl_store", "OBJ", own_moto_s3.obj_params(bucket), transfer_timeout_s=TIMEOUT_S
    )
    adapter = NixlStoreL2Adapter(storage, pool_size=16, page_size=PAGE)
    adapter.start()
    try:
        keys = make_keys(3)
        payloads = make_payloads([PAGE, PAGE, PAGE])
        assert wait(adapter.submit_store(keys[:1], payloads[:1])) == [True]
        own_moto_s3.stop()
        started = time.monotonic()
        assert adapter.submit_store(keys[1:2], payloads[1:2]).result(3 * TIMEOUT_S) == [False]
        assert time.monotonic() - started < 2 * TIMEOUT_S
        assert wait(adapter.submit_lookup_and_lock(keys[:1])) == [True]  # the index is local
        started = time.monotonic()
        assert adapter.submit_load(keys[:1], empty_buffers([PAGE])).result(3 * TIMEOUT_S) == [
            False
        ]  # a miss, not a hang
        assert time.monotonic() - started < 2 * TIMEOUT_S
        adapter.unlock(keys[:1])
        own_moto_s3.start()  # moto keeps nothing: the bucket and the first object are gone
        own_moto_s3.client().create_bucket(Bucket=bucket)
        assert wait(adapter.submit_load(keys[:1], empty_buffers([PAGE]))) == [False]
        assert wait(adapter.submit_store(keys[2:], payloads[2:])) == [True]
        buffers = empty_buffers([PAGE])
        assert wait(adapter.submit_load(keys[2:], buffers)) == [True]
        assert bytes(buffers[0]) == payloads[2]
        assert adapter.status()["is_healthy"] is True
    finally:
        adapter.close()
