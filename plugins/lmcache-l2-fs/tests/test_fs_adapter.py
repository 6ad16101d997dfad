"""Behaviour specific to the ``fs`` adapter: file names, on-disk bytes, atomicity, restart."""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_fs import adapter as fs_adapter
from lmcache_l2_fs.adapter import (
    FsL2Adapter,
    build_fs,
    filename_to_object_key,
    is_temp_name,
    object_key_to_filename,
)
from lmcache_l2_fs.config import FSAdapterConfig

from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.l2.object_format import HEADER_SIZE, MAGIC

HASH = bytes(range(32))
KEY = ObjectKey(HASH, "meta-llama/Llama-3.1-8B", pack_kv_rank(2, 1), 0, "")


def key(i: int = 0, **fields: Any) -> ObjectKey:
    return KEY._replace(chunk_hash=i.to_bytes(4, "big") + HASH[4:], **fields)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[FsL2Adapter] = []

    def factory(**kwargs: Any) -> FsL2Adapter:
        adapter = FsL2Adapter(kwargs.pop("base_path", tmp_path / "l2"), **kwargs)
        adapter.start()
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        adapter.close()


def store(adapter: FsL2Adapter, k: ObjectKey, payload: bytes | memoryview) -> bool:
    return adapter.submit_store([k], [payload]).result(timeout=10)[0]


def load(adapter: FsL2Adapter, k: ObjectKey, size: int) -> bytes | None:
    buffer = bytearray(size)
    ok = adapter.submit_load([k], [memoryview(buffer)]).result(timeout=10)[0]
    return bytes(buffer) if ok else None


def files(adapter: FsL2Adapter) -> list[str]:
    return sorted(p.name for p in adapter.base_path.rglob("*") if p.is_file())


# -- file names --------------------------------------------------------------------------


def test_upstream_file_names() -> None:
    assert object_key_to_filename(KEY) == (
        "meta-llama-SEP-Llama-3.1-8B@0x02010201@0@" + HASH.hex() + ".data"
    )
    salted = KEY._replace(kv_rank=5, object_group_id=26, cache_salt="tenant-a")
    assert object_key_to_filename(salted) == (
        "meta-llama-SEP-Llama-3.1-8B@0x00000005@1a@" + HASH.hex() + "@tenant-a.data"
    )


@pytest.mark.parametrize(
    "k",
    [KEY, KEY._replace(cache_salt="s1", object_group_id=3), KEY._replace(model_name="a/b/c")],
)
def test_names_round_trip(k: ObjectKey) -> None:
    assert filename_to_object_key(object_key_to_filename(k)) == k


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        "m@0x00000001@0@abcd.data.tmp",
        "m@0x00000001@0@abcd.data.tmp.0123456789abcdef",
        "m@00000001@0@abcd.data",  # no 0x
        "m@0x00000001@0@ABCD.data",  # not canonical hex
        "m@0x0001@0@abcd.data",  # rank not 8 digits
        "m@0x00000001@0@abc.data",  # odd hex
        "m@0x00000001@0@abcd@.data",  # empty salt
        "m@0x00000001@0@abcd@a@b.data",
        "@0x00000001@0@abcd.data",
        "m@0x00000001@-1@abcd.data",
    ],
)
def test_unparsable_names(name: str) -> None:
    assert filename_to_object_key(name) is None


def test_stored_under_the_upstream_name(make: Any) -> None:
    adapter = make()
    salted = key(1, cache_salt="t1", kv_rank=0xDEADBEEF)
    assert store(adapter, salted, b"x" * 10)
    assert files(adapter) == [object_key_to_filename(salted)]
    assert files(adapter)[0].startswith("meta-llama-SEP-Llama-3.1-8B@0xdeadbeef@0@")


def test_model_name_with_the_separator_text_is_refused(make: Any) -> None:
    adapter = make()
    assert not store(adapter, key(model_name="odd-SEP-name"), b"x")
    assert files(adapter) == []


# -- bytes on disk ------------------------------------------------------------------------


def test_raw_bytes_on_disk_equal_the_payload(make: Any) -> None:
    adapter = make(object_format="raw")
    payload = os.urandom(1000)
    assert store(adapter, KEY, payload)
    assert adapter.path_of(KEY).read_bytes() == payload
    assert load(adapter, KEY, 1000) == payload
    assert adapter.usage().used_bytes == 1000


