"""``nixl_store_dynamic`` on the real NIXL library (POSIX back end): conformance, names, refusals.

Skipped where NIXL is not installed, with the install command as the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_nixl_store.testing import NIXL_API, NIXL_MISSING

pytest.importorskip(NIXL_API, reason=NIXL_MISSING)

from lmcache_l2_nixl_store.nixl_io import open_storage
from lmcache_l2_nixl_store_dynamic.adapter import (
    NixlDynamicL2Adapter,
    build_nixl_store_dynamic,
    filename_to_object_key,
    object_key_to_relpath,
)
from lmcache_l2_nixl_store_dynamic.config import NixlStoreDynamicAdapterConfig

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.loading import AdapterLoadError
from lmcache_core.testing.l2_conformance import L2AdapterConformance

HASH = bytes(range(32))
KEY = ObjectKey(HASH, "org/model", 0x01000100, 3, "")
UPSTREAM_NAME = f"org--model_01000100_3_{HASH.hex()}.bin"


def _adapter(
    path: Path, capacity: int, fmt: ObjectFormat, *, direct: bool = False, shard: bool = False
) -> NixlDynamicL2Adapter:
    storage = open_storage("nixl_store_dynamic", "POSIX", {})
    return NixlDynamicL2Adapter(
        storage,
        path,
        capacity_bytes=capacity,
        use_direct_io=direct,
        shard_dirs=shard,
        object_format=fmt,
    )


class TestNixlDynamicConformance(L2AdapterConformance):
    """Framed and raw objects DMA'd by NIXL POSIX into one file per key."""

    direct = False

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return _adapter(tmp_path, capacity_bytes, object_format, direct=self.direct)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, NixlDynamicL2Adapter)
        path = adapter.path_of(key)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        assert isinstance(adapter, NixlDynamicL2Adapter)
        return _adapter(tmp_path, adapter.capacity_bytes, adapter.object_format, direct=self.direct)


class TestNixlDynamicDirectIoConformance(TestNixlDynamicConformance):
    """The same with O_DIRECT files (unaligned objects through the bounce buffer)."""

    direct = True


def test_file_names_are_upstreams(tmp_path: Path) -> None:
    assert object_key_to_relpath(KEY, shard_dirs=False) == UPSTREAM_NAME
    assert object_key_to_relpath(KEY, shard_dirs=True) == f"00/01/{UPSTREAM_NAME}"
    assert filename_to_object_key(UPSTREAM_NAME) == KEY
    assert filename_to_object_key("notes.bin") is None
    adapter = _adapter(tmp_path, 1 << 30, "raw", shard=True)
    adapter.start()
    try:
        payload = os.urandom(10_000)
        assert adapter.submit_store([KEY], [payload]).result(10) == [True]
        assert (tmp_path / "00" / "01" / UPSTREAM_NAME).read_bytes() == payload
        assert adapter.status()["direct_transfers"] == 1
    finally:
        adapter.close()
    again = _adapter(tmp_path, 1 << 30, "raw", shard=True)
    again.start()
    try:
        assert again.keys() == [KEY] and again.used_bytes == 10_000
    finally:
        again.close()


@pytest.mark.parametrize(
    ("backend", "reason"),
    [("GDS", "cannot be created"), ("GDS_MT", "cannot be created"), ("HF3FS", "no HF3FS plugin")],
)
def test_a_backend_the_library_cannot_create_is_refused_in_one_line(
    tmp_path: Path, backend: str, reason: str
) -> None:
    params = {"file_path": str(tmp_path), "use_direct_io": "false", "max_capacity_gb": "1"}
    raw: dict[str, Any] = {
        "type": "nixl_store_dynamic",
        "backend": backend,
        "backend_params": params,
    }
    config = NixlStoreDynamicAdapterConfig.model_validate(raw)
    with pytest.raises(AdapterLoadError, match=reason) as caught:
        build_nixl_store_dynamic(config)
    message = str(caught.value)
    assert backend in message and "\n" not in message
