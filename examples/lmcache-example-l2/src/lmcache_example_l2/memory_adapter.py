"""``MemoryAdapter``: an :class:`L2AdapterV1` subclass keeping objects in named in-memory stores.

The smallest complete adapter: the base class does the threading, futures, the
framed object format, pins, usage and capacity; the subclass only stores bytes.
Stores are named and live as long as the process, so a second adapter over the
same ``store_name`` sees what the first one stored, like a real backend would.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1

_STORES: dict[str, dict[ObjectKey, bytes]] = {}
_STORES_LOCK = threading.Lock()


def named_store(name: str) -> dict[ObjectKey, bytes]:
    """The process-wide store called ``name`` (created empty on first use)."""
    with _STORES_LOCK:
        return _STORES.setdefault(name, {})


class MemoryAdapterConfig(BaseModel):
    """The ``adapter_params`` of ``MemoryAdapter`` (found by the ``<class>Config`` rule).

    Unknown keys are rejected, as the server does for its own adapters.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_name: str = Field(default="default", min_length=1, description="Which store to use.")
    capacity_bytes: int = Field(default=0, ge=0, description="Capacity; 0 means unlimited.")
    object_format: Literal["framed", "raw"] = Field(
        default="framed", description="framed: header with checksum; raw: bare bytes."
    )
    num_workers: int = Field(default=2, ge=1, description="Threads running the store calls.")


class MemoryAdapter(L2AdapterV1):
    """Objects in a named in-memory store.

    Args:
        config: Validated ``adapter_params``.
    """

    def __init__(self, config: MemoryAdapterConfig) -> None:
        super().__init__(
            "example_memory",
            capacity_bytes=config.capacity_bytes,
            object_format=config.object_format,
            num_workers=config.num_workers,
        )
        self.store = named_store(config.store_name)
        self._store_lock = threading.Lock()

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        data = b"".join(parts)  # one immutable copy: a reader never sees half an object
        with self._store_lock:
            self.store[key] = data

    def _exists(self, key: ObjectKey) -> bool:
        with self._store_lock:
            return key in self.store

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        with self._store_lock:
            return self.store.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        with self._store_lock:
            return self.store.pop(key, None) is not None

    def _known_objects(self) -> dict[ObjectKey, int]:
        with self._store_lock:
            return {key: len(data) for key, data in self.store.items()}