def test_raw_reads_an_upstream_file(make: Any) -> None:
    adapter = make(object_format="raw")
    payload = os.urandom(300)
    (adapter.base_path / object_key_to_filename(KEY)).write_bytes(payload)
    assert adapter.submit_lookup_and_lock([KEY]).result()[0]
    assert load(adapter, KEY, 300) == payload


def test_framed_files_start_with_the_magic(make: Any) -> None:
    adapter = make()
    payload = os.urandom(100)
    assert store(adapter, KEY, payload)
    data = adapter.path_of(KEY).read_bytes()
    assert data.startswith(MAGIC)
    assert data[HEADER_SIZE:] == payload
    assert load(adapter, KEY, 100) == payload


def test_store_replaces_an_existing_key(make: Any) -> None:
    adapter = make(object_format="raw")
    assert store(adapter, KEY, b"a" * 10)
    assert store(adapter, KEY, b"b" * 20)
    assert load(adapter, KEY, 20) == b"b" * 20
    assert load(adapter, KEY, 10) is None
    assert adapter.usage().used_bytes == 20


# -- misses, never partial data ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", "framed"])
def test_truncated_file_is_a_miss(make: Any, fmt: str) -> None:
    adapter = make(object_format=fmt)
    assert store(adapter, KEY, b"z" * 500)
    path = adapter.path_of(KEY)
    os.truncate(path, path.stat().st_size - 1)
    assert load(adapter, KEY, 500) is None
    os.truncate(path, 0)
    assert load(adapter, KEY, 500) is None


def test_longer_file_is_a_miss(make: Any) -> None:
    adapter = make(object_format="raw")
    assert store(adapter, KEY, b"z" * 500)
    assert load(adapter, KEY, 499) is None


def test_missing_file_is_a_miss(make: Any) -> None:
    adapter = make()
    assert not adapter.submit_lookup_and_lock([KEY]).result()[0]
    assert load(adapter, KEY, 10) is None


@pytest.mark.parametrize("read_ahead", [None, 1, 4096, 10_000])
def test_read_ahead_chunks(make: Any, read_ahead: int | None) -> None:
    adapter = make(read_ahead_size=read_ahead)
    payload = os.urandom(3 * 4096 + 7)
    assert store(adapter, KEY, payload)
    assert load(adapter, KEY, len(payload)) == payload


# -- temporary files ------------------------------------------------------------------------


@pytest.mark.parametrize("tmp_dir", ["", ".tmp", "work/tmp"])
def test_temp_files_are_never_objects(make: Any, tmp_dir: str) -> None:
    adapter = make(relative_tmp_dir=tmp_dir)
    final = object_key_to_filename(KEY)
    tmp = adapter._temp_path(final)
    assert tmp.parent == (adapter.base_path / tmp_dir if tmp_dir else adapter.base_path)
    assert is_temp_name(tmp.name) and tmp.name.startswith(final)
    tmp.write_bytes(b"partial")
    assert not adapter.submit_lookup_and_lock([KEY]).result()[0]
    assert load(adapter, KEY, len(b"partial")) is None
    assert adapter._known_objects() == {}  # scanned, never indexed (and deleted)
    assert not tmp.exists()


@pytest.mark.parametrize("tmp_dir", ["", ".tmp"])
def test_a_store_leaves_no_temp_file(make: Any, tmp_dir: str) -> None:
    adapter = make(relative_tmp_dir=tmp_dir)
    assert store(adapter, KEY, b"x" * 100)
    assert files(adapter) == [object_key_to_filename(KEY)]


def test_long_names_keep_temp_names_within_name_max(make: Any) -> None:
    adapter = make()
    long_key = key(model_name="m" * 100, cache_salt="s" * 60)
    name = object_key_to_filename(long_key)
    assert len(name) <= fs_adapter.NAME_MAX < len(name) + len(".tmp.0123456789abcdef")
    assert len(adapter._temp_path(name).name) == fs_adapter.NAME_MAX
    assert store(adapter, long_key, b"x")
    assert not store(adapter, key(model_name="m" * 200, cache_salt="s" * 80), b"x")


def test_crash_leftover_temp_files_are_deleted_at_start(tmp_path: Path, make: Any) -> None:
    base = tmp_path / "l2"
    (base / ".tmp").mkdir(parents=True)
    name = object_key_to_filename(KEY)
    leftovers = [
        base / f"{name}.tmp.0123456789abcdef",
        base / f"{name}.tmp",  # upstream's temporary name
        base / ".tmp" / f"{name}.tmp.fedcba9876543210",
    ]
    for path in leftovers:
        path.write_bytes(b"torn")
    (base / "README.txt").write_text("not ours")
    adapter = make(base_path=base, relative_tmp_dir=".tmp")
    assert not any(path.exists() for path in leftovers)
    assert (base / "README.txt").exists()
    assert adapter.keys() == []


