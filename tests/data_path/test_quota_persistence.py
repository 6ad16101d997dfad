"""``--quota-state-file``: a restart keeps the quotas, so IsolatedLRU keeps a tenant's L2 data.

Without the file a restarted server has no quotas, and under the allowlist rule
an IsolatedLRU tier evicts every salt at its next cycle: the persistent ``fs``
tier would lose the data that survived the restart. Real server processes, a real
``fs`` adapter directory shared by both runs, real HTTP and ZeroMQ clients.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.l2_helpers import wait_for
from tests.data_path.test_quota_eviction import (
    CHUNK,
    L2_CYCLE_S,
    L2_OBJECT_BYTES,
    LAYOUT,
    hits,
    put_quota,
    store,
    tier_bytes,
)
from tests.server_process import clean_env, start_server

pytestmark = pytest.mark.slow

TIER = "l2[1]:fs"


def server_args(tmp_path: Path, state: Path) -> tuple[str, ...]:
    adapter = {
        "type": "fs",
        "base_path": str(tmp_path / "fs"),
        "eviction": {"eviction_policy": "IsolatedLRU"},
    }
    return (
        *("--l1-size-gb", "0.05", "--chunk-size", str(CHUNK), "--eviction-policy", "LRU"),
        *("--l2-adapter", json.dumps(adapter), "--quota-state-file", str(state)),
    )


def started(name: str, args: tuple[str, ...]) -> Server:
    server = Server(name, args)
    try:
        return server.wait()
    except BaseException:
        server.terminate()
        server.join()
        raise


def test_quotas_and_the_l2_data_they_protect_survive_a_restart(
    tmp_path: Path, make_worker: WorkerFactory
) -> None:
    (tmp_path / "fs").mkdir()
    state = tmp_path / "quotas.json"
    args = server_args(tmp_path, state)

    first = started("quota-state-1", args)
    try:
        put_quota(first, "paid", 1.0)
        put_quota(first, "gone", 1.0)
        assert httpx.delete(f"{first.http_url}/quota/gone").json()["status"] == "removed"
        worker = make_worker(first.client(), LAYOUT)
        tokens = store(worker, 3, "paid")
        wait_for(lambda: tier_bytes(first, "paid", TIER) == 3 * L2_OBJECT_BYTES, timeout=5)
    finally:
        first.terminate()
        first.join()
    assert json.loads(state.read_text()) == {"version": 1, "quotas": {"paid": 1.0}}

    second = started("quota-state-2", args)
    try:
        listing = httpx.get(f"{second.http_url}/quota", timeout=5.0).json()
        assert listing["persisted"] is True
        assert {salt: user["limit_gb"] for salt, user in listing["users"].items()} == {"paid": 1.0}
        time.sleep(2 * L2_CYCLE_S + 0.3)  # two L2 eviction cycles: the data is still there
        assert tier_bytes(second, "paid", TIER) == 3 * L2_OBJECT_BYTES
        # L1 is new: the hits are loaded from L2 (a registered layout sizes the loads).
        make_worker(second.client(), LAYOUT)
        assert hits(second.client(), tokens, "paid") == 3
    finally:
        second.terminate()
        second.join()


def test_an_invalid_state_file_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "fs").mkdir()
    state = tmp_path / "quotas.json"
    state.write_text('{"version": 1, "quotas": {"paid": -1}}')
    process = start_server(*server_args(tmp_path, state), env=clean_env())
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --quota-state-file: {state}: salt 'paid': limit_gb must be >= 0"]
