"""Drive upstream LMCache 0.5.6's own NIXL L2 adapters on a directory; print one JSON line.

Run by ``tests/compat/test_upstream_nixl.py`` under an interpreter that has upstream
lmcache and NIXL (``LMCACHE_COMPAT_NIXL_PYTHON``). Modes:

* ``dynamic-write DIR COUNT SHARD`` / ``dynamic-read DIR COUNT SHARD``: upstream's
  ``nixl_store_dynamic`` (POSIX) stores, or looks up and loads, the test's objects
  in DIR; ``read`` reports which were found and whether each byte matched.
* ``pool-write DIR COUNT POOL_SIZE FILE_SIZE``: upstream's ``nixl_store`` (POSIX)
  stores the objects one after another; reports each pool file's index, size and
  SHA-256, for the caller to compare with its own pool after the same stores.
* ``pool-write-obj PARAMS_JSON COUNT POOL_SIZE``: the same on the OBJ back end
  (``PARAMS_JSON``: NIXL's OBJ ``backend_params``, naming a bucket of an S3 server);
  reports the pool's object keys in index order.

The objects (keys, sizes, bytes) are a function of their index, computed the same
way here and in the test: ``compat_objects.nixl_object_of(i)``.
"""

from __future__ import annotations

# NIXL first: lmcache imports cuda.bindings 13, after which NIXL's meta package
# would insist on nixl-cu13, whose OBJ plugin does not load (see the notes).
import nixl  # noqa: F401  isort: skip

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from compat_objects import NIXL_PAGE as PAGE
from compat_objects import nixl_object_of
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.internal_api import L1MemoryDesc
from lmcache.v1.distributed.l2_adapters.nixl_store_dynamic_l2_adapter import (
    DynamicNixlStoreL2Adapter,
    DynamicNixlStoreL2AdapterConfig,
)
from lmcache.v1.distributed.l2_adapters.nixl_store_l2_adapter import (
    NixlStoreL2Adapter,
    NixlStoreL2AdapterConfig,
)

TIMEOUT_S = 60.0


def key_of(index: int) -> ObjectKey:
    chunk_hash, model, _, _ = nixl_object_of(index)
    return ObjectKey(chunk_hash, model, 0, 0, "")


class Arena:
    """A page-aligned host buffer standing in for upstream's L1, cut into object slots."""

    def __init__(self, count: int) -> None:
        self.slot = 3 * PAGE  # the largest object
        self.size = count * self.slot
        self._raw = np.zeros(self.size + PAGE, dtype=np.uint8)
        start = (-self._raw.ctypes.data) % PAGE
        self.buffer = self._raw[start : start + self.size]
        self.desc = L1MemoryDesc(int(self.buffer.ctypes.data), self.size, PAGE)

    def obj(self, index: int) -> Any:
        """A ``MemoryObj`` stand-in for slot ``index`` holding object ``index``'s size."""
        size = nixl_object_of(index)[2]
        meta = SimpleNamespace(
            address=index * self.slot,  # an offset into the arena, as upstream's are
            phy_size=size,
            shape=torch.Size([size]),
            dtype=torch.uint8,
        )
        return SimpleNamespace(meta=meta)

    def fill(self, index: int) -> None:
        payload = nixl_object_of(index)[3]
        start = index * self.slot
        self.buffer[start : start + len(payload)] = np.frombuffer(payload, dtype=np.uint8)

    def holds(self, index: int) -> bool:
        payload = nixl_object_of(index)[3]
        start = index * self.slot
        return bytes(self.buffer[start : start + len(payload)]) == payload


def wait_for(poll: Any) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        result = poll()
        if result is not None:
            return result
        time.sleep(0.002)
    raise TimeoutError("upstream's adapter did not finish in time")


def store(adapter: Any, arena: Arena, indexes: list[int]) -> bool:
    for index in indexes:
        arena.fill(index)
    task = adapter.submit_store_task([key_of(i) for i in indexes], [arena.obj(i) for i in indexes])

    def done() -> Any:
        return adapter.pop_completed_store_tasks().get(task)

    return int(wait_for(done)) >= 0


def dynamic(mode: str, directory: str, count: int, shard: bool) -> dict[str, Any]:
    params = {"file_path": directory, "use_direct_io": "false", "max_capacity_gb": "1"}
    if shard:
        params["shard_dirs"] = "true"
    config = DynamicNixlStoreL2AdapterConfig.from_dict(
        {"backend": "POSIX", "backend_params": params}
    )
    arena = Arena(count)
    adapter = DynamicNixlStoreL2Adapter(config, arena.desc)
    try:
        indexes = list(range(count))
        if mode == "dynamic-write":
            return {"ok": store(adapter, arena, indexes)}
        keys = [key_of(i) for i in indexes]
        lookup = adapter.submit_lookup_and_lock_task(keys, {})
        found = wait_for(lambda: adapter.query_lookup_and_lock_result(lookup))
        hits = [bool(found.test(i)) for i in indexes]
        load = adapter.submit_load_task(keys, [arena.obj(i) for i in indexes])
        loaded = wait_for(lambda: adapter.query_load_result(load))
        return {
            "ok": True,
            "found": hits,
            "loaded": [bool(loaded.test(i)) for i in indexes],
            "match": [arena.holds(i) for i in indexes],
        }
    finally:
        adapter.close()


@contextmanager
def stored_pool(
    backend: str, params: dict[str, str], count: int, pool_size: int
) -> Iterator[tuple[Any, list[bool]]]:
    """Upstream's ``nixl_store`` after storing objects 0 to ``count - 1``; closed after the block.

    Yields:
        The adapter and, per object, whether its store succeeded.
    """
    config = NixlStoreL2AdapterConfig.from_dict(
        {"backend": backend, "backend_params": params, "pool_size": pool_size}
    )
    arena = Arena(count)
    adapter = NixlStoreL2Adapter(config, arena.desc)
    try:
        # One store at a time: the order the pages are handed out in is then defined.
        yield adapter, [store(adapter, arena, [index]) for index in range(count)]
    finally:
        adapter.close()


def pool(directory: str, count: int, pool_size: int, file_size: int) -> dict[str, Any]:
    params = {"file_path": directory, "use_direct_io": "false", "file_size": str(file_size)}
    with stored_pool("POSIX", params, count, pool_size) as (_, stored):
        pass  # the files outlive the adapter
    files = []
    for path in Path(directory).iterdir():
        match = re.fullmatch(r"obj_(\d+)_[0-9a-f]{4}\.bin", path.name)
        assert match, path.name
        data = path.read_bytes()
        files.append(
            {"index": int(match[1]), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    return {"ok": all(stored), "files": sorted(files, key=lambda f: f["index"])}


def pool_obj(params: dict[str, str], count: int, pool_size: int) -> dict[str, Any]:
    with stored_pool("OBJ", params, count, pool_size) as (adapter, stored):
        # The pool's object names are random: read them from the agent's registration.
        registered = adapter.nixl_agent.storage_reg_descs
        keys = [bytes(registered[i][3]).decode() for i in range(registered.descCount())]
    return {"ok": all(stored), "keys": keys}


def main() -> None:
    mode, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode.startswith("dynamic-"):
        report = dynamic(mode, directory, count, sys.argv[4] == "true")
    elif mode == "pool-write":
        report = pool(directory, count, int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "pool-write-obj":
        report = pool_obj(json.loads(directory), count, int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdout.flush()
    os.write(1, (json.dumps(report) + "\n").encode())


if __name__ == "__main__":
    main()
