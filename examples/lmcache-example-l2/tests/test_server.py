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

from tests.data_path.l2_helpers import CHUNK, l2_round_trip, l2_status, small_layout
from tests.server_process import clean_env, server_on_free_ports

SRC = Path(__file__).resolve().parents[1] / "src"
LAYOUT = small_layout(160)
TOKENS = [random.Random(11).randrange(50000) for _ in range(3 * CHUNK)]


@contextmanager
def example_server(*adapters: dict[str, Any]) -> Iterator[tuple[int, str]]:
    """A healthy server with ``adapters`` and the example on its PYTHONPATH; (ZeroMQ port, URL)."""
    with server_on_free_ports(
        *("--l1-size-gb", "0.05", "--eviction-policy", "LRU"),
        *(arg for adapter in adapters for arg in ("--l2-adapter", json.dumps(adapter))),
        env=clean_env(PYTHONPATH=str(SRC)),
    ) as server:
        yield server.zmq_port, server.http_url


def both_hold_three(l2: dict[str, Any]) -> bool:
    """Whether every adapter of the cascade holds the three stored chunks (both are checked)."""
    return all(adapter["objects"] == 3 for adapter in l2["adapters"])


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
        # L1 is cleared in between: a hit can only come from the example backend.
        hits_and_same = l2_round_trip(port, url, LAYOUT, TOKENS, seed=7, stored=both_hold_three)
        assert hits_and_same == (3, True)
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
