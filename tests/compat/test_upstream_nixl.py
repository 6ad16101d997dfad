"""Our NIXL adapters and upstream LMCache 0.5.6's own NIXL adapters, byte for byte.

* ``nixl_store_dynamic`` (POSIX): files our adapter writes (``"format": "raw"``, flat
  and with ``shard_dirs``) are found and loaded by upstream's adapter, and files
  upstream's adapter writes are indexed at our start-up and loaded.
* ``nixl_store`` (POSIX, and OBJ against moto): its index is in RAM only and its
  pool files are named at random, so no process reads another's pool, upstream's
  included. What can be compared is the layout: after the same stores, one at a
  time, our pool files (objects) hold the same bytes at the same offsets (indexes)
  as upstream's.

Upstream's adapters need NIXL in upstream's interpreter: ``LMCACHE_COMPAT_NIXL_PYTHON``
names one (``nox -s compat`` builds it; see CONTRIBUTING.md); skipped otherwise,
and where NIXL is missing from ours.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_nixl_store.adapter import NixlStoreL2Adapter
from lmcache_l2_nixl_store.nixl_io import open_storage
from lmcache_l2_nixl_store.testing import NIXL_API, NIXL_MISSING, NixlObjMotoS3
from lmcache_l2_nixl_store_dynamic.adapter import NixlDynamicL2Adapter

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.testing.moto_s3 import running_moto_s3
from tests.compat.compat_objects import NIXL_PAGE
from tests.compat.compat_objects import nixl_object_of as object_of
from tests.compat.upstream_run import COMPAT_NIXL_PYTHON, needs_compat_nixl_python, run_driver

pytestmark = needs_compat_nixl_python
# Our adapters import NIXL only when they build an agent: skip here where it is missing.
pytest.importorskip(NIXL_API, reason=NIXL_MISSING)


DRIVER = Path(__file__).with_name("drive_upstream_nixl.py")
PAGE, COUNT = NIXL_PAGE, 12
POOL_SIZE, FILE_SIZE = 4, 8 * PAGE


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[NixlObjMotoS3]:
    """A real S3-protocol server (moto) on loopback, stopped by PID at the end."""
    yield from running_moto_s3(NixlObjMotoS3())


def key_of(index: int) -> ObjectKey:
    chunk_hash, model, _, _ = object_of(index)
    return ObjectKey(chunk_hash, model, 0, 0, "")


def upstream(*args: str) -> dict[str, Any]:
    return run_driver(DRIVER, *args, python=COMPAT_NIXL_PYTHON)


def ours_dynamic(path: Path, shard: bool) -> NixlDynamicL2Adapter:
    storage = open_storage("nixl_store_dynamic", "POSIX", {})
    adapter = NixlDynamicL2Adapter(
        storage, path, capacity_bytes=1 << 30, shard_dirs=shard, object_format="raw"
    )
    adapter.start()
    return adapter


@contextmanager
def pool_after_the_drivers_stores(
    backend: str, params: dict[str, str], **pool: Any
) -> Iterator[NixlStoreL2Adapter]:
    """Our ``nixl_store`` pool (raw objects) after the stores the driver makes, then closed.

    The objects are stored one at a time, as the driver stores them: the order in
    which pages are handed out is then defined, and both pools can be compared.
    """
    adapter = NixlStoreL2Adapter(
        open_storage("nixl_store", backend, params), page_size=PAGE, object_format="raw", **pool
    )
    adapter.start()
    try:
        for index in range(COUNT):
            assert adapter.submit_store([key_of(index)], [object_of(index)[3]]).result(30) == [True]
        yield adapter
    finally:
        adapter.close()


@pytest.mark.parametrize("shard", [False, True], ids=["flat", "shard_dirs"])
def test_upstream_dynamic_reads_what_we_wrote(tmp_path: Path, shard: bool) -> None:
    adapter = ours_dynamic(tmp_path, shard)
    try:
        keys = [key_of(i) for i in range(COUNT)]
        payloads = [object_of(i)[3] for i in range(COUNT)]
        assert adapter.submit_store(keys, payloads).result(30) == [True] * COUNT
    finally:
        adapter.close()
    report = upstream("dynamic-read", str(tmp_path), str(COUNT), str(shard).lower())
    assert report["found"] == [True] * COUNT
    assert report["loaded"] == [True] * COUNT
    assert report["match"] == [True] * COUNT


@pytest.mark.parametrize("shard", [False, True], ids=["flat", "shard_dirs"])
def test_we_index_and_read_what_upstream_dynamic_wrote(tmp_path: Path, shard: bool) -> None:
    assert upstream("dynamic-write", str(tmp_path), str(COUNT), str(shard).lower())["ok"]
    adapter = ours_dynamic(tmp_path, shard)
    try:
        keys = [key_of(i) for i in range(COUNT)]
        assert sorted(adapter.keys()) == sorted(keys)  # indexed from the disk at start
        assert adapter.submit_lookup_and_lock(keys).result(30) == [True] * COUNT
        buffers = [memoryview(bytearray(object_of(i)[2])) for i in range(COUNT)]
        assert adapter.submit_load(keys, buffers).result(30) == [True] * COUNT
        assert [bytes(b) for b in buffers] == [object_of(i)[3] for i in range(COUNT)]
    finally:
        adapter.close()


def test_our_obj_pool_holds_upstreams_objects(moto_s3: NixlObjMotoS3) -> None:
    """The OBJ pool: after the same stores, our object i holds what upstream's object i holds."""
    client = moto_s3.client()
    pool_size = 24  # 1 + 2 + 3 pages per three objects: 24 pages for twelve
    buckets = [moto_s3.make_bucket(), moto_s3.make_bucket()]  # upstream's, ours
    params = [moto_s3.obj_params(bucket) for bucket in buckets]
    report = upstream("pool-write-obj", json.dumps(params[0]), str(COUNT), str(pool_size))
    assert report["ok"] is True and len(report["keys"]) == pool_size
    with pool_after_the_drivers_stores("OBJ", params[1], pool_size=pool_size) as adapter:
        ours = list(adapter.object_keys)

    def body(bucket: str, key: str) -> bytes | None:
        try:
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except client.exceptions.NoSuchKey:
            return None

    for index, (theirs_key, our_key) in enumerate(zip(report["keys"], ours, strict=True)):
        assert theirs_key.rsplit("_", 1)[0] == our_key.rsplit("_", 1)[0] == f"obj_{index}"
        assert body(buckets[0], theirs_key) == body(buckets[1], our_key), index


def test_our_pool_holds_upstreams_bytes_at_upstreams_offsets(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "upstream", tmp_path / "ours"
    theirs.mkdir()
    report = upstream("pool-write", str(theirs), str(COUNT), str(POOL_SIZE), str(FILE_SIZE))
    assert report["ok"] is True
    with pool_after_the_drivers_stores(
        "POSIX", {}, pool_size=POOL_SIZE, file_path=ours, file_size=FILE_SIZE
    ) as adapter:
        contents = [path.read_bytes() for path in adapter.paths]
    assert [f["index"] for f in report["files"]] == list(range(POOL_SIZE))
    for record, data in zip(report["files"], contents, strict=True):
        size = record["size"]  # upstream's files are sparse up to the last page written
        assert hashlib.sha256(data[:size]).hexdigest() == record["sha256"], record["index"]
        assert data[size:] == bytes(len(data) - size)
