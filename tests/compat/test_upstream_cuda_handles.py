"""Upstream LMCache 0.5.6's encoder and client with CUDA handles (``nox -s compat``).

Needs ``LMCACHE_COMPAT_PYTHON`` (a Python with ``lmcache==0.5.6``); skipped otherwise. No GPU
needed: upstream's wrappers are restored from wire descriptors (``from_wire``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_core.transfer.cuda_handles import NO_CUDA_MESSAGE
from tests.compat.upstream_run import needs_compat_python, run_driver
from tests.server_process import server_on_free_ports

DRIVER = Path(__file__).with_name("drive_upstream_cuda_handles.py")
FIXTURE = Path(__file__).parents[1] / "transfer" / "upstream_device_handles.json"

pytestmark = needs_compat_python


def upstream(*args: str) -> dict[str, Any]:
    return run_driver(DRIVER, *args, timeout=120.0)


def test_the_decoding_fixture_is_what_upstream_encodes() -> None:
    fixture = json.loads(FIXTURE.read_text())
    fixture.pop("generated_by")
    assert upstream("encode") == fixture


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a server without CUDA")
def test_upstream_client_gets_one_clear_error_from_a_cpu_only_server() -> None:
    with server_on_free_ports("--l1-size-gb", "0.05", "--eviction-policy", "LRU") as server:
        report = upstream("register", server.zmq_url)
    # Upstream's client cannot read an error frame: it fails the call at once (no hang,
    # well under its mq_timeout) and the server's log carries the clear reason, once per call.
    for tag in ("cuda", "cuda_raw"):
        entry = report[tag]
        assert isinstance(entry, dict)
        assert "__error__" in str(entry["error"]), entry
        assert float(entry["seconds"]) < 5.0
    vmm = report["cuda_vmm"]
    assert isinstance(vmm, dict) and "__error__" in str(vmm["error"])
    assert report["ping"] is True
    assert server.output().count(NO_CUDA_MESSAGE) == 2, server.output()[-3000:]
