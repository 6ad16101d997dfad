"""Our ``fs_native`` and upstream LMCache 0.5.6's native ``LMCacheFSClient`` share a directory.

Byte for byte, both ways: files our adapter writes (``"format": "raw"``, buffered
and O_DIRECT) are read by upstream's C++ client, and files upstream's client
writes are indexed at our start-up and loaded. Needs ``LMCACHE_COMPAT_PYTHON``
(``nox -s compat``); skipped otherwise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_fs_native.adapter import FsNativeL2Adapter
from lmcache_l2_fs_native.client import FsNativeClient

from lmcache_core.storage.keys import ObjectKey
from tests.compat.compat_objects import payload_of
from tests.compat.upstream_run import needs_compat_python, run_driver

DRIVER = Path(__file__).with_name("drive_upstream_fs_native.py")
COUNT, SIZE = 16, 256 * 1024 + 100  # not a multiple of the block size: padding must not show

pytestmark = needs_compat_python


def key_of(index: int) -> ObjectKey:
    return ObjectKey(hashlib.sha256(b"%d" % index).digest(), "compat/model", 0, 0, "")


def upstream(mode: str, base: Path) -> dict[str, Any]:
    return run_driver(DRIVER, mode, str(base), str(COUNT), str(SIZE))


@pytest.mark.parametrize("odirect", [False, True])
def test_upstream_reads_what_we_wrote(tmp_path: Path, odirect: bool) -> None:
    adapter = FsNativeL2Adapter(FsNativeClient(tmp_path, use_odirect=odirect), object_format="raw")
    adapter.start()
    try:
        keys = [key_of(i) for i in range(COUNT)]
        stored = adapter.submit_store(keys, [payload_of(i, SIZE) for i in range(COUNT)]).result(30)
        assert stored == [True] * COUNT
    finally:
        adapter.close()
    report = upstream("read", tmp_path)
    assert report["ok"] is True and report["results"] == [True] * COUNT
    assert report["match"] == [True] * COUNT
    assert len(report["files"]) == COUNT  # no temporary file left behind


@pytest.mark.parametrize("odirect", [False, True])
def test_we_index_and_read_what_upstream_wrote(tmp_path: Path, odirect: bool) -> None:
    report = upstream("write", tmp_path)
    assert report["ok"] is True
    adapter = FsNativeL2Adapter(FsNativeClient(tmp_path, use_odirect=odirect), object_format="raw")
    adapter.start()
    try:
        keys = [key_of(i) for i in range(COUNT)]
        assert sorted(adapter.keys()) == sorted(keys) and adapter.used_bytes == COUNT * SIZE
        buffers = [bytearray(SIZE) for _ in range(COUNT)]
        loaded = adapter.submit_load(keys, [memoryview(b) for b in buffers]).result(30)
        assert loaded == [True] * COUNT
        assert all(bytes(buffers[i]) == payload_of(i, SIZE) for i in range(COUNT))
    finally:
        adapter.close()
