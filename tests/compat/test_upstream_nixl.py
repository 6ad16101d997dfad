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
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_nixl_store.adapter import NixlStoreL2Adapter
from lmcache_l2_nixl_store.nixl_io import open_storage
from lmcache_l2_nixl_store_dynamic.adapter import NixlDynamicL2Adapter

from lmcache_core.storage.keys import ObjectKey

COMPAT_NIXL_PYTHON = os.environ.get("LMCACHE_COMPAT_NIXL_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not COMPAT_NIXL_PYTHON,
    reason="set LMCACHE_COMPAT_NIXL_PYTHON (nox -s compat) to run it",
)
# Our adapters import NIXL only when they build an agent: skip here where it is missing.
pytest.importorskip(
    "nixl._api", reason="NIXL is not installed (pip install --no-deps nixl==1.5.1 nixl-cu12==1.5.1)"
)


DRIVER = Path(__file__).with_name("drive_upstream_nixl.py")
PAGE, COUNT = 4096, 12
POOL_SIZE, FILE_SIZE = 4, 8 * PAGE


@pytest.fixture(scope="module")
def moto_s3_url() -> Iterator[str]:
    """A real S3-protocol server (moto) on loopback, stopped by PID at the end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def object_of(index: int) -> tuple[bytes, str, int, bytes]:
    """``(chunk_hash, model, size, payload)`` of object ``index``, as the driver makes them."""
    chunk_hash = hashlib.sha256(b"nixl-compat:%d" % index).digest()
    size = PAGE * (1 + index % 3)
    block = hashlib.sha256(b"payload:%d" % index).digest()
    return chunk_hash, "compat/nixl-model", size, (block * (size // len(block) + 1))[:size]


def key_of(index: int) -> ObjectKey:
    chunk_hash, model, _, _ = object_of(index)
    return ObjectKey(chunk_hash, model, 0, 0, "")


def upstream(*args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    done = subprocess.run(
        [COMPAT_NIXL_PYTHON, str(DRIVER), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def ours_dynamic(path: Path, shard: bool) -> NixlDynamicL2Adapter:
    storage = open_storage("nixl_store_dynamic", "POSIX", {})
    adapter = NixlDynamicL2Adapter(
        storage, path, capacity_bytes=1 << 30, shard_dirs=shard, object_format="raw"
    )
    adapter.start()
    return adapter


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


def test_our_obj_pool_holds_upstreams_objects(moto_s3_url: str) -> None:
    """The OBJ pool: after the same stores, our object i holds what upstream's object i holds."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=moto_s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    pool_size = 24  # 1 + 2 + 3 pages per three objects: 24 pages for twelve
    buckets = [f"lmcache-compat-{name}-{os.getpid()}" for name in ("upstream", "ours")]
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    params = [
        {
            "access_key": "testing",
            "secret_key": "testing",
            "bucket": bucket,
            "endpoint_override": moto_s3_url,
            "scheme": "http",
            "region": "us-east-1",
            "use_virtual_addressing": "false",
            "req_checksum": "supported",
        }
        for bucket in buckets
    ]
    report = upstream("pool-write-obj", json.dumps(params[0]), str(COUNT), str(pool_size))
    assert report["ok"] is True and len(report["keys"]) == pool_size
    adapter = NixlStoreL2Adapter(
        open_storage("nixl_store", "OBJ", params[1]),
        pool_size=pool_size,
        page_size=PAGE,
        object_format="raw",
    )
    adapter.start()
    try:
        for index in range(COUNT):  # one at a time, as the driver stores them
            assert adapter.submit_store([key_of(index)], [object_of(index)[3]]).result(30) == [True]
        ours = list(adapter.object_keys)
    finally:
        adapter.close()

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
    adapter = NixlStoreL2Adapter(
        open_storage("nixl_store", "POSIX", {}),
        pool_size=POOL_SIZE,
        page_size=PAGE,
        file_path=ours,
        file_size=FILE_SIZE,
        object_format="raw",
    )
    adapter.start()
    try:
        for index in range(COUNT):  # one at a time, as the driver stores them
            assert adapter.submit_store([key_of(index)], [object_of(index)[3]]).result(30) == [True]
        contents = [path.read_bytes() for path in adapter.paths]
    finally:
        adapter.close()
    assert [f["index"] for f in report["files"]] == list(range(POOL_SIZE))
    for record, data in zip(report["files"], contents, strict=True):
        size = record["size"]  # upstream's files are sparse up to the last page written
        assert hashlib.sha256(data[:size]).hexdigest() == record["sha256"], record["index"]
        assert data[size:] == bytes(len(data) - size)