def test_shared_directory_keeps_fresh_temp_files(tmp_path: Path, make: Any) -> None:
    base = tmp_path / "l2"
    base.mkdir()
    fresh = base / f"{object_key_to_filename(KEY)}.tmp.0123456789abcdef"
    stale = base / f"{object_key_to_filename(key(1))}.tmp.0123456789abcdef"
    fresh.write_bytes(b"being written by another server")
    stale.write_bytes(b"old")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    make(base_path=base, stale_tmp_age_s=3600)
    assert fresh.exists() and not stale.exists()


# -- restart ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", "framed"])
def test_index_rebuilt_across_restart(tmp_path: Path, make: Any, fmt: str) -> None:
    base = tmp_path / "l2"
    first = make(base_path=base, object_format=fmt)
    stored = {
        key(0): b"a" * 10,
        key(1, cache_salt="t1"): b"b" * 20,
        key(2, model_name="org/model", object_group_id=2): b"c" * 30,
    }
    for k, payload in stored.items():
        assert store(first, k, payload)
    (base / "junk.bin").write_bytes(b"ignored")
    (base / "subdir").mkdir()
    usage = first.usage()
    first.close()
    second = make(base_path=base, object_format=fmt)
    assert sorted(second.keys()) == sorted(stored)
    assert second.usage() == usage
    assert usage.by_salt == {"": usage.used_bytes - usage.by_salt["t1"], "t1": usage.by_salt["t1"]}
    for k, payload in stored.items():
        assert load(second, k, len(payload)) == payload


def test_persist_disabled_deletes_the_files_at_close(make: Any) -> None:
    adapter = make(persist=False)
    assert store(adapter, KEY, b"x")
    adapter.close()
    assert files(adapter) == []


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_stores_of_one_key_leave_one_complete_file(make: Any) -> None:
    adapter = make(object_format="raw", num_workers=8)
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
    assert files(adapter) == [object_key_to_filename(KEY)]
    assert adapter.path_of(KEY).read_bytes() in payloads
    assert all(data is None or data in payloads for data in seen)


# -- O_DIRECT -----------------------------------------------------------------------------------


