"""``FsNativeClient`` and the adapter on a real directory: names, eventfd, O_DIRECT, restart."""

from __future__ import annotations

import mmap
import os
import select
import time
from pathlib import Path

import pytest
from lmcache_l2_fs_native.adapter import FsNativeL2Adapter
from lmcache_l2_fs_native.client import (
    FsNativeClient,
    filename_to_key,
    is_temp_name,
    key_to_filename,
)

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.key_names import native_key_name

HASH = bytes(range(32))
KEY = ObjectKey(HASH, "org/model-7b", 0x01000100, 3, "")
UPSTREAM_NAME = f"org-SEP-model-7b@0x01000100@3@{HASH.hex()}.data"
TIMEOUT_S = 10.0


def wait_completion(client: FsNativeClient, task_id: int) -> tuple[bool, list[bool] | None]:
    """Sleep on the eventfd until ``task_id`` completes (no busy polling)."""
    poller = select.poll()
    poller.register(client.event_fd(), select.POLLIN)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert poller.poll(int(TIMEOUT_S * 1000)), "the eventfd was never signalled"
        for done_id, ok, _error, results in client.drain_completions():
            if done_id == task_id:
                return ok, results
    raise AssertionError(f"task {task_id} never completed")


def aligned(size: int) -> memoryview:
    return memoryview(mmap.mmap(-1, size))


def test_file_names_are_upstreams() -> None:
    name = native_key_name(KEY)
    assert key_to_filename(name) == UPSTREAM_NAME
    assert filename_to_key(UPSTREAM_NAME) == name
    salted = ObjectKey(HASH, "m", 0, 0, "tenant-a")
    assert key_to_filename(native_key_name(salted)).endswith("@tenant-a.data")
    assert filename_to_key("notes.txt") is None
    assert filename_to_key("m@00000000@0@ab.data") is None  # no 0x before the rank
    with pytest.raises(ValueError, match="-SEP-"):
        key_to_filename("a-SEP-b@00000000@0@ab")
    assert is_temp_name(UPSTREAM_NAME + ".tmp") and is_temp_name(
        UPSTREAM_NAME + ".tmp.0123456789abcdef"
    )


def test_batches_complete_on_the_eventfd(tmp_path: Path) -> None:
    client = FsNativeClient(tmp_path, num_workers=2)
    try:
        names = [native_key_name(ObjectKey(bytes([i]) * 32, "m", 0, 0, "")) for i in range(8)]
        values = [memoryview(bytes([i]) * (1000 + i)) for i in range(8)]
        assert wait_completion(client, client.submit_batch_set(names, values)) == (True, [True] * 8)
        exists = client.submit_batch_exists([*names, names[0].replace("m@", "n@")])
        assert wait_completion(client, exists) == (True, [True] * 8 + [False])
        buffers = [memoryview(bytearray(v.nbytes)) for v in values]
        assert wait_completion(client, client.submit_batch_get(names, buffers))[1] == [True] * 8
        assert [bytes(b) for b in buffers] == [bytes(v) for v in values]
        # A file of another size is a miss and leaves the buffer alone.
        short = memoryview(bytearray(b"x" * 10))
        assert wait_completion(client, client.submit_batch_get(names[:1], [short]))[1] == [False]
        assert bytes(short) == b"x" * 10
        assert wait_completion(client, client.submit_batch_delete(names[:3]))[1] == [True] * 3
        assert wait_completion(client, client.submit_batch_delete(names[:1]))[1] == [False]
        assert wait_completion(client, client.submit_batch_get([], []))[1] == []
    finally:
        client.close()


def test_raw_store_writes_upstreams_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    adapter = FsNativeL2Adapter(FsNativeClient(tmp_path), object_format="raw")
    adapter.start()
    try:
        payload = os.urandom(12345)
        assert adapter.submit_store([KEY], [payload]).result(TIMEOUT_S) == [True]
        assert sorted(os.listdir(tmp_path)) == [UPSTREAM_NAME]
        assert (tmp_path / UPSTREAM_NAME).read_bytes() == payload
        assert adapter.status()["buffered_ops"] == 1
    finally:
        adapter.close()


