"""The core L2 conformance suite on both example backends, loaded the way the server loads them.

``MemoryAdapter`` goes through the ``plugin`` adapter type's loader, and
``DirectoryClient`` through ``native_plugin``'s (with its eventfd, and without one,
re-polled at the periodic interval), so these tests cover the loaders too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from lmcache_example_l2.directory_client import SUFFIX
from lmcache_example_l2.memory_adapter import named_store
from lmcache_l2_native_plugin.adapter import GIB, build_native_plugin
from lmcache_l2_native_plugin.config import NativePluginAdapterConfig
from lmcache_l2_native_plugin.native_bridge import NativeClientAdapter
from lmcache_l2_plugin.adapter import build_plugin
from lmcache_l2_plugin.config import PluginAdapterConfig

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.testing.l2_conformance import L2AdapterConformance


def memory_adapter(store: str, capacity_bytes: int, object_format: str) -> L2AdapterV1:
    params = {"store_name": store, "capacity_bytes": capacity_bytes, "object_format": object_format}
    config = PluginAdapterConfig.model_validate(
        {
            "type": "plugin",
            "module_path": "lmcache_example_l2.memory_adapter",
            "class_name": "MemoryAdapter",
            "adapter_params": params,
        }
    )
    return build_plugin(config)


def directory_adapter(
    path: Path, capacity_bytes: int, object_format: str, **params: Any
) -> NativeClientAdapter:
    config = NativePluginAdapterConfig.model_validate(
        {
            "type": "native_plugin",
            "module_path": "lmcache_example_l2.directory_client",
            "class_name": "DirectoryClient",
            "adapter_params": {"path": str(path), **params},
            "max_capacity_gb": capacity_bytes / GIB,
            "format": object_format,
        }
    )
    return build_native_plugin(config)


class TestMemoryAdapterConformance(L2AdapterConformance):
    """``{"type": "plugin", "module_path": "lmcache_example_l2.memory_adapter", ...}``."""

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        # One named store per directory the suite hands out: tests never share data.
        return memory_adapter(str(tmp_path), capacity_bytes, object_format)

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        return memory_adapter(str(tmp_path), adapter.capacity_bytes, adapter.object_format)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        store = adapter.store  # type: ignore[attr-defined]
        data = bytearray(store[key])
        data[-1] ^= 0xFF
        store[key] = bytes(data)
        return True


class TestDirectoryClientConformance(L2AdapterConformance):
    """``{"type": "native_plugin", ..., "class_name": "DirectoryClient"}`` with its eventfd."""

    params: dict[str, Any] = {}

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return directory_adapter(tmp_path, capacity_bytes, object_format, **self.params)

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        return directory_adapter(
            tmp_path, adapter.capacity_bytes, adapter.object_format, **self.params
        )

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        path = Path(adapter._client.path)  # type: ignore[attr-defined]
        file = path / (quote(native_key_name(key), safe="@") + SUFFIX)
        data = bytearray(file.read_bytes())
        data[-1] ^= 0xFF
        file.write_bytes(data)
        return True


class TestDirectoryClientWithoutEventFdConformance(TestDirectoryClientConformance):
    """The same client without an event fd: the bridge re-polls it at the periodic interval."""

    params = {"use_eventfd": False}


def test_the_memory_store_outlives_its_adapter(tmp_path: Path) -> None:
    adapter = memory_adapter(str(tmp_path), 0, "raw")
    adapter.start()
    key = ObjectKey(b"\x01" * 32, "m", 0x01000100)
    assert adapter.submit_store([key], [b"abc"]).result(10) == [True]
    adapter.close()
    assert named_store(str(tmp_path)) == {key: b"abc"}