def aligned(size: int, fill: int) -> memoryview:
    buffer = mmap.mmap(-1, size)  # page-aligned
    buffer.write(bytes([fill]) * size)
    return memoryview(buffer)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_odirect_write_when_aligned(make: Any) -> None:
    adapter = make(object_format="raw", use_odirect=True)
    size = adapter.block_size * 4
    payload = aligned(size, 7)
    assert store(adapter, KEY, payload)
    if adapter._odirect_refused:
        pytest.skip("this file system refuses O_DIRECT (the fallback test covers it)")
    assert adapter.odirect_writes == 1
    assert load(adapter, KEY, size) == bytes(payload)
    # Unaligned sizes and framed objects take the buffered path.
    assert store(adapter, key(1), b"x" * (size + 1))
    assert adapter.odirect_writes == 1 and adapter.buffered_writes == 1


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_odirect_refused_falls_back_to_buffered(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = make(object_format="raw", use_odirect=True)
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused (like tmpfs)")
        return real_open(path, flags, *args)

    monkeypatch.setattr(fs_adapter.os, "open", refusing_open)
    size = adapter.block_size * 2
    payload = aligned(size, 3)
    assert store(adapter, KEY, payload)
    assert adapter._odirect_refused
    assert (adapter.odirect_writes, adapter.buffered_writes) == (0, 1)
    assert load(adapter, KEY, size) == bytes(payload)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_odirect_write_error_falls_back_to_buffered(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = make(object_format="raw", use_odirect=True)
    real_writev = os.writev
    direct_fds: set[int] = set()
    real_open = os.open

    def tracking_open(path: Any, flags: int, *args: Any) -> int:
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        else:
            direct_fds.discard(fd)
        return fd

    def failing_writev(fd: int, buffers: Any) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "misaligned")
        return real_writev(fd, buffers)

    monkeypatch.setattr(fs_adapter.os, "open", tracking_open)
    monkeypatch.setattr(fs_adapter.os, "writev", failing_writev)
    size = adapter.block_size
    assert store(adapter, KEY, aligned(size, 9))
    assert adapter.buffered_writes == 1
    assert files(adapter) == [object_key_to_filename(KEY)]
    assert load(adapter, KEY, size) == bytes([9]) * size


def test_unaligned_buffer_is_written_buffered(make: Any) -> None:
    adapter = make(object_format="raw", use_odirect=True)
    size = adapter.block_size
    backing = aligned(size + 1, 1)
    assert store(adapter, KEY, backing[1:])  # right size, misaligned address
    assert adapter.odirect_writes == 0 and adapter.buffered_writes == 1


# -- capacity and building ---------------------------------------------------------------------


def test_object_larger_than_the_capacity_is_refused(make: Any) -> None:
    adapter = make(object_format="raw", capacity_bytes=100)
    assert not store(adapter, KEY, b"x" * 101)
    assert files(adapter) == [] and adapter.refused_full == 1  # refused by the base class
    assert store(adapter, KEY, b"x" * 100)
    assert adapter.usage().capacity_bytes == 100


def test_framed_header_counts_against_the_capacity(make: Any) -> None:
    adapter = make(capacity_bytes=100)
    assert not store(adapter, KEY, b"x" * 100)
    assert store(adapter, KEY, b"x" * (100 - HEADER_SIZE))


def test_build_fs(tmp_path: Path) -> None:
    config = FSAdapterConfig.model_validate(
        {
            "type": "fs",
            "base_path": str(tmp_path / "l2"),
            "relative_tmp_dir": ".tmp",
            "read_ahead_size": 65536,
            "use_odirect": True,
            "max_capacity_gb": 1.5,
            "format": "raw",
            "persist_enabled": False,
            "shared": True,
        }
    )
    adapter = build_fs(config)
    try:
        assert adapter.capacity_bytes == int(1.5 * (1 << 30))
        assert adapter.usage().capacity_bytes == adapter.capacity_bytes
        assert adapter.object_format == "raw"
        assert adapter.tmp_dir == tmp_path / "l2" / ".tmp" and adapter.tmp_dir.is_dir()
        assert adapter.read_ahead_size == 65536
        assert adapter.persist is False
        assert adapter.stale_tmp_age_s == fs_adapter.SHARED_TMP_GRACE_S
        assert adapter.status()["type"] == "fs"
    finally:
        adapter.close()
    unlimited = build_fs(FSAdapterConfig.model_validate({"type": "fs", "base_path": str(tmp_path)}))
    assert unlimited.capacity_bytes == 0 and unlimited.stale_tmp_age_s == 0
    unlimited.close()


# -- loads straight into scratch buffers (what the L2 tier asks for) ---------------------


@pytest.mark.parametrize("object_format", ["framed", "raw"])
@pytest.mark.parametrize("read_ahead_size", [None, 4096])
def test_scratch_buffers_are_filled_in_place_and_still_verified(
    make: Any, monkeypatch: pytest.MonkeyPatch, object_format: str, read_ahead_size: int | None
) -> None:
    adapter = make(object_format=object_format, read_ahead_size=read_ahead_size)
    adapter.buffers_are_scratch = True

    def no_temporary(*_: Any) -> None:
        raise AssertionError("a scratch-buffer load went through _get (a temporary and a copy)")

    monkeypatch.setattr(adapter, "_get", no_temporary)
    payloads = [os.urandom(size) for size in (1, 10_000, 70_001)]
    keys = [key(i) for i in range(3)]
    assert adapter.submit_store(keys, payloads).result(timeout=10) == [True] * 3
    buffers = [bytearray(len(p)) for p in payloads]
    views = [memoryview(b) for b in buffers]
    assert adapter.submit_load(keys, views).result(timeout=10) == [True] * 3
    assert [bytes(b) for b in buffers] == payloads
    # Another size, or no file at all: a miss.
    wrong = [memoryview(bytearray(9_999)), memoryview(bytearray(5))]
    assert adapter.submit_load([keys[1], key(9)], wrong).result(timeout=10) == [False, False]
    if object_format == "framed":
        path = adapter.path_of(keys[2])
        data = bytearray(path.read_bytes())
        data[HEADER_SIZE + 35_000] ^= 0x10
        path.write_bytes(bytes(data))
        before = adapter.corrupt
        assert adapter.submit_load([keys[2]], [views[2]]).result(timeout=10) == [False]
        assert adapter.corrupt == before + 1
