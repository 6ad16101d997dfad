"""The ``fault_inject`` L2 adapter in a real server, around a real ``fs`` adapter.

The server builds the wrapper and, through the registry in its adapter context,
the inner adapter. A load failed on purpose in the middle of a prefix is a hole:
with the default engine (prefix retention) the lookup hits the chunks before it,
and those come back byte-identical; the wrapper's faults are counted in
``/status``. With ``rate`` 0 it is the inner adapter, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.l2_helpers import (
    CHUNK,
    blocks,
    fill_layers,
    l2_round_trip,
    l2_status,
    lookup_hits,
    random_tokens,
    retrieves_identical,
    server_args,
    small_layout,
    wait_for,
)
from tests.helpers import run_subprocess
from tests.server_process import free_port, running_server

pytestmark = pytest.mark.slow

LAYOUT = small_layout(160)


def wrapper(tmp_path: Path, **faults: object) -> dict[str, object]:
    return {"type": "fault_inject", "inner": {"type": "fs", "base_path": str(tmp_path)}, **faults}


def test_without_faults_it_is_its_inner_adapter(tmp_path: Path) -> None:
    port = free_port()
    with running_server(*server_args(port, wrapper(tmp_path))) as (_, url):
        assert l2_round_trip(port, url, LAYOUT, random_tokens(11, 4)) == (4, True)
        adapter = l2_status(url)["adapters"][0]
        assert (adapter["type"], adapter["inner_type"]) == ("fault_inject", "fs")
        assert adapter["fault_inject"]["injected_failures"] == 0
        assert adapter["fault_inject"]["load_requests"] == 4
    assert len(list(tmp_path.glob("*.data"))) == 4  # the inner fs adapter holds them


def test_a_failed_mid_prefix_load_cuts_the_prefix_at_the_hole(tmp_path: Path) -> None:
    tokens = random_tokens(12, 5)
    port = free_port()
    with (
        running_server(*server_args(port, wrapper(tmp_path, gap_indices=[2]))) as (_, url),
        MPClient(f"127.0.0.1:{port}", timeout=20) as client,
        CpuKVWorker(client, LAYOUT) as worker,
    ):
        worker.register()
        fill_layers(worker, 12)
        assert worker.store(worker.key(tokens, 0, 5 * CHUNK, "s"), blocks(1, 5))
        wait_for(lambda: l2_status(url)["stats"]["stored_keys"] >= 5)
        client.clear(True)
        # Found at lookup, failed at load: the prefix stops before chunk 2.
        assert lookup_hits(client, worker, tokens, "l") == 2
        faults = l2_status(url)["adapters"][0]["fault_inject"]
        assert faults["injected_failures"] == 1
        assert faults["gap_indices"] == [2]
        assert retrieves_identical(worker, tokens[: 2 * CHUNK], "l", blocks(1, 2), blocks(100, 2))
        client.end_session("l")
        worker.unregister()


def test_a_bad_inner_spec_stops_start_up_naming_the_field(tmp_path: Path) -> None:
    spec = {"type": "fault_inject", "inner": {"type": "fs", "base_path": str(tmp_path), "x": 1}}
    args = server_args(free_port(), spec, "--http-port", str(free_port()))
    result = run_subprocess("server", *args)
    assert result.code != 0
    assert "inner (fs): x: unknown field" in result.err, result.err


def test_status_of_the_wrapper_is_healthy_and_typed(tmp_path: Path) -> None:
    port = free_port()
    with running_server(*server_args(port, wrapper(tmp_path, rate=0.25, seed=7))) as (_, url):
        status = httpx.get(f"{url}/status").json()
        adapter = status["data_path"]["engine"]["l2"]["adapters"][0]
        assert adapter["is_healthy"] is True
        assert adapter["fault_inject"]["rate"] == 0.25
        assert adapter["fault_inject"]["seed"] == 7
