"""``nixl_store`` and ``nixl_store_dynamic`` (POSIX) next to NIXL itself, in the same run.

Run through ``benchmarks/bench_l2.py --only nixl_store,nixl_store_dynamic``. The
ceiling is the raw library on the same bytes: one NIXL agent, the objects' memory
and one file per object registered, then one ``WRITE`` (or ``READ``) transfer of
the whole batch, which is the least work NIXL can be asked to do for it. Both
adapters run framed (header + payload), as the server runs them. Buffered reads
come from the page cache: they measure the data path, not the disk.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_l2 import Raw, closing_adapter, fresh_keys, measure

LOOKUP_KEYS = 64


def available() -> bool:
    """Whether NIXL can be imported here."""
    try:
        import nixl._api  # noqa: F401
    except ImportError:
        return False
    return True


class RawNixlFiles(Raw):
    """One file per object, the batch moved by one NIXL POSIX transfer each way."""

    def __init__(self, directory: Path) -> None:
        from nixl._api import nixl_agent, nixl_agent_config

        self.directory = directory
        self.agent = nixl_agent(f"bench-raw-{os.getpid()}", nixl_agent_config(backends=[]))
        self.agent.create_backend("POSIX", {})

    def _move(self, op: str, names: Sequence[str], buffers: Sequence[Any], create: bool) -> None:
        agent = self.agent
        flags = (os.O_CREAT | os.O_WRONLY) if create else os.O_RDONLY
        fds = [os.open(self.directory / name, flags, 0o644) for name in names]
        views = [np.frombuffer(buffer, dtype=np.uint8) for buffer in buffers]
        memory = [(int(view.ctypes.data), view.nbytes, 0) for view in views]
        files = [(0, view.nbytes, fd) for view, fd in zip(views, fds, strict=True)]
        try:
            mem_reg = agent.register_memory([(*m, "") for m in memory], mem_type="DRAM")
            file_reg = agent.register_memory([(*f, "") for f in files], mem_type="FILE")
            local = agent.get_xfer_descs(memory, mem_type="DRAM")
            remote = agent.get_xfer_descs(files, mem_type="FILE")
            handle = agent.initialize_xfer(op, local, remote, agent.name)
            state = agent.transfer(handle)
            while state not in ("DONE", "ERR"):
                state = agent.check_xfer_state(handle)
            agent.release_xfer_handle(handle)
            agent.deregister_memory(file_reg)
            agent.deregister_memory(mem_reg)
            if state == "ERR":
                raise OSError(f"raw NIXL {op} failed")
        finally:
            for fd in fds:
                os.close(fd)

    def write(self, names: Sequence[str], payloads: Sequence[bytes]) -> None:
        self._move("WRITE", names, payloads, create=True)

    def read(self, names: Sequence[str], buffers: Sequence[bytearray]) -> None:
        self._move("READ", names, buffers, create=False)

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            (self.directory / name).unlink()


def lookup_ms(adapter: Any) -> float:
    """Median milliseconds of one lookup of :data:`LOOKUP_KEYS` stored keys."""
    keys = fresh_keys(LOOKUP_KEYS)
    assert all(adapter.submit_store(keys, [b"x" * 4096] * LOOKUP_KEYS).result())
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        assert all(adapter.submit_lookup_and_lock(keys).result())
        samples.append(time.perf_counter() - start)
        adapter.unlock(keys)
    adapter.delete(keys)
    return statistics.median(samples) * 1000


def bench_nixl(stack: contextlib.ExitStack, name: str, count: int, size: int) -> dict[str, float]:
    """The figures of one NIXL adapter over a fresh directory."""
    from lmcache_l2_nixl_store.adapter import NixlStoreL2Adapter
    from lmcache_l2_nixl_store.nixl_io import open_storage
    from lmcache_l2_nixl_store_dynamic.adapter import NixlDynamicL2Adapter

    base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
    pool_dir, raw_dir = base / "adapter", base / "raw"
    raw_dir.mkdir()
    storage = open_storage(name, "POSIX", {})
    adapter: Any
    if name == "nixl_store":
        page = 1 << 20  # a large L1 page: fewer descriptors per object
        pages = count * (-(-size // page) + 1) + LOOKUP_KEYS
        adapter = NixlStoreL2Adapter(
            storage,
            pool_size=pages // 64 + 1,
            page_size=page,
            file_path=pool_dir,
            file_size=64 * page,
        )
    else:
        adapter = NixlDynamicL2Adapter(storage, pool_dir, capacity_bytes=1 << 40, persist=False)
    stack.enter_context(closing_adapter(adapter))
    result = measure(name, adapter, {"raw": RawNixlFiles(raw_dir)}, count, size)
    result["lookup_64_ms"] = lookup_ms(adapter)
    return result


def print_nixl_report(report: dict[str, Any], target: float) -> None:
    """The NIXL rows of the Markdown table (same columns as bench_l2's)."""
    for name in ("nixl_store", "nixl_store_dynamic"):
        if name not in report:
            continue
        result = report[name]
        batch = f"{int(result['objects'])} x {result['object_mib']:.0f} MiB"
        for op in ("store", "load"):
            print(
                f"| {name} {op} {batch} | {result[f'adapter_{op}_gbps']:.2f} GB/s | raw NIXL "
                f"POSIX {'WRITE' if op == 'store' else 'READ'} "
                f"{result[f'raw_{op}_gbps']:.2f} GB/s, ratio {result[f'{op}_ratio']:.2f} "
                f"(target >= {target}) |"
            )
        print(f"| {name} lookup of {LOOKUP_KEYS} keys | {result['lookup_64_ms']:.2f} ms | |")
