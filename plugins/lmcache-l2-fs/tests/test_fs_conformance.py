"""The L2 adapter conformance suite, run against ``FsL2Adapter`` on a real directory."""

from __future__ import annotations

from pathlib import Path

from lmcache_l2_fs.adapter import FsL2Adapter

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.testing.l2_conformance import L2AdapterConformance


class TestFsConformance(L2AdapterConformance):
    """Framed and raw objects in files under ``tmp_path``, with a temporary directory."""

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return FsL2Adapter(
            tmp_path,
            relative_tmp_dir=".tmp",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
        )

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, FsL2Adapter)
        path = adapter.path_of(key)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        assert isinstance(adapter, FsL2Adapter)
        # Not started: the suite calls start(), which rebuilds the index from the files.
        return FsL2Adapter(
            tmp_path,
            relative_tmp_dir=".tmp",
            capacity_bytes=adapter.capacity_bytes,
            object_format=adapter.object_format,
        )
