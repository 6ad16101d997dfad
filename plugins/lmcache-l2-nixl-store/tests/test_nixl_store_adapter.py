"""``nixl_store`` on the real NIXL library (POSIX back end): conformance, pool layout, refusals.

Skipped where NIXL is not installed, with the install command as the reason.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
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
from lmcache_core.storage.l2.loading import AdapterLoadError
from lmcache_core.testing.l2_conformance import (
    L2AdapterConformance,
    empty_buffers,
    make_keys,
    make_payloads,
    wait,
)

PAGE = 4096
# Enough pages for every conformance test (the largest stores a few 128 KiB objects).
POOL_FILES, FILE_SIZE = 16, 64 * PAGE


def _adapter(
    path: Path,
    capacity: int = 0,
    fmt: ObjectFormat = "framed",
    *,
    direct: bool = False,
    pool_size: int = POOL_FILES,
    file_size: int = FILE_SIZE,
) -> NixlStoreL2Adapter:
    return NixlStoreL2Adapter(
        open_storage("nixl_store", "POSIX", {}),
        pool_size=pool_size,
        page_size=PAGE,
        file_path=path,
        file_size=file_size,
        use_direct_io=direct,
        capacity_bytes=capacity,
        object_format=fmt,
    )


def _config(path: Path, **params: str) -> NixlStoreAdapterConfig:
    backend_params = {"file_path": str(path), "use_direct_io": "false", **params}
    raw: dict[str, Any] = {
        "type": "nixl_store",
        "backend": params.pop("backend", "POSIX"),
        "backend_params": backend_params,
        "pool_size": 4,
    }
    return NixlStoreAdapterConfig.model_validate(raw)


class TestNixlStoreConformance(L2AdapterConformance):
    """Framed and raw objects DMA'd by NIXL POSIX into pages of a pre-allocated pool."""

    direct = False

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return _adapter(tmp_path, capacity_bytes, object_format, direct=self.direct)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, NixlStoreL2Adapter)
        pages = adapter.pages_of(key)
        assert pages
        size = adapter.stored_bytes_of(key)
        assert size is not None
        last = pages[-1]
        offset, _, fd = adapter.layout.piece(last, (size - 1) % PAGE, 1)
        path = adapter.paths[adapter.layout.slot_ids.index(fd)]
        with path.open("r+b") as handle:
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))
        return True


class TestNixlStoreDirectIoConformance(TestNixlStoreConformance):
    """The same with O_DIRECT pool files (unaligned objects through the bounce buffer)."""

    direct = True


def test_pages_are_handed_out_in_order_and_hold_the_bytes(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path, fmt="raw", pool_size=2, file_size=4 * PAGE)
    adapter.start()
    try:
        keys = make_keys(3)
        payloads = make_payloads([3 * PAGE, PAGE + 5, 7])
        assert wait(adapter.submit_store(keys[:1], payloads[:1])) == [True]
        assert wait(adapter.submit_store(keys[1:], payloads[1:])) == [True, True]
        pages = [adapter.pages_of(key) for key in keys]
        assert pages[0] == [0, 1, 2]
        assert sorted(pages[1] + pages[2]) == [3, 4, 5]  # stored concurrently
        names = [path.name for path in adapter.paths]
        assert [name.rsplit("_", 1)[0] for name in names] == ["obj_0", "obj_1"]
        assert all(os.path.getsize(path) == 4 * PAGE for path in adapter.paths)
        first = adapter.paths[0].read_bytes()
        assert first[: 3 * PAGE] == payloads[0]
        assert adapter.status()["pool_free_pages"] == 2
        assert adapter.status()["direct_transfers"] == 3
        # Replacing a key frees its old pages; deleting frees the rest.
        assert wait(adapter.submit_store(keys[:1], [payloads[2]])) == [True]
        assert adapter.status()["pool_free_pages"] == 4
        assert adapter.delete(keys) == 3
        assert adapter.status()["pool_free_pages"] == 8
    finally:
        adapter.close()
    assert list(tmp_path.iterdir()) == []  # RAM index only: the pool goes with it


def test_a_full_pool_refuses_the_store(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path, fmt="raw", pool_size=1, file_size=2 * PAGE)
    adapter.start()
    try:
        keys = make_keys(3)
        assert wait(adapter.submit_store(keys, make_payloads([PAGE, PAGE, 1]))) == [
            True,
            True,
            False,
        ]
        assert adapter.status()["refused_no_room"] == 1
        buffers = empty_buffers([PAGE, PAGE])
        assert wait(adapter.submit_load(keys[:2], buffers)) == [True, True]
    finally:
        adapter.close()


def test_memory_registered_once_is_not_registered_again(tmp_path: Path) -> None:
    region = mmap.mmap(-1, 16 * PAGE)
    view = memoryview(region)
    storage = open_storage("nixl_store", "POSIX", {})
    storage.register_region(*_region_of(view))
    adapter = NixlStoreL2Adapter(
        storage, pool_size=1, page_size=PAGE, file_path=tmp_path, file_size=8 * PAGE
    )
    adapter.start()
    try:
        keys = make_keys(1)
        payload = make_payloads([3 * PAGE])[0]
        view[: 3 * PAGE] = payload
        assert wait(adapter.submit_store(keys, [view[: 3 * PAGE]])) == [True]
        assert wait(adapter.submit_load(keys, [view[8 * PAGE : 11 * PAGE]])) == [True]
        assert bytes(view[8 * PAGE : 11 * PAGE]) == payload
    finally:
        adapter.close()
        view.release()
        region.close()


def _region_of(view: memoryview) -> tuple[int, int]:
    from lmcache_l2_nixl_store.nixl_io import address_of

    return address_of(view), view.nbytes


def test_build_uses_the_l1_page_and_reports_the_pool_as_capacity(tmp_path: Path) -> None:
    config = _config(tmp_path, file_size=str(8 * 8192))
    adapter = build_nixl_store(config, L2AdapterContext(l1_align_bytes=8192))
    try:
        assert adapter.page_size == 8192
        assert adapter.capacity_bytes == 4 * 8 * 8192
        assert adapter.status()["pool_pages"] == 32
    finally:
        adapter.close()


def test_a_file_size_that_is_not_whole_pages_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match="file_size") as caught:
        build_nixl_store(_config(tmp_path, file_size="6000"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("backend", "reason"),
    [("GDS", "cannot be created"), ("GDS_MT", "cannot be created"), ("HF3FS", "no HF3FS plugin")],
)
def test_a_backend_the_library_cannot_create_is_refused_in_one_line(
    tmp_path: Path, backend: str, reason: str
) -> None:
    raw: dict[str, Any] = {
        "type": "nixl_store",
        "backend": backend,
        "backend_params": {"file_path": str(tmp_path), "use_direct_io": "true"},
        "pool_size": 4,
    }
    with pytest.raises(AdapterLoadError, match=reason) as caught:
        build_nixl_store(NixlStoreAdapterConfig.model_validate(raw))
    message = str(caught.value)
    assert backend in message and "\n" not in message
