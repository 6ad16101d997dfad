"""Shared pieces of the L2 end-to-end tests: a small KV layout and status polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import torch

from lmcache_core.transfer.layout import KVFormat, KVLayout

CHUNK = 256
BLOCK = 16
BPC = CHUNK // BLOCK


def small_layout(num_blocks: int) -> KVLayout:
    """Two layers of bf16 NHD KV: 64 KiB per 256-token chunk."""
    return KVLayout(
        KVFormat.NHD,
        num_layers=2,
        num_blocks=num_blocks,
        block_size=BLOCK,
        num_heads=2,
        head_dim=16,
        dtype=torch.bfloat16,
    )


def l2_status(url: str) -> dict[str, Any]:
    """The L2 tier's part of a server's ``/status``."""
    status: dict[str, Any] = httpx.get(f"{url}/status").json()["data_path"]["engine"]["l2"]
    return status


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")
