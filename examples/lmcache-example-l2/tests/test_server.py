"""The example on a real ``lmcache server`` subprocess, loaded from ``PYTHONPATH`` by module path.

A real client stores three chunks; L1 is cleared, so the lookup can only be
served by the example backend (prefetched back into L1), and the retrieved KV
must be byte-identical. Both example backends are loaded, in one cascade:
``native_plugin`` (``DirectoryClient``, whose files are then checked on disk) first,
so the load comes from it, and ``plugin`` (``MemoryAdapter``) second.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.l2_helpers import BPC, CHUNK, l2_status, small_layout, wait_for
from tests.server_process import (
    clean_env,
    drain_output,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
)

SRC = Path(__file__).resolve().parents[1] / "src"
LAYOUT = small_layout(160)


@contextmanager
def example_server(*adapters: dict[str, Any]) -> Iterator[tuple[int, str]]:
    """A healthy server with ``adapters`` and the example on its PYTHONPATH; (ZeroMQ port, URL)."""
    port, http_port = free_port(), free_port()
    process = start_server(
        *("--l1-size-gb", "0.05", "--eviction-policy", "LRU", "--host", "127.0.0.1"),
        *("--port", str(port), "--http-host", "127.0.0.1", "--http-port", str(http_port)),
        *(arg for adapter in adapters for arg in ("--l2-adapter", json.dumps(adapter))),
        env=clean_env(PYTHONPATH=str(SRC)),
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_healthy(process, url, timeout=60)
        drain_output(process)
        yield port, url
    finally:
        stop_server(process)


def store_clear_lookup_retrieve(port: int, url: str) -> tuple[int, bool]:
    """(chunks the lookup found after L1 was cleared, retrieved KV identical to what was stored)."""
    tokens = [random.Random(11).randrange(50000) for _ in range(3 * CHUNK)]
    with MPClient(f"127.0.0.1:{port}", timeout=20) as client, CpuKVWorker(client, LAYOUT) as worker:
        worker.register()
        generator = torch.Generator().manual_seed(7)
        for layer in worker.layers:
            layer.copy_(torch.randn(layer.shape, generator=generator).to(torch.bfloat16))
        src = list(range(1, 1 + 3 * BPC))
        assert worker.store(worker.key(tokens, 0, 3 * CHUNK, "store"), src)
        wait_for(lambda: all(a["objects"] == 3 for a in l2_status(url)["adapters"]))
        client.clear(True)  # L1 is empty: a hit can only come from the example backend
        client.lookup(worker.key(tokens, 0, 3 * CHUNK, "load", worker=False))
        hits = int(client.wait_prefetch_status("load", 10.0) or 0)
        expected = [layer[:, src].clone() for layer in worker.layers]
        dst = list(range(80, 80 + 3 * BPC))
        for layer in worker.layers:
            layer[:, dst] = 0
        same = hits == 3 and worker.retrieve(worker.key(tokens, 0, 3 * CHUNK, "load"), dst)
        same = same and all(
            torch.equal(layer[:, dst], want)
            for layer, want in zip(worker.layers, expected, strict=True)
        )
        client.end_session("load")
        worker.unregister()
    return hits, bool(same)


def test_both_examples_in_one_cascade_on_a_real_server(tmp_path: Path) -> None:
    native = {
        "type": "native_plugin",
        "module_path": "lmcache_example_l2.directory_client",
        "class_name": "DirectoryClient",
        "adapter_params": {"path": str(tmp_path), "num_workers": 2},
    }
    memory = {
        "type": "plugin",
        "module_path": "lmcache_example_l2.memory_adapter",
        "class_name": "MemoryAdapter",
        "adapter_params": {"store_name": "server-test"},
    }
    # Both receive every store; the prefetch loads from the first that has the key: native.
    with example_server(native, memory) as (port, url):
        assert store_clear_lookup_retrieve(port, url) == (3, True)
        directory, in_memory = l2_status(url)["adapters"]
        assert directory["client"] == "lmcache_example_l2.directory_client.DirectoryClient"
        assert directory["completion"] == "event_fd"
        assert directory["deletes"] == "supported"
        assert directory["is_healthy"] and directory["errors"] == 0
        assert in_memory["type"] == "example_memory" and in_memory["objects"] == 3
    files = list(tmp_path.glob("*.bin"))
    assert len(files) == 3
    object_bytes = LAYOUT.object_nbytes(CHUNK) + 48  # payload + the framed header
    assert all(file.stat().st_size == object_bytes for file in files)
