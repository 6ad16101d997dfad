"""``fs_native`` never fills its disk: the ``high_watermark`` and ``min_free_bytes`` of ``fs``.

The file system is a real, small ``tmpfs`` mounted for the test (it needs root, as
CI and this machine have; the test is skipped, saying so, where mounting is not
allowed), so ``statvfs`` reports real usage and the refused stores really did not fit.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmcache_l2_fs_native.adapter import FsNativeL2Adapter, build_fs_native
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.testing.small_disk import available_bytes, mounted_tmpfs

KIB = 1024
SIZE = 4 * 1024 * KIB  # the tmpfs
OBJECT = 64 * KIB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", SIZE) as mount_point:
        yield mount_point


def keys(n: int) -> list[ObjectKey]:
    return [ObjectKey(uuid.uuid4().bytes * 2, "model", 0, 0, "") for _ in range(n)]


def build(disk: Path, **limits: object) -> FsNativeL2Adapter:
    raw = {"type": "fs_native", "base_path": str(disk / "cache"), **limits}
    adapter = build_fs_native(FSNativeAdapterConfig.model_validate(raw))
    adapter.start()
    return adapter


def test_min_free_bytes_is_kept(small_disk: Path) -> None:
    keep = 1024 * KIB
    adapter = build(small_disk, min_free_bytes=keep)
    try:
        results: list[bool] = []
        for key in keys(80):  # 5 MiB offered to a 4 MiB disk, one batch at a time
            results += adapter.submit_store([key], [bytes(OBJECT)]).result(30)
        stored = sum(results)
        assert 0 < stored < 80 and results == [True] * stored + [False] * (80 - stored)
        assert keep <= available_bytes(small_disk) < keep + 2 * (OBJECT + 4 * KIB)
        status = adapter.status()
        assert status["refused_no_room"] == 80 - stored and status["errors"] == 0
        adapter.delete(adapter.keys()[:4])  # room comes back when objects go
        assert adapter.submit_store(keys(1), [bytes(OBJECT)]).result(30) == [True]
    finally:
        adapter.close()


def test_a_batch_in_flight_counts_against_the_watermark(small_disk: Path) -> None:
    adapter = build(small_disk, high_watermark=0.5)
    try:
        results = adapter.submit_store(keys(60), [bytes(OBJECT)] * 60).result(30)
        stored = sum(results)
        assert 0 < stored < 60 and results == [True] * stored + [False] * (60 - stored)
        stat = os.statvfs(small_disk)
        used = stat.f_blocks - stat.f_bfree
        assert used / (used + stat.f_bavail) <= 0.5
    finally:
        adapter.close()