def test_the_index_is_rebuilt_from_files_and_leftovers_deleted(tmp_path: Path) -> None:
    payload = os.urandom(4096)
    (tmp_path / UPSTREAM_NAME).write_bytes(payload)  # as upstream's client leaves it
    (tmp_path / (UPSTREAM_NAME + ".tmp")).write_bytes(b"torn")  # upstream's crash leftover
    (tmp_path / (UPSTREAM_NAME + ".tmp.0123456789abcdef")).write_bytes(b"torn")  # ours
    (tmp_path / "README.txt").write_text("not a cache file")
    adapter = FsNativeL2Adapter(FsNativeClient(tmp_path), object_format="raw")
    adapter.start()
    try:
        assert adapter.keys() == [KEY] and adapter.used_bytes == 4096
        assert sorted(os.listdir(tmp_path)) == sorted([UPSTREAM_NAME, "README.txt"])
        assert adapter.submit_lookup_and_lock([KEY]).result(TIMEOUT_S) == [True]
        buffer = bytearray(4096)
        assert adapter.submit_load([KEY], [memoryview(buffer)]).result(TIMEOUT_S) == [True]
        assert bytes(buffer) == payload
    finally:
        adapter.close()


def test_odirect_moves_aligned_buffers_as_is_and_bounces_the_rest(tmp_path: Path) -> None:
    client = FsNativeClient(tmp_path, use_odirect=True)
    if not client.use_odirect:
        pytest.skip("this platform has no O_DIRECT")
    adapter = FsNativeL2Adapter(client, object_format="raw")
    adapter.start()
    try:
        block = client.block_size
        keys = [ObjectKey(bytes([i]) * 32, "m", 0, 0, "") for i in range(2)]
        whole = aligned(4 * block)
        whole[:] = os.urandom(4 * block)
        odd = memoryview(os.urandom(3 * block + 17))
        assert adapter.submit_store(keys, [whole, odd]).result(TIMEOUT_S) == [True, True]
        if not client.use_odirect:
            pytest.skip(f"{tmp_path} refuses O_DIRECT")
        sizes = [os.path.getsize(client.path_of(native_key_name(k))) for k in keys]
        assert sizes == [4 * block, 3 * block + 17]  # padding cut off: upstream's bytes
        into_whole, into_odd = aligned(4 * block), memoryview(bytearray(odd.nbytes))
        loaded = adapter.submit_load(keys, [into_whole, into_odd]).result(TIMEOUT_S)
        assert loaded == [True, True]
        assert bytes(into_whole) == bytes(whole) and bytes(into_odd) == bytes(odd)
        status = adapter.status()
        assert (status["odirect_ops"], status["bounced_odirect_ops"]) == (2, 2)
        assert status["buffered_ops"] == 0
    finally:
        adapter.close()


def test_odirect_falls_back_on_a_file_system_that_refuses_it(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm tmpfs here")
    directory = shm / f"lmcache-fs-native-{os.getpid()}-{tmp_path.name}"
    directory.mkdir()
    try:
        os.close(os.open(directory / "probe", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644))
    except OSError:
        pass  # refused: the case under test
    else:
        (directory / "probe").unlink()
        directory.rmdir()
        pytest.skip("this kernel's tmpfs accepts O_DIRECT (Linux >= 6.6)")
    client = FsNativeClient(directory, use_odirect=True)
    adapter = FsNativeL2Adapter(client, object_format="raw")
    adapter.start()
    try:
        assert adapter.submit_store([KEY], [b"abc" * 1000]).result(TIMEOUT_S) == [True]
        buffer = bytearray(3000)
        assert adapter.submit_load([KEY], [memoryview(buffer)]).result(TIMEOUT_S) == [True]
        assert bytes(buffer) == b"abc" * 1000
        assert client.use_odirect is False and adapter.status()["buffered_ops"] == 2
    finally:
        adapter.close()
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


def test_a_key_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    adapter = FsNativeL2Adapter(FsNativeClient(tmp_path))
    adapter.start()
    try:
        bad = ObjectKey(HASH, "a-SEP-b", 0, 0, "")  # would read back as model "a/b"
        results = adapter.submit_store([KEY, bad], [b"1" * 64, b"2" * 64]).result(TIMEOUT_S)
        assert results == [True, False]
        status = adapter.status()
        assert status["failed_keys"] == 1 and "-SEP-" in status["last_key_error"]
        assert status["is_healthy"] is True
    finally:
        adapter.close()
