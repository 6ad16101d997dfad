"""Real servers and a real worker process for the replay tests (no vLLM needed)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from lmcache_vllm.harness.replay import MiniScheduler, WorkerProcess
from lmcache_vllm.harness.server import ServerProcess
from lmcache_vllm.harness.setup import SERVER_ARGS
from lmcache_vllm.harness.setup import make_pair as build_pair

PairFactory = Callable[..., MiniScheduler]


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The shared server (chunk size 256, a shared-memory L1 pool)."""
    process = ServerProcess(*SERVER_ARGS)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def worker() -> Iterator[WorkerProcess]:
    """The harness worker process (re-initialised by each test)."""
    process = WorkerProcess()
    yield process
    process.close()


@pytest.fixture
def make_pair(worker: WorkerProcess) -> Iterator[PairFactory]:
    """Builds a scheduler side and (re-)initialises the worker against a server."""
    made: list[MiniScheduler] = []

    def factory(target: ServerProcess, **options: Any) -> MiniScheduler:
        pair = build_pair(target, worker, **options)
        made.append(pair)
        return pair

    yield factory
    for pair in made:
        pair.connector.shutdown()
    with contextlib.suppress(RuntimeError):
        worker.request("shutdown_side")
