"""A real server on this CPU-only host: --l1-use-lazy is downgraded with one warning.

No registrar runs here (nothing can page-lock for a device), so this is the path every
CPU host takes; the pinned path is checked with a FAKE registrar in test_pinning.py and
with CUDA in tests/gpu/test_lazy_pinning.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from lmcache_core.server.data_path import LAZY_DOWNGRADED
from tests.server_process import server_on_free_ports

GIB = 1 << 30
POLICY = ("--eviction-policy", "LRU")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only path")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_lazy_on_cpu_warns_once_and_allocates_eagerly_without_committing() -> None:
    # 64 GB of L1 (more than this machine has): eager allocation must not touch it.
    args = ("--l1-size-gb", "64", "--l1-init-size-gb", "1", "--shm-name", "", *POLICY)
    with server_on_free_ports(*args, timeout=60.0) as server:
        status = httpx.get(f"{server.http_url}/status", timeout=5).json()
        l1 = status["data_path"]["l1"]
        assert l1["kind"] == "anonymous"
        # Eager: the whole capacity is allocatable from the start, nothing is pinned.
        assert l1["limit_bytes"] == l1["capacity_bytes"] == 64 * GIB
        assert l1["pinning"] == {
            "registrar": None,
            "state": "unpinned",
            "pinned_bytes": 0,
            "target_bytes": 0,
        }
        assert rss_bytes(server.process.pid) < 4 * GIB  # the pages were not committed
    assert server.output().count(LAZY_DOWNGRADED) == 1, server.output()


def test_no_lazy_on_cpu_says_nothing() -> None:
    args = ("--l1-size-gb", "0.05", "--no-l1-use-lazy", "--shm-name", "", *POLICY)
    with server_on_free_ports(*args, timeout=60.0) as server:
        l1 = httpx.get(f"{server.http_url}/status", timeout=5).json()["data_path"]["l1"]
        assert l1["limit_bytes"] == l1["capacity_bytes"]
    assert "--l1-use-lazy" not in server.output()
